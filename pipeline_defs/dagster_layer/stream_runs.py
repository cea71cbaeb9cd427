"""Streaming pipelines in Dagster: a load starts its query; the job's last op watches the
run's queries (progress, failures, graceful stop on termination); one run at a time."""
from __future__ import annotations

import os

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError  # a run's interruption

from pipeline_defs.common import secrets
from pipeline_defs.config.assets import uri
from pipeline_defs.dagster_layer.outputs import StepOutput, plain, table_schema
from pipeline_defs.dagster_layer.plan import Plan, StepNode
from pipeline_defs.steps import streaming
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.registry import StepDef


def start_stream(context, plan: Plan, node: StepNode, stepdef: StepDef, current: StepOutput,
                  ctx: StepContext, key: dg.AssetKey) -> dg.Output:
    s = node.step
    _refuse_concurrent_run(context, plan)
    ctx.activity = f"starting its streaming query to {s.config.location()}"
    name = getattr(s.config, "query_name", None) or \
        f"{plan.job_name}.{node.op_name}.{context.run_id[:8]}"
    q = streaming.start_query(stepdef.stream_write, current.df, s.config, ctx, name)
    meta = {"location": s.config.location(), "query": name, "query_id": str(q.id),
            "dagster/column_schema": table_schema(current.df.schema),
            **{k: plain(v) for k, v in ctx.metadata.items()}}
    context.log.info(f"{s.label} started streaming query {name} -> {s.config.location()} "
                     f"(checkpoint {ctx.metadata.get('checkpoint')})")
    return dg.Output({"query_id": str(q.id), "name": name, "step": s.index,
                      "location": s.config.location()}, metadata=meta)


STREAM_TOTALS = dg.DagsterType(
    name="StreamTotals", type_check_fn=lambda _context, value: isinstance(value, dict),
    description="What a streaming query wrote while the run lasted: batches, input and output "
    "rows, how it ended.")

STOPPED = ("the run was interrupted: the queries were stopped between two micro-batches; a "
           "new run resumes from their checkpoints")


def watch_op(plan: Plan, loads: list[StepNode], sinks: dict[int, dg.AssetKey]
             ) -> dg.OpDefinition:
    """The last op of a streaming job: keeps the run alive while its queries run. Its outputs
    are the sinks' assets (`sink_sNN`), each materialized with its query's totals when the
    queries end."""
    settings = plan.pipeline.config.streaming

    def compute(context: dg.OpExecutionContext, **inputs):
        spark = context.resources.spark.spark
        started = {v["step"]: v for v in inputs.values()}
        stats = [streaming.QueryStats(spark.streams.get(v["query_id"]), v["step"], v["name"])
                 for v in inputs.values()]
        stats += [streaming.QueryStats(q, step, name)
                  for q, step, name in streaming.registered(context.run_id)]
        def committed(q: streaming.QueryStats, p: dict) -> None:
            """A sink's commits since the last progress line, as a materialization."""
            if q.step not in sinks or f"sink_s{q.step:02d}" not in \
                    context.selected_output_names:
                return
            d = p.get("durationMs", {})
            context.log_event(dg.AssetMaterialization(
                asset_key=sinks[q.step], description=f"stream {q.name}: batch {p['batchId']}",
                metadata={"batch_id": p["batchId"], "batches": q.pending_batches,
                          "input_rows": q.pending_rows,
                          "input_rows_per_second": float(p.get("inputRowsPerSecond") or 0),
                          "processed_rows_per_second":
                              float(p.get("processedRowsPerSecond") or 0),
                          "trigger_ms": int(d.get("triggerExecution", 0)),
                          "total_batches": q.batches, "total_input_rows": q.rows}))

        def batch(q: streaming.QueryStats, p: dict) -> None:
            context.resources.metrics.micro_batch(context.log, plan.pipeline.name,
                                                  context.run_id, q.name, p)

        watcher = streaming.Watcher(stats, context.log, settings, on_progress=committed,
                                    on_batch=batch,
                                    stop_requested=lambda: context.resources.spark.cancelled)
        try:
            ended = watcher.run(streaming.seconds(settings.timeout),
                                first_batch_only=not settings.await_termination)
        except streaming.StreamingQueryFailed as e:
            raise dg.Failure(description=secrets.scrub(str(e))) from None
        except BaseException:
            context.log.info(STOPPED)
            raise
        if ended == "stopped":  # terminated (the UI, Ctrl-C on `pipeline run`)
            context.log.info(STOPPED)
            raise DagsterExecutionInterruptedError()
        totals = [q.totals() for q in stats]
        context.log.info(f"streams {ended}: " + "; ".join(
            f"{t['query']}: {t['batches']} batches, {t['input_rows']} rows" for t in totals))
        by_step = {q.step: q for q in stats if q.step in started}
        for i in sinks:
            if i not in started or f"sink_s{i:02d}" not in context.selected_output_names:
                continue
            t = by_step[i].totals()
            yield dg.Output(t, f"sink_s{i:02d}", metadata={
                "ended": ended, "location": started[i]["location"],
                "dagster/uri": uri(started[i]["location"]),
                **({"dagster/row_count": t["output_rows"]} if t["output_rows"] else {}),
                **{k: plain(x) for k, x in t.items() if x is not None},
                "queries": dg.MetadataValue.json(totals)})

    return dg.OpDefinition(
        name=f"{plan.job_name}__streams", compute_fn=lambda ctx, inputs: compute(ctx, **inputs),
        ins={f"s{n.step.index:02d}": dg.In(dg.Any, description=f"The query step "
                                            f"{n.step.index} ({n.op_name}) started")
             for n in loads},
        outs={f"sink_s{i:02d}": dg.Out(STREAM_TOTALS, is_required=False) for i in sinks},
        required_resource_keys={"spark", "metrics"}, tags={"pipeline/kind": "streams"},
        description="Watches the streaming queries the loads started: progress, failures, "
                    "graceful stop when the run ends or is terminated.")


def _gone(instance, run) -> bool:
    """A run started by `pipeline run` on this host whose process no longer exists (killed):
    its record still says STARTED. It is marked failed, and does not block a new run."""
    import socket
    pid, host = run.tags.get("pipeline/pid"), run.tags.get("pipeline/host")
    if not pid or host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
        return False
    except ProcessLookupError:
        instance.report_run_failed(run, f"process {pid} is gone (killed)")
        return True
    except PermissionError:
        return False


def _refuse_concurrent_run(context, plan: Plan) -> None:
    """At most one run of a streaming pipeline at a time: two would fight over checkpoints."""
    others = [r for r in context.instance.get_runs(filters=dg.RunsFilter(
        job_name=plan.job_name, statuses=[dg.DagsterRunStatus.STARTED,
                                          dg.DagsterRunStatus.STARTING]))
        if r.run_id != context.run_id and not _gone(context.instance, r)]
    if others:
        raise dg.Failure(description=f"pipeline '{plan.pipeline.name}' is streaming in run "
                         f"{others[0].run_id} already; at most one run of a streaming "
                         "pipeline runs at a time. Terminate that run first.")


