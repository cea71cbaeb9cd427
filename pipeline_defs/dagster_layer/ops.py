"""The op of one step: its inputs (the lazy DataFrames it reads, the loads it waits for), its
StepContext on the run's SparkSession, and what it yields; the rest is in the modules it
calls (params, conditions, checks, loads, failures)."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
from pyspark import StorageLevel
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame

from pipeline_defs.common.errors import ConfigError, PipelineError
from pipeline_defs.config.conditions import parse as parse_condition
from pipeline_defs.config.loader import (
    LoadedPipeline,
    literal_credentials,
)
from pipeline_defs.dagster_layer import engine
from pipeline_defs.dagster_layer.checks import (
    quarantine_outputs,
    report_validation,
    run_validations,
    samples_table,
)
from pipeline_defs.dagster_layer.conditions import condition_holds
from pipeline_defs.dagster_layer.failures import Failed, step_failure, wrap
from pipeline_defs.dagster_layer.loads import run_load
from pipeline_defs.dagster_layer.metrics import job_group
from pipeline_defs.dagster_layer.orchestration import retry_policy
from pipeline_defs.dagster_layer.outputs import (
    LOADED_TABLE,
    SPARK_DATAFRAME,
    StepOutput,
    config_summary,
    counted_by_this_action,
    input_name,
    observe,
    plain,
    produced_metadata,
    table_schema,
)
from pipeline_defs.dagster_layer.params import (
    with_run_params,
)
from pipeline_defs.dagster_layer.plan import Plan, StepNode
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.lineage import column_ids
from pipeline_defs.steps.registry import Registry, StepDef


def _pipeline_settings(pipeline: LoadedPipeline) -> dict:
    """What every step of the pipeline gets in its StepContext."""
    c = pipeline.config
    return {"mask_columns": tuple(c.mask_columns),
            "quarantine_root": c.quarantine_root or os.environ.get("PIPELINE_QUARANTINE_ROOT",
                                                                  "quarantine"),
            "streaming": c.streaming if c.mode == "streaming" else None}


def _op_inputs(node: StepNode, source: bool, passes_model: int | None = None
               ) -> dict[str, dg.In]:
    ins: dict[str, dg.In] = {}
    if passes_model is not None:
        ins[f"model_s{passes_model:02d}"] = dg.In(LOADED_TABLE, description="The model it "
                                                  "checks, materialized once checked")
    if source:
        ins["source"] = dg.In(dg.Nothing, description="The table this extract reads (its "
                              "asset), for lineage; nothing is passed")
    if node.current is not None:
        ins["df"] = dg.In(SPARK_DATAFRAME, description="The current DataFrame")
    for name in node.named:
        ins[input_name(name)] = dg.In(SPARK_DATAFRAME,
                                      description=f"The DataFrame registered as '{name}'")
    for j in node.after:
        ins[f"after_s{j:02d}"] = dg.In(dg.Nothing, description="An earlier load runs first")
    return ins


def _step_context(context: dg.OpExecutionContext, plan: Plan, node: StepNode,
                  registry: Registry, named: dict[str, StepOutput]) -> StepContext:
    """The step's StepContext; refuses literal credentials first when Vault is required."""
    pipeline, s = plan.pipeline, node.step
    vault = context.resources.vault
    if vault.required:
        literal = literal_credentials(pipeline.file, pipeline.steps, registry)
        if literal:
            raise dg.Failure(description=str(ConfigError(literal)))
    spark = context.resources.spark.spark
    spark.sparkContext.setJobGroup(job_group(plan.job_name, node.op_name, context.run_id),
                                   f"{pipeline.name} step {s.index} {s.label}")
    return StepContext(spark=spark, pipeline=pipeline.name, step=s.index, method=s.label,
                       run_id=context.run_id, frames={n: o.df for n, o in named.items()},
                       log=context.log,
                       read_secret=vault.read_secret if vault.configured else None,
                       audit=_auditor(context, vault), op_name=node.op_name,
                       **_pipeline_settings(pipeline))


def _auditor(context: dg.OpExecutionContext, vault):
    """Credential accesses go to the audit log and, as the same record, into the run's events."""
    def audit(record: dict) -> None:
        full = vault.audit(record)
        context.log.info("credential access " + json.dumps(full, default=str))
    return audit


