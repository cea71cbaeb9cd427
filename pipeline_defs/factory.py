"""PipelineConfig -> Dagster: one job per pipeline, one op per step, an asset per load target.

DataFrames pass between ops as lazy plans (in-memory IO manager, in-process executor, one
SparkSession per run). Row counts come from `observe()` on the plans that run anyway."""
from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import dagster as dg
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, Observation
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from pipeline_defs.config.dataflow import Plan, StepNode, build_plan, safe_name
from pipeline_defs import secrets
from pipeline_defs.config.loader import LoadedPipeline, literal_credentials
from pipeline_defs.errors import ConfigError, PipelineError, StepExecutionError
from pipeline_defs.steps import streaming
from pipeline_defs.steps.context import LoadResult, StepContext
from pipeline_defs.steps.errors import internal_error, spark_error_summary
from pipeline_defs.steps.registry import Registry, StepDef
from pipeline_defs.steps.validate import ValidationGroup

OBSERVE_WAIT_S = 2.0


# ---------------------------------------------------------------- values passed between ops
@dataclass(frozen=True)
class StepOutput:
    """An op's output: the lazy DataFrame and the row counter riding on it."""

    df: DataFrame
    step: int
    op_name: str
    observation: Observation | None = None
    parents: tuple[StepOutput, ...] = ()
    pending: tuple = ()  # validations recorded here, evaluated with the group's last step

    def lineage(self) -> list[StepOutput]:
        seen: dict[int, StepOutput] = {}
        todo = [self]
        while todo:
            o = todo.pop()
            if o.step not in seen:
                seen[o.step] = o
                todo.extend(o.parents)
        return [seen[k] for k in sorted(seen)]


def observed_rows(obs: Observation | None, wait: float = 0.0) -> int | None:
    """The observed row count, if the action that fills it has run (never blocks for long).

    None when it has not run, or when an action that never reached the observed node filled
    it (Spark then leaves an empty row): a missing count, never a wrong one."""
    if obs is None or obs._jo is None:
        return None
    deadline = time.monotonic() + wait
    future = obs._jo.future()
    while not future.isCompleted():
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.02)
    if obs._jo.getRow().size() == 0:
        return None
    return int(obs.get.get("rows", 0))


def _observe(df: DataFrame, run_id: str, op_name: str) -> tuple[DataFrame, Observation]:
    obs = Observation(f"rows_{op_name}_{run_id.replace('-', '')[:12]}")
    return df.observe(obs, F.count(F.lit(1)).alias("rows")), obs


# ---------------------------------------------------------------- metadata helpers
def table_schema(schema: StructType) -> dg.TableSchema:
    return dg.TableSchema(columns=[
        dg.TableColumn(f.name, f.dataType.simpleString(),
                       constraints=dg.TableColumnConstraints(nullable=f.nullable))
        for f in schema.fields])


def asset_key_for(location: str, override: list[str] | None = None) -> dg.AssetKey:
    """A stable asset key from a path, table or topic: s3a://b/x/y -> s3a/b/x/y."""
    if override:
        return dg.AssetKey(override)
    scheme, sep, rest = location.partition("://")
    if not sep:
        scheme, rest = ("file", location) if "/" in location else ("table", location)
    parts = [safe_name(p) for p in re.split(r"[/.]", rest) if p and p not in (".", "..")]
    return dg.AssetKey([safe_name(scheme), *parts])


def _cell(v):
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)


def _plain(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, list) and v and all(isinstance(r, dict) for r in v) and \
            len({tuple(r) for r in v}) == 1:  # rows of one shape: a table in the UI
        return dg.MetadataValue.table(
            records=[dg.TableRecord({k: _cell(x) for k, x in r.items()}) for r in v],
            schema=dg.TableSchema(columns=[dg.TableColumn(k, "string") for k in v[0]]))
    return dg.MetadataValue.json(v) if isinstance(v, (dict, list)) else str(v)


def sanitized(config: dict) -> dict:
    """The step config as shown in failures: secret-looking keys masked, at any depth."""
    def mask(k: str, v):
        if isinstance(v, dict):
            return sanitized(v)
        if secrets.SECRET_KEY.search(k) and not k.lower().endswith("path"):
            return secrets.MASK
        return v
    return {k: mask(k, v) for k, v in config.items()}


