"""Run, step and micro-batch metrics, and their exporters: the run's log (a JSON line), a JSON
file per run, a Prometheus Pushgateway.

Collected from what a run already has, with no extra Spark pass: its Dagster events (status,
start and end of each step, the rows the run counted with observe()) and Spark's own status
store (the bytes the Spark jobs of each step read and wrote; each step's jobs run in the job
group `job_group(...)`). Spark evaluates lazily: the bytes of a file an extract names are read
by the job of the step that runs the action, usually the load, and are counted there."""
from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dagster as dg

from pipeline_defs.config.loader import LoadedPipeline
from pipeline_defs.dagster_layer.runs import step_rows

PUSH_JOB = "pipeline_defs"  # the Pushgateway job; the grouping key is pipeline=<name>

# graph name (`<job>_steps`) -> its pipeline, for runs whose metrics are collected in this
# process (filled by factory.build_pipeline)
PIPELINES: dict[str, LoadedPipeline] = {}


def remember(graph_name: str, pipeline: LoadedPipeline) -> None:
    PIPELINES[graph_name] = pipeline


def job_group(job_name: str, op_name: str, run_id: str) -> str:
    """The Spark job group of a step's jobs (shown in Spark's UI; read back for bytes)."""
    return f"{job_name}.{op_name} {run_id}"


@dataclass
class StepMetrics:
    step: str  # the op's name, as in the run summary
    label: str  # kind.method
    status: str  # ok, FAILED, skipped, not run
    start: float | None = None  # epoch seconds
    end: float | None = None
    duration_seconds: float | None = None
    rows: int | None = None
    bytes_read: int | None = None
    bytes_written: int | None = None


@dataclass
class RunMetrics:
    pipeline: str
    run_id: str
    job: str
    status: str  # SUCCESS, FAILURE, CANCELED
    start: float
    end: float
    duration_seconds: float
    bytes_read: int | None
    bytes_written: int | None
    steps: list[StepMetrics]
    micro_batches: list[dict] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return self.status == "SUCCESS"

    def as_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- collecting
def _spark_context(drain: bool = False):
    """This process's SparkContext, if any; `drain`: once every finished stage has reached
    Spark's status store (its listener bus is empty)."""
    from pyspark import SparkContext
    sc = SparkContext._active_spark_context
    if sc is not None and drain:
        sc._jsc.sc().listenerBus().waitUntilEmpty()
    return sc


def spark_bytes(group: str) -> tuple[int, int] | None:
    """(read, written) bytes of the Spark jobs of a job group, from Spark's status store (the
    numbers of its UI); None without a SparkContext in this process."""
    sc = _spark_context()
    if sc is None:
        return None
    store, tracker = sc._jsc.sc().statusStore(), sc.statusTracker()
    stages = {sid for jid in tracker.getJobIdsForGroup(group)
              if (info := tracker.getJobInfo(jid)) for sid in info.stageIds}
    read = written = 0
    for sid in stages:
        try:
            stage = store.lastStageAttempt(sid)
        except Exception:  # noqa: BLE001 - a stage the store no longer keeps (retention)
            continue
        read += stage.inputBytes()
        written += stage.outputBytes()
    return read, written


def collect(instance: dg.DagsterInstance, run_id: str, micro_batches: list[dict] | None = None,
            now: float | None = None) -> list[RunMetrics]:
    """The metrics of a run (one per pipeline its steps belong to; a selection of assets of
    several pipelines runs several), from its event log and Spark's status store."""
    records = instance.all_logs(run_id)
    run = instance.get_run_by_id(run_id)
    end = now or time.time()
    start = next((r.timestamp for r in records if r.dagster_event
                  and r.dagster_event.event_type_value == "RUN_START"),
                 records[0].timestamp if records else end)
    cancelled = run is not None and run.status in (dg.DagsterRunStatus.CANCELING,
                                                   dg.DagsterRunStatus.CANCELED)
    graphs: dict[str, list] = {}
    for r in records:
        key = r.dagster_event.step_key if r.dagster_event else None
        if key and "." in key:
            graphs.setdefault(key.rsplit(".", 1)[0], []).append(r)
    _spark_context(drain=True)  # once, before the bytes of every step are read
    out = []
    for graph, recs in graphs.items():
        pipeline = PIPELINES.get(graph)
        if pipeline is None:
            continue
        job = graph.removesuffix("_steps")
        steps = _steps(recs, pipeline, job, run_id)
        status = "CANCELED" if cancelled else (
            "FAILURE" if any(s.status == "FAILED" for s in steps) else "SUCCESS")
        read = [s.bytes_read for s in steps if s.bytes_read is not None]
        written = [s.bytes_written for s in steps if s.bytes_written is not None]
        out.append(RunMetrics(
            pipeline.name, run_id, job, status, start, end, round(end - start, 3),
            sum(read) if read else None, sum(written) if written else None, steps,
            [b for b in micro_batches or [] if b.get("pipeline") == pipeline.name]))
    return out


def _steps(records, pipeline: LoadedPipeline, job: str, run_id: str) -> list[StepMetrics]:
    times: dict[str, dict[str, float]] = {}
    for r in records:
        op = r.dagster_event.step_key.rsplit(".", 1)[-1]
        kind = r.dagster_event.event_type_value
        if kind == "STEP_START":
            times.setdefault(op, {}).setdefault("start", r.timestamp)
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            times.setdefault(op, {})["end"] = r.timestamp
    out = []
    for row in step_rows((r.dagster_event for r in records), pipeline):
        t = times.get(row.op, {})
        ran = "start" in t
        moved = spark_bytes(job_group(job, row.op, run_id)) if ran else None
        out.append(StepMetrics(
            row.op, row.label, row.status, t.get("start"), t.get("end"),
            round(row.seconds if row.seconds is not None else t["end"] - t["start"], 3)
            if row.seconds is not None or ("end" in t and ran) else None,
            row.rows, *(moved or (None, None))))
    return out