def _run_step(context, plan: Plan, node: StepNode, stepdef: StepDef, current: StepOutput | None,
              ctx: StepContext) -> DataFrame:
    """An extract or transform step: its (lazy) output DataFrame."""
    ctx.activity = "building its Spark plan"
    cfg = node.step.config
    if node.step.kind == "extract" and ctx.streaming is not None and stepdef.stream_read:
        return stepdef.stream_read(cfg, ctx)
    df = stepdef.fn(current.df if current else None, cfg, ctx)
    if cfg.cache and not df.isStreaming:  # `cache` (the original's extract key): kept once
        df = df.persist(getattr(StorageLevel, cfg.cache_storage_level))  # computed; freed
        ctx.metadata["cached"] = cfg.cache_storage_level  # when the run's session closes
    return df


def _work(context, plan: Plan, node: StepNode, stepdef: StepDef, registry: Registry,
          current: StepOutput | None, named: dict, started: float, made: list,
          spark_group: str, *, group, load_key, check_targets, params_key):
    """The step's own work on Spark (run again on Spark alone if it fails natively: engine.run):
    a load's outputs, or the step's DataFrame. Its StepContext is appended to `made`."""
    s = node.step
    ctx = _step_context(context, plan, node, registry, named)
    made.append(ctx)
    engine.watch(ctx.spark, spark_group)
    if s.kind == "load":
        return run_load(context, plan, node, stepdef, current, ctx, started, load_key)
    if s.kind == "validate":
        with counted_by_this_action(ctx.spark, current.lineage()):
            df = run_validations(context, plan, node, stepdef, current, ctx, group, registry,
                                 params_key)
        report_validation(context, plan, s, ctx.validation.pending, check_targets)
        return df
    return _run_step(context, plan, node, stepdef, current, ctx)


def _output(context, node: StepNode, df: DataFrame, ctx: StepContext, parents: tuple,
            pending: tuple, table_key, started: float, evaluated_in: str | None) -> dg.Output:
    """The step's output: the lazy DataFrame (with its row counter and, for a load's column
    lineage, its columns' ids) and what the op shows about it."""
    obs, columns = None, ()
    if table_key is not None and not df.isStreaming:  # for the loads' column lineage
        columns = tuple((i, (table_key, name)) for i, name in column_ids(df).items())
    if node.observe and not df.isStreaming:  # a stream's rows come from its progress
        df, obs = observe(df, context.run_id, node.op_name)
    meta = {"dagster/column_schema": table_schema(df.schema) if not df.isStreaming
            else None, "duration_s": round(time.perf_counter() - started, 3),
            **{k: plain(v) for k, v in ctx.metadata.items()}}
    if "rows" in ctx.metadata:
        meta["dagster/row_count"] = int(ctx.metadata["rows"])
    if ctx.results and samples_table(ctx.results) is not None:
        meta["samples"] = samples_table(ctx.results)
    if evaluated_in:
        meta["evaluated_in"] = evaluated_in  # its rules ran in that op's Spark pass
        meta.pop("dagster/column_schema", None)
    return dg.Output(StepOutput(df, node.step.index, node.op_name, obs, parents, pending,
                                columns),
                     metadata={k: v for k, v in meta.items() if v is not None})