# ---------------------------------------------------------------- the job of one pipeline
@dataclass
class PipelineDefs:
    job: dg.JobDefinition
    plan: Plan
    load_keys: dict[int, dg.AssetKey] = field(default_factory=dict)
    source_keys: dict[int, dg.AssetKey] = field(default_factory=dict)
    check_targets: dict[int, list[dg.AssetKey]] = field(default_factory=dict)
    asset_kinds: dict[int, str] = field(default_factory=dict)
    """What each extract reads and each load writes, as its method's registration says."""

    def check_specs(self) -> list[dg.AssetCheckSpec]:
        out = []
        for i, keys in self.check_targets.items():
            s = self.plan.node(i).step
            for key in keys:
                out.append(dg.AssetCheckSpec(
                    check_name(s), asset=key, blocking=s.config.on_failure == "fail",
                    description=f"{s.label} in pipeline '{self.plan.pipeline.name}' "
                                f"(step {s.index}, onFailure {s.config.on_failure})"))
        return out


def asset_checks(pipelines: Iterable[PipelineDefs]) -> list:
    """Declares each pipeline's validations as asset checks; they are evaluated by the
    validate ops of the pipeline's job, in the same run as the loads they protect."""
    out = []
    for pd in pipelines:
        specs = pd.check_specs()
        if not specs:
            continue
        out.append(_declared_checks(pd.plan, specs))
    return out


def _declared_checks(plan: Plan, specs: list[dg.AssetCheckSpec]):
    job = plan.job_name

    @dg.multi_asset_check(specs=specs, name=f"{job}__checks",
                          description=f"Validations of pipeline '{plan.pipeline.name}'")
    def _declared(context):
        raise dg.Failure(description=f"These checks run inside job '{job}': launch that job "
                                     "to evaluate them.")
    return _declared


def _input_name(name: str) -> str:
    return f"ref_{safe_name(name)}"


def _pipeline_settings(pipeline: LoadedPipeline) -> dict:
    """What every step of the pipeline gets in its StepContext."""
    c = pipeline.config
    return {"mask_columns": tuple(c.mask_columns),
            "quarantine_root": c.quarantine_root or os.environ.get("PIPELINE_QUARANTINE_ROOT",
                                                                  "quarantine"),
            "streaming": c.streaming if c.mode == "streaming" else None}


def _log_checks(context, s, ctx: StepContext, targets: list[dg.AssetKey]) -> None:
    """One asset check evaluation per asset this validation protects."""
    cfg = s.config
    rows = ctx.metadata.get("rows")
    violations = sum(r.violations for r in ctx.results)
    meta = {
        "rules": dg.MetadataValue.json([{"rule": r.name, "text": r.text,
                                         "columns": list(r.columns),
                                         "violations": r.violations,
                                         "fraction": (r.violations / rows) if rows else None,
                                         **({"detail": r.detail} if r.detail else {})}
                                        for r in ctx.results]),
        "violations": violations,
        "violation_fraction": float(violations / rows) if rows else 0.0,
        "action": cfg.on_failure,
        "samples": dg.MetadataValue.json({r.name: r.samples for r in ctx.results
                                          if r.samples}),
    }
    if rows is not None:
        meta["rows"] = int(rows)
    if "quarantine_location" in ctx.metadata:
        meta["quarantine_location"] = ctx.metadata["quarantine_location"]
    severity = dg.AssetCheckSeverity.ERROR if cfg.on_failure == "fail" else \
        dg.AssetCheckSeverity.WARN
    for key in targets:
        context.log_event(dg.AssetCheckEvaluation(
            asset_key=key, check_name=check_name(s), passed=bool(ctx.metadata.get("passed")),
            severity=severity, metadata=meta,
            description=f"{s.label} (step {s.index}), action {cfg.on_failure}"))


def check_name(s) -> str:
    return safe_name(s.name or f"s{s.index:02d}_{s.method}")