def micro_batch(pipeline: str, run_id: str, query: str, progress: dict) -> dict:
    """One streaming micro-batch's numbers, from its StreamingQueryProgress."""
    d = progress.get("durationMs") or {}
    return {"pipeline": pipeline, "run_id": run_id, "query": query,
            "batch_id": progress.get("batchId"), "timestamp": progress.get("timestamp"),
            "rows": int(progress.get("numInputRows") or 0),
            "input_rows_per_second": float(progress.get("inputRowsPerSecond") or 0),
            "processed_rows_per_second": float(progress.get("processedRowsPerSecond") or 0),
            "batch_duration_seconds": int(d.get("triggerExecution") or 0) / 1000}


# ---------------------------------------------------------------- exporting
@dataclass(frozen=True)
class Exporters:
    """Where metrics go; any combination."""
    log: bool = False
    json_dir: str = ""
    pushgateway: str = ""

    @classmethod
    def from_env(cls) -> Exporters:
        env = os.environ
        return cls(log=env.get("PIPELINE_METRICS_LOG", "").lower() in ("1", "true", "yes"),
                   json_dir=env.get("PIPELINE_METRICS_DIR", ""),
                   pushgateway=env.get("PIPELINE_METRICS_PUSHGATEWAY", ""))

    @property
    def any(self) -> bool:
        return bool(self.log or self.json_dir or self.pushgateway)

    def run(self, runs: Iterable[RunMetrics], log) -> None:
        for m in runs:
            if self.log:
                log.info("metrics " + json.dumps(m.as_dict(), default=str))
            if self.json_dir:
                write_json(Path(self.json_dir), m)
            if self.pushgateway:
                push(self.pushgateway, m, log)

    def batch(self, b: dict, log) -> None:
        if self.log:
            log.info("metrics " + json.dumps(b, default=str))
        if self.pushgateway:
            push_batch(self.pushgateway, b, log)


def write_json(root: Path, m: RunMetrics) -> Path:
    """<root>/<pipeline>/<run id>.json, written whole or not at all (a rename)."""
    path = root / m.pipeline / f"{m.run_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(m.as_dict(), indent=2, default=str))
    tmp.replace(path)
    return path


def _push(url: str, pipeline: str, registry, log) -> None:
    from prometheus_client import pushadd_to_gateway
    try:
        # POST: replaces the metrics of these names in the group, keeps the others (a run's
        # gauges and its streams' gauges live side by side)
        pushadd_to_gateway(url, job=PUSH_JOB, grouping_key={"pipeline": pipeline},
                           registry=registry, timeout=5)
    except Exception as e:  # noqa: BLE001 - metrics never fail a run
        reason = getattr(e, "reason", None) or e
        log.warning(f"metrics: the Pushgateway at {url} did not take the metrics of pipeline "
                    f"'{pipeline}' ({reason}); the run is not affected.")


def push(url: str, m: RunMetrics, log) -> None:
    """The run's gauges, job `pipeline_defs`, grouping key pipeline=<name>."""
    from prometheus_client import CollectorRegistry, Gauge
    reg = CollectorRegistry()
    Gauge("pipeline_run_duration_seconds", "Duration of the pipeline's last run.",
          registry=reg).set(m.duration_seconds)
    Gauge("pipeline_run_success", "1 if the pipeline's last run succeeded, else 0.",
          registry=reg).set(1 if m.success else 0)
    Gauge("pipeline_run_last_timestamp_seconds", "When the pipeline's last run ended.",
          registry=reg).set(m.end)
    rows = Gauge("pipeline_step_rows", "Rows of each step in the last run.", ["step"],
                 registry=reg)
    secs = Gauge("pipeline_step_duration_seconds", "Duration of each step in the last run.",
                 ["step"], registry=reg)
    moved = Gauge("pipeline_step_bytes", "Bytes the Spark jobs of each step read and wrote.",
                  ["step", "direction"], registry=reg)
    for s in m.steps:
        if s.rows is not None:
            rows.labels(step=s.step).set(s.rows)
        if s.duration_seconds is not None:
            secs.labels(step=s.step).set(s.duration_seconds)
        if s.bytes_read is not None:
            moved.labels(step=s.step, direction="read").set(s.bytes_read)
            moved.labels(step=s.step, direction="write").set(s.bytes_written)
    _push(url, m.pipeline, reg, log)


def push_batch(url: str, b: dict, log) -> None:
    """A streaming micro-batch's gauges, labelled by query."""
    from prometheus_client import CollectorRegistry, Gauge
    reg = CollectorRegistry()
    for name, doc, key in (
            ("pipeline_stream_batch_rows", "Rows of the query's last micro-batch.", "rows"),
            ("pipeline_stream_input_rows_per_second", "Input rate of the last micro-batch.",
             "input_rows_per_second"),
            ("pipeline_stream_processed_rows_per_second",
             "Processing rate of the last micro-batch.", "processed_rows_per_second"),
            ("pipeline_stream_batch_duration_seconds", "Duration of the last micro-batch.",
             "batch_duration_seconds")):
        Gauge(name, doc, ["query"], registry=reg).labels(query=b["query"]).set(b[key])
    _push(url, b["pipeline"], reg, log)