def op_for(plan: Plan, node: StepNode, registry: Registry, load_keys, check_targets,
           source: bool = False, table_key: dg.AssetKey | None = None,
           passes_model: int | None = None) -> dg.OpDefinition:
    """The step's op. `passes_model`: the trainModel step whose model this validation passes
    on as the model's asset once it has checked it."""
    pipeline = plan.pipeline
    s = node.step
    stepdef = registry.get(s.kind, s.method)
    # consecutive validations are evaluated in one pass, run by the first of them
    group = plan.validation_group(s.index)
    evaluated_in = plan.node(group[0]).op_name if group[0] != s.index else None

    params_key = plan.params_key
    quarantines = plan.quarantines().get(s.index, [])  # tables this op's pass writes
    condition = parse_condition(s.condition) if s.condition else None
    writes_asset = s.kind != "load" and type(s.config).writes_asset

    def compute(context: dg.OpExecutionContext, **inputs):
        if context.resources.spark.cancelled:
            raise dg.Failure(description=f"step {s.index} ({s.label}) not started: the run "
                             "was terminated.", allow_retries=False)
        current: StepOutput | None = inputs.get("df")
        named = {n: inputs[input_name(n)] for n in node.named}
        try:
            run_node = with_run_params(context, plan, node, registry, params_key)
        except ConfigError as e:
            raise dg.Failure(description=str(e)) from None
        parents = tuple(([current] if current else []) + list(named.values()))
        started = time.perf_counter()
        if condition is not None and not condition_holds(context, plan, s, condition,
                                                          current, named, params_key):
            # no result: Dagster skips every step that needs it; `done` lets later loads go on
            return [dg.Output(None, "done")]
        ctx = None
        spark_group = job_group(plan.job_name, node.op_name, context.run_id)

        fallback, made = None, []  # made: the StepContext of each attempt
        try:
            if evaluated_in is not None:  # evaluated by the group's first op: report it
                ctx = next(p.ctx for p in current.pending if p.ctx.step == s.index)
                df = current.df
                report_validation(context, plan, s, current.pending, check_targets)
            else:
                df, fallback = engine.run(
                    context, context.resources.spark.spark, f"step {s.index} ({s.label})",
                    lambda: _work(context, plan, run_node, stepdef, registry, current, named,
                                  started, made, spark_group, group=group,
                                  load_key=load_keys.get(s.index), check_targets=check_targets,
                                  params_key=params_key))
                ctx = made[-1]
                if s.kind == "load":
                    return engine.with_metadata(df, engine.metadata(
                        ctx.spark, spark_group, fallback))
        except (dg.Failure, Failed):
            raise
        except (PipelineError, PySparkException, Exception) as e:  # noqa: BLE001
            ctx = made[-1] if made else ctx
            raise step_failure(pipeline, s, e, context,
                           ctx.activity if ctx is not None else "running") from None
        pending = ()
        if s.kind == "validate" and len(group) > 1:
            pending = current.pending if evaluated_in else tuple(ctx.validation.pending)
        outputs = [_output(context, node, df, ctx, parents, pending, table_key, started,
                           evaluated_in)]
        if quarantines:
            outputs += quarantine_outputs(context, ctx, quarantines, df)
        model = ctx.produced if writes_asset else \
            inputs.get(f"model_s{passes_model:02d}") if passes_model is not None else None
        if model is not None and ctx.metadata.get("promoted_to"):  # evaluateModel's promoteTo
            model = {**model, "aliases": [*model.get("aliases", []),
                                          ctx.metadata["promoted_to"]]}
        if model is not None:
            outputs.append(dg.Output(model, "model", metadata=produced_metadata(model)))
        if condition is not None:
            outputs.append(dg.Output(None, "done"))
        if evaluated_in is None:
            outputs = engine.with_metadata(outputs, engine.metadata(ctx.spark, spark_group,
                                                                    fallback))
        return outputs

    tags = {"pipeline/kind": s.kind, "pipeline/method": s.method}
    return dg.OpDefinition(
        # unique in the repository, the step first; the node is aliased to the op_name
        name=f"{node.op_name}__{plan.job_name}",
        ins=_op_inputs(node, source, passes_model), compute_fn=wrap(compute),
        outs={"result": dg.Out(LOADED_TABLE if s.kind == "load" else SPARK_DATAFRAME,
                               is_required=condition is None),
              **{f"quarantine_s{i:02d}": dg.Out(LOADED_TABLE, is_required=False)
                 for i in quarantines},
              **({"model": dg.Out(LOADED_TABLE, is_required=False, description="The model "
                                  "it trained (or checked), as its asset")}
                 if writes_asset or passes_model is not None else {}),
              **({"done": dg.Out(dg.Nothing, description="The step ran, or its condition "
                                 "skipped it: steps that only come after it wait on this.")}
                 if condition is not None else {})},
        required_resource_keys={"spark", "vault", "metrics",
                                *([params_key] if params_key else [])},
        tags=tags, retry_policy=retry_policy(s.retries or pipeline.config.retries),
        pool=s.pool or pipeline.config.pool,
        description=(s.description + "\n\n" if s.description else "")
        + f"Step {s.index}: {s.label}"
        + (f" (registered as '{s.config.register_as}')" if s.config.register_as else "")
        + (f": {config_summary(s.raw_config)}" if s.raw_config and not s.sql else "")
        + (f", from this clause of {Path(pipeline.file).name}:\n\n```sql\n{s.sql}\n```"
           if s.sql else ""))