def _op_for(plan: Plan, node: StepNode, registry: Registry, load_keys, check_targets
            ) -> dg.OpDefinition:
    pipeline = plan.pipeline
    s = node.step
    stepdef = registry.get(s.kind, s.method)
    ins: dict[str, dg.In] = {}
    if node.current is not None:
        ins["df"] = dg.In(description="The current DataFrame")
    for name in node.named:
        ins[_input_name(name)] = dg.In(description=f"The DataFrame registered as '{name}'")
    for j in node.after:
        ins[f"after_s{j:02d}"] = dg.In(dg.Nothing, description="An earlier load runs first")

    # A validation followed (only) by another validation is evaluated with it, in one pass.
    consumers = plan.consumers(s.index)
    defer = (s.kind == "validate" and len(consumers) == 1 and
             consumers[0].step.kind == "validate" and consumers[0].current == s.index)

    def compute(context: dg.OpExecutionContext, **inputs):
        vault = context.resources.vault
        if vault.required:
            literal = literal_credentials(pipeline.file, pipeline.steps, registry)
            if literal:
                raise dg.Failure(description=str(ConfigError(literal)))
        spark = context.resources.spark.spark
        current: StepOutput | None = inputs.get("df")
        named = {n: inputs[_input_name(n)] for n in node.named}
        ctx = StepContext(spark=spark, pipeline=pipeline.name, step=s.index, method=s.label,
                          run_id=context.run_id, frames={n: o.df for n, o in named.items()},
                          log=context.log,
                          read_secret=vault.read_secret if vault.configured else None,
                          audit=_auditor(context, vault),
                          op_name=node.op_name, **_pipeline_settings(pipeline))
        parents = tuple(([current] if current else []) + list(named.values()))
        spark.sparkContext.setJobGroup(f"{plan.job_name}.{node.op_name}",
                                       f"{pipeline.name} step {s.index} {s.label}")
        started = time.perf_counter()
        try:
            if s.kind == "load":
                return _run_load(context, plan, node, stepdef, current, ctx, started,
                                 load_keys[s.index])
            ctx.activity = "building its Spark plan"
            if s.kind == "validate":
                ctx.activity = "evaluating its rules"
                ctx.validation = ValidationGroup(list(current.pending), defer)
            try:
                if s.kind == "extract" and ctx.streaming is not None and stepdef.stream_read:
                    df = stepdef.stream_read(s.config, ctx)
                else:
                    df = stepdef.fn(current.df if current else None, s.config, ctx)
            finally:
                if s.kind == "validate" and not defer:
                    for p in ctx.validation.pending:
                        if "passed" in p.ctx.metadata:  # evaluated (not cut short by an error)
                                _log_checks(context, plan.node(p.ctx.step).step, p.ctx,
                                        check_targets.get(p.ctx.step, []))
        except dg.Failure:
            raise
        except (PipelineError, PySparkException, Exception) as e:  # noqa: BLE001
            raise _failure(pipeline, s, e, context, ctx.activity) from None
        obs = None
        if node.observe and not df.isStreaming:  # a stream's rows come from its progress
            df, obs = _observe(df, context.run_id, node.op_name)
        meta = {"dagster/column_schema": table_schema(df.schema) if not df.isStreaming
                else None, "duration_s": round(time.perf_counter() - started, 3),
                **{k: _plain(v) for k, v in ctx.metadata.items()}}
        if "rows" in ctx.metadata:
            meta["dagster/row_count"] = int(ctx.metadata["rows"])
        pending = tuple(ctx.validation.pending) if defer else ()
        if defer:
            meta["evaluated_with"] = consumers[0].op_name
        return dg.Output(StepOutput(df, s.index, node.op_name, obs, parents, pending),
                         metadata={k: v for k, v in meta.items() if v is not None})

    tags = {"pipeline/kind": s.kind, "pipeline/method": s.method}
    return dg.OpDefinition(
        # unique in the repository; the node in the job is aliased to the readable op_name
        name=f"{plan.job_name}__{node.op_name}",
        ins=ins, outs={"result": dg.Out(dg.Any)}, compute_fn=_wrap(compute),
        required_resource_keys={"spark", "vault"}, tags=tags,
        description=s.description or f"Step {s.index}: {s.label}"
        + (f" (registered as '{s.config.register_as}')" if s.config.register_as else ""))


