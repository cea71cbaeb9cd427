"""Streaming pipelines in Dagster: a load starts its query; the job's last op watches the
run's queries (progress, failures, graceful stop on termination); one run at a time."""
from __future__ import annotations

import os

import dagster as dg

from pipeline_defs import secrets
from pipeline_defs.ops import StepOutput, _plain, table_schema
from pipeline_defs.plan import Plan, StepNode
from pipeline_defs.steps import streaming
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.registry import StepDef


def start_stream(context, plan: Plan, node: StepNode, stepdef: StepDef, current: StepOutput,
                  ctx: StepContext, key: dg.AssetKey) -> dg.Output:
    s = node.step
    _refuse_concurrent_run(context, plan)
    ctx.activity = f"starting its streaming query to {s.config.location()}"
    name = f"{plan.job_name}.{node.op_name}.{context.run_id[:8]}"
    q = streaming.start_query(stepdef.stream_write, current.df, s.config, ctx, name)
    meta = {"location": s.config.location(), "query": name, "query_id": str(q.id),
            "dagster/column_schema": table_schema(current.df.schema),
            **{k: _plain(v) for k, v in ctx.metadata.items()}}
    context.log.info(f"{s.label} started streaming query {name} -> {s.config.location()} "
                     f"(checkpoint {ctx.metadata.get('checkpoint')})")
    return dg.Output({"query_id": str(q.id), "name": name, "step": s.index,
                      "asset_key": key.to_user_string()}, metadata=meta)


def watch_op(plan: Plan, loads: list[StepNode]) -> dg.OpDefinition:
    """The last op of a streaming job: keeps the run alive while its queries run."""
    settings = plan.pipeline.config.streaming

    def compute(context: dg.OpExecutionContext, **inputs):
        spark = context.resources.spark.spark
        stats = [streaming.QueryStats(spark.streams.get(v["query_id"]), v["step"], v["name"])
                 for v in inputs.values()]
        stats += [streaming.QueryStats(q, step, name)
                  for q, step, name in streaming.registered(context.run_id)]
        watcher = streaming.Watcher(stats, context.log, settings)
        try:
            ended = watcher.run(streaming.seconds(settings.timeout),
                                first_batch_only=not settings.await_termination)
        except streaming.StreamingQueryFailed as e:
            raise dg.Failure(description=secrets.scrub(str(e))) from None
        except BaseException:
            context.log.info("the run was interrupted: the queries were stopped between two "
                             "micro-batches; a new run resumes from their checkpoints")
            raise
        totals = [q.totals() for q in stats]
        for q, v in zip(stats, inputs.values(), strict=False):  # sinks; extras come last
            context.log_event(dg.AssetMaterialization(
                asset_key=dg.AssetKey.from_user_string(v["asset_key"]),
                description=f"stream {q.name} ({ended})",
                metadata={k: _plain(x) for k, x in q.totals().items() if x is not None}))
        context.log.info(f"streams {ended}: " + "; ".join(
            f"{t['query']}: {t['batches']} batches, {t['input_rows']} rows" for t in totals))
        yield dg.Output(totals, metadata={
            "ended": ended, "batches": sum(t["batches"] for t in totals),
            "input_rows": sum(t["input_rows"] for t in totals),
            "queries": dg.MetadataValue.json(totals)})

    return dg.OpDefinition(
        name=f"{plan.job_name}__streams", compute_fn=lambda ctx, inputs: compute(ctx, **inputs),
        ins={f"s{n.step.index:02d}": dg.In(dg.Any) for n in loads},
        outs={"result": dg.Out(dg.Any)}, required_resource_keys={"spark"},
        tags={"pipeline/kind": "streams"},
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


