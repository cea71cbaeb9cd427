"""Reading a finished run back: the per-step summary `pipeline run` prints."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg

from pipeline_defs.config.loader import LoadedPipeline
from pipeline_defs.dagster_layer.plan import build_plan


@dataclass
class StepRow:
    op: str
    label: str
    status: str = "not run"
    seconds: float | None = None
    rows: int | None = None
    note: str = ""
    engine: str = ""  # where its Spark queries ran: native | native, partly | Spark


def _value(v):
    return getattr(v, "value", getattr(v, "data", getattr(v, "text", v)))


def step_rows(events: Iterable[dg.DagsterEvent], pipeline: LoadedPipeline) -> list[StepRow]:
    """Each step of a run from its Dagster events (an in-process result's, or the event
    log's): status, seconds, rows counted by the run, a note."""
    events = list(events)
    plan = build_plan(pipeline)
    rows = {n.op_name: StepRow(n.op_name, n.step.label) for n in plan.nodes}
    counted: dict[str, int] = {}
    trains = {n.op_name: n.step.kind != "load" and getattr(n.step.config, "writes_asset", False)
              for n in plan.nodes}
    for e in events:
        # step keys are "<pipeline graph>.<op>": the ops are nodes of the pipeline's assets
        r = rows.get((e.step_key or "").rsplit(".", 1)[-1])
        if e.event_type_value == "STEP_SUCCESS" and r:
            r.status = "ok"
            r.seconds = e.event_specific_data.duration_ms / 1000
        elif e.event_type_value == "STEP_FAILURE" and r:
            r.status = "FAILED"
            err = e.event_specific_data.error
            r.note = (e.event_specific_data.user_failure_data.description
                      if e.event_specific_data.user_failure_data else err.message).strip()
        elif e.event_type_value == "STEP_SKIPPED" and r:
            r.status = "skipped"
        elif e.event_type_value == "STEP_OUTPUT" and r:
            md = e.event_specific_data.metadata
            name = e.event_specific_data.step_output_handle.output_name
            if name == "done":  # a conditional step's "finished" signal
                continue
            if name == "model":  # what a trainModel saved (a checking step passes it on)
                r.note = _model_note(md) if trains.get(r.op) else r.note
                continue
            if name.startswith("quarantine_"):
                # a validation's quarantine table, written by the same pass
                rows_q = _value(md.get("dagster/row_count"))
                r.note = (r.note + "; " if r.note else "") + \
                    f"quarantined {rows_q:,} -> {_value(md.get('location'))}"
                continue
            if "spark_engine" in md:
                r.engine = str(_value(md["spark_engine"]))
            if "dagster/row_count" in md:
                counted[r.op] = int(_value(md["dagster/row_count"]))
            if "location" in md:
                r.note = f"-> {_value(md['location'])}"
            if "step_rows" in md:
                counted.update({k: int(v) for k, v in _value(md["step_rows"]).items()})
    for op, n in counted.items():
        if op in rows:
            rows[op].rows = n
    _skipped(events, plan, rows)
    return list(rows.values())


def _model_note(md) -> str | None:
    """`-> models:/churn/3 (accuracy 0.812)`: the model saved, and its first metric."""
    if "model_uri" not in md:
        return None
    first = next((k for k in md if k.startswith("metric/")), None)
    return f"-> {_value(md['model_uri'])}" + (
        f" ({first.split('/', 1)[1]} {_value(md[first]):.3f})" if first else "")


def _skipped(events: list[dg.DagsterEvent], plan, rows: dict[str, StepRow]) -> None:
    """Steps whose condition was false, and the steps skipped because they need them."""
    produced = {(e.step_key or "").rsplit(".", 1)[-1] for e in events
                if e.event_type_value == "STEP_OUTPUT"
                and e.event_specific_data.step_output_handle.output_name == "result"}
    for n in plan.nodes:
        r = rows[n.op_name]
        if n.step.condition and r.status == "ok" and n.op_name not in produced:
            r.status, r.note = "skipped", f"condition `{n.step.condition}` was false"
        elif r.status == "skipped" and not r.note:
            r.note = "needs a skipped step"


def print_summary(result: dg.ExecuteInProcessResult, pipeline: LoadedPipeline,
                  elapsed: float) -> None:
    table = step_rows(result.all_events, pipeline)
    w = max(len(r.op) for r in table)
    from pipeline_defs.spark.session import spark_start_seconds
    print(f"\npipeline {pipeline.name}: {'SUCCESS' if result.success else 'FAILURE'} "
          f"in {elapsed:.1f}s (run {result.run_id})")
    if spark_start_seconds() is not None:
        print(f"  Spark session started in {spark_start_seconds():.1f}s, beside Dagster's "
              "own start (not in any step's time)")
    e = max([len(r.engine) for r in table] + [6])
    print(f"  {'step':<{w}}  {'status':<7} {'secs':>6} {'rows':>10}  {'engine':<{e}}")
    for r in table:
        secs = f"{r.seconds:.2f}" if r.seconds is not None else "-"
        rows = f"{r.rows:,}" if r.rows is not None else "-"
        print(f"  {r.op:<{w}}  {r.status:<7} {secs:>6} {rows:>10}  {r.engine or '-':<{e}}  "
              f"{r.note}".rstrip())
    native = [r.op for r in table if r.engine.startswith("native")]
    if any(r.engine for r in table):
        print(f"  (engine: where the step's Spark queries ran; natively on Comet: "
              f"{', '.join(native) or 'none'}. The operators that stayed on Spark, and why, "
              "are in each step's metadata; PIPELINE_ACCELERATION=off turns Comet off)")
    print("  (rows: counted with observe() by the write that ran the step; '-' where counting "
          "would have blocked a pushdown or kept operators off native execution, or a transform "
          "between extracts and loads: "
          "\"rowCounts\": \"all\" counts those too)")


def show_outputs(result: dg.ExecuteInProcessResult, n: int) -> None:
    """Print the first n rows of every file or Delta target the run wrote (one small read
    each, only when asked)."""
    from pipeline_defs.spark.session import session, settings_from_env
    spark = session(settings_from_env())
    for e in result.all_events:
        if e.event_type_value != "ASSET_MATERIALIZATION":
            continue
        md = e.event_specific_data.materialization.metadata
        fmt, location = _value(md.get("format")), _value(md.get("location"))
        if fmt in (None, "jdbc", "kafka") or not location:
            continue
        reader = spark.read.format(fmt)
        if fmt == "csv":
            reader = reader.option("header", "true")
        df = reader.table(location) if fmt == "delta" and "/" not in location else \
            reader.load(location)
        print(f"\n{location} ({fmt}, first {n} rows):")
        df.show(n, truncate=False)