def _auditor(context: dg.OpExecutionContext, vault):
    """Credential accesses go to the audit log and, as the same record, into the run's events."""
    def audit(record: dict) -> None:
        full = vault.audit(record)
        context.log.info("credential access " + json.dumps(full, default=str))
    return audit


def _wrap(compute):
    """OpDefinition calls compute_fn(context, inputs_dict) and wants its results yielded."""
    def fn(context, inputs):
        yield compute(context, **inputs)
    return fn


def _failure(pipeline: LoadedPipeline, s, e: BaseException, context=None,
             activity: str = "running") -> dg.Failure:
    internal = internal_error(e)
    if internal:
        if context is not None:  # the trace stays in the event log, not on the terminal
            import traceback
            context.log.error(secrets.scrub("".join(traceback.format_exception(e))))
        run = f" with run id {context.run_id}" if context is not None else ""
        reason = (f"internal error while {activity} ({internal}). This is a bug in "
                  f"pipeline_defs, not in your pipeline file: please report it{run}; the "
                  "trace is in the run's event log.")
    elif isinstance(e, PipelineError):
        reason = str(e)
    else:
        reason = spark_error_summary(e)
    err = StepExecutionError(pipeline.name, s.index, s.label, secrets.scrub(reason),
                             sanitized(s.raw_config))
    return dg.Failure(description=secrets.scrub(f"{err} [{pipeline.file}]"),
                      metadata={"pipeline": pipeline.name, "step": s.index,
                                "method": s.label, "error_type": type(e).__name__,
                                "config": dg.MetadataValue.json(err.config)})


def _start_stream(context, plan: Plan, node: StepNode, stepdef: StepDef, current: StepOutput,
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


def _watch_op(plan: Plan, loads: list[StepNode]) -> dg.OpDefinition:
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
        for q, v in zip(stats, inputs.values()):  # the sinks (registered extras come last)
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


def _run_load(context, plan: Plan, node: StepNode, stepdef: StepDef, current: StepOutput,
              ctx: StepContext, started: float, key: dg.AssetKey) -> dg.Output:
    if current.df.isStreaming:
        return _start_stream(context, plan, node, stepdef, current, ctx, key)
    s = node.step
    df, obs = current.df, None
    if not s.config.counts_rows:
        df, obs = _observe(df, context.run_id, node.op_name)
    ctx.activity = f"writing to {s.config.location() or 'its target'}"
    result: LoadResult = stepdef.fn(df, s.config, ctx)
    ctx.activity = "reading the row counts of the write"
    rows = result.rows if result.rows is not None else observed_rows(obs, OBSERVE_WAIT_S)
    duration = round(time.perf_counter() - started, 3)
    # Rows per upstream step: from the observations this write filled (each step counted
    # where build_plan placed its count), and from the load itself.
    observed = {o.step: observed_rows(o.observation) for o in current.lineage()
                if o.observation is not None}
    observed[s.index] = rows
    step_rows = {plan.node(i).op_name: observed[plan.node(i).counted_by]
                 for i in plan.upstream(s.index)
                 if observed.get(plan.node(i).counted_by) is not None}
    meta = {"location": result.location, "format": result.format, "mode": result.mode,
            "dagster/column_schema": table_schema(current.df.schema),
            "duration_s": duration, "step_rows": dg.MetadataValue.json(step_rows),
            **{k: _plain(v) for k, v in result.metadata.items()}}
    if rows is not None:
        meta["dagster/row_count"] = int(rows)
    context.log_event(dg.AssetMaterialization(
        asset_key=key, description=f"{plan.pipeline.name} step {s.index} ({s.label})",
        metadata=meta))
    context.log.info(f"{s.label} wrote {rows if rows is not None else '?'} rows to "
                     f"{result.location} in {duration:.1f}s")
    return dg.Output({"location": result.location, "rows": rows}, metadata=meta)


def build_pipeline(p: LoadedPipeline, registry: Registry) -> PipelineDefs:
    plan = build_plan(p)
    load_keys = {n.step.index: asset_key_for(n.step.config.location() or n.op_name,
                                             getattr(n.step.config, "asset_key", None))
                 for n in plan.nodes if n.step.kind == "load"}
    source_keys = {n.step.index: asset_key_for(n.step.config.location())
                   for n in plan.nodes
                   if n.step.kind == "extract" and n.step.config.location()}
    check_targets = {n.step.index: [load_keys[j] for j in load_keys
                                    if n.step.index in plan.upstream(j)]
                     for n in plan.nodes if n.step.kind == "validate"}
    ops = {n.step.index: _op_for(plan, n, registry, load_keys, check_targets)
           for n in plan.nodes}
    deps: dict[str, dict[str, dg.DependencyDefinition]] = {}
    for n in plan.nodes:
        d = {}
        if n.current is not None:
            d["df"] = dg.DependencyDefinition(plan.node(n.current).op_name, "result")
        for name, i in n.named.items():
            d[_input_name(name)] = dg.DependencyDefinition(plan.node(i).op_name, "result")
        for j in n.after:
            d[f"after_s{j:02d}"] = dg.DependencyDefinition(plan.node(j).op_name, "result")
        deps[dg.NodeInvocation(ops[n.step.index].name, alias=n.op_name)] = d
    node_defs = list(ops.values())
    if p.config.mode == "streaming":
        loads = [n for n in plan.nodes if n.step.kind == "load"]
        watch = _watch_op(plan, loads)
        node_defs.append(watch)
        deps[dg.NodeInvocation(watch.name, alias="streams")] = {
            f"s{n.step.index:02d}": dg.DependencyDefinition(n.op_name, "result")
            for n in loads}
    graph = dg.GraphDefinition(name=plan.job_name, node_defs=node_defs,
                               dependencies=deps, description=p.config.description)
    job = graph.to_job(
        executor_def=dg.in_process_executor,
        tags={"pipeline/name": p.name, "pipeline/mode": p.config.mode, **p.config.tags,
              # dagster.yaml limits runs per value of this tag to one (streaming pipelines)
              **({"pipeline/streaming": plan.job_name} if p.config.mode == "streaming"
                 else {})},
        metadata={"pipeline_file": p.file, "steps": len(p.steps)},
        description=p.config.description or f"Pipeline '{p.name}' from {p.file}")
    kinds = {n.step.index: registry.get(n.step.kind, n.step.method).kind_of(n.step.config)
             for n in plan.nodes if n.step.kind in ("extract", "load")}
    return PipelineDefs(job, plan, load_keys, source_keys, check_targets,
                        {i: k for i, k in kinds.items() if k})


def asset_specs(pipelines: Iterable[PipelineDefs]) -> list[dg.AssetSpec]:
    """One spec per asset key across all pipelines: load targets (with lineage from the
    sources they read) and the sources themselves."""
    deps: dict[dg.AssetKey, set[dg.AssetKey]] = {}
    info: dict[dg.AssetKey, dict] = {}
    for pd in pipelines:
        for i, key in pd.load_keys.items():
            upstream = [pd.source_keys[j] for j in pd.plan.upstream(i) if j in pd.source_keys]
            deps.setdefault(key, set()).update(k for k in upstream if k != key)
            node = pd.plan.node(i)
            info.setdefault(key, {
                "group_name": pd.plan.job_name,
                "description": f"Written by pipeline '{pd.plan.pipeline.name}' "
                               f"({node.step.label})",
                "kinds": {"spark", *filter(None, [pd.asset_kinds.get(i)])},
                "metadata": {"location": node.step.config.location() or ""}})
        for i, key in pd.source_keys.items():
            deps.setdefault(key, set())
            node = pd.plan.node(i)
            info.setdefault(key, {
                "group_name": "sources",
                "description": f"Read by pipeline '{pd.plan.pipeline.name}' ({node.step.label})",
                "kinds": set(filter(None, [pd.asset_kinds.get(i)])),
                "metadata": {"location": node.step.config.location() or ""}})
    return [dg.AssetSpec(k, deps=sorted(deps[k], key=lambda a: a.to_user_string()), **info[k])
            for k in sorted(deps, key=lambda a: a.to_user_string())]
