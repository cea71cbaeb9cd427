"""The op of one step: runs the step's function on the run's SparkSession, passes lazy
DataFrames on, logs loads as asset materializations and validations as asset check
evaluations, and turns failures into one clear line."""
from __future__ import annotations

import json
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError  # a run's interruption
from pyspark import StorageLevel
from pyspark.errors import PySparkException
from pyspark.sql import DataFrame, Observation
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from pipeline_defs import secrets
from pipeline_defs.config.assets import uri
from pipeline_defs.config.conditions import parse as parse_condition
from pipeline_defs.config.dataflow import safe_name
from pipeline_defs.config.dates import iso, parse_time
from pipeline_defs.config.loader import (
    TRIGGER_FILE,
    TRIGGER_NAME,
    LoadedPipeline,
    literal_credentials,
    with_params,
)
from pipeline_defs.config.params import DATE, now, resolve_params
from pipeline_defs.errors import ConfigError, PipelineError, StepExecutionError
from pipeline_defs.metrics import job_group
from pipeline_defs.orchestration import DATE_TAG, TRIGGER_TAG, retry_policy
from pipeline_defs.plan import Plan, StepNode
from pipeline_defs.steps.context import LoadResult, StepContext
from pipeline_defs.steps.errors import internal_error, spark_error_summary, transient
from pipeline_defs.steps.lineage import column_ids, column_sources
from pipeline_defs.steps.registry import Registry, StepDef
from pipeline_defs.steps.validate import ValidationFailed, ValidationGroup

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
    pending: tuple = ()  # a validation group's steps, evaluated by its first op, reported by each
    columns: tuple = ()  # an extract's columns: ((Spark's column id, (asset key, name)), ...)

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
    out = df.observe(obs, F.count(F.lit(1)).alias("rows"))
    obs.dataframe_id = df._jdf.id()  # with the name, the key Spark completes it by
    return out, obs


def _done(obs: Observation) -> bool:
    return obs._jo is not None and obs._jo.future().isCompleted()


@contextmanager
def _counted_by_this_action(spark, outputs: list[StepOutput]):
    """Around a Spark action over these steps' outputs: the row counts riding on them that
    this action fills, it fills with what it saw. A failed action (a write the database cut
    off, a retried step's first attempt) completes them too, with what it had read by then;
    Spark never fills an Observation twice, so those are armed again, and the action that
    succeeds (the retry) counts its own rows."""
    waiting = [o.observation for o in outputs
               if o.observation is not None and not _done(o.observation)]
    try:
        yield
    except BaseException:
        manager = spark._jsparkSession.observationManager()
        for obs in waiting:
            if _done(obs) and getattr(obs, "dataframe_id", None) is not None:
                obs._jo = spark._jvm.org.apache.spark.sql.Observation(obs._name)
                manager.register(obs._jo, obs.dataframe_id)
        raise


# ---------------------------------------------------------------- metadata helpers
def table_schema(schema: StructType) -> dg.TableSchema:
    return dg.TableSchema(columns=[
        dg.TableColumn(f.name, f.dataType.simpleString(),
                       constraints=dg.TableColumnConstraints(nullable=f.nullable))
        for f in schema.fields])


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
def input_name(name: str) -> str:
    return f"ref_{safe_name(name)}"


def _pipeline_settings(pipeline: LoadedPipeline) -> dict:
    """What every step of the pipeline gets in its StepContext."""
    c = pipeline.config
    return {"mask_columns": tuple(c.mask_columns),
            "quarantine_root": c.quarantine_root or os.environ.get("PIPELINE_QUARANTINE_ROOT",
                                                                  "quarantine"),
            "streaming": c.streaming if c.mode == "streaming" else None}


# Check results of the validations that ran in this process, by run: the pipeline's check op
# (which runs once the assets it checks are written) reports them.
_EVALUATED: dict[str, dict[dg.AssetCheckKey, dg.AssetCheckResult]] = {}


def evaluated_checks(run_id: str) -> dict[dg.AssetCheckKey, dg.AssetCheckResult]:
    return _EVALUATED.get(run_id, {})


def _log_checks(context, s, ctx: StepContext, targets: list[dg.AssetKey], now: bool
                ) -> list[dg.AssetCheckEvaluation]:
    """One asset check result per asset this validation protects: kept for the pipeline's
    check op, or (`now`: the step fails the run, and no check op will run) returned, for the
    failing op to report before it raises."""
    cfg = s.config
    rows = ctx.metadata.get("rows")
    failing = int(ctx.metadata.get("failing_rows", 0))
    meta = {
        "rules": dg.MetadataValue.json([{"rule": r.name, "text": r.text,
                                         "columns": list(r.columns),
                                         "violations": r.violations,
                                         "fraction": (r.violations / rows) if rows else None,
                                         **({"detail": r.detail} if r.detail else {})}
                                        for r in ctx.results]),
        # a row that breaks two rules is one failing row and two rule violations
        "failing_rows": failing,
        "failing_fraction": float(failing / rows) if rows else 0.0,
        "rule_violations": int(ctx.metadata.get("rule_violations", 0)),
        "action": cfg.on_failure,
    }
    table = samples_table(ctx.results)
    if table is not None:
        meta["samples"] = table
    if rows is not None:
        meta["rows"] = int(rows)
    if "quarantine_location" in ctx.metadata:
        meta["quarantine_location"] = ctx.metadata["quarantine_location"]
        meta["quarantined_rows"] = int(ctx.metadata.get("quarantined_rows", 0))
    severity = dg.AssetCheckSeverity.ERROR if cfg.on_failure == "fail" else \
        dg.AssetCheckSeverity.WARN
    out = []
    for key in targets:
        args = dict(asset_key=key, check_name=check_name(s),
                    passed=bool(ctx.metadata.get("passed")), severity=severity, metadata=meta,
                    description=f"{s.label} (step {s.index}), action {cfg.on_failure}")
        if now:
            out.append(dg.AssetCheckEvaluation(**args))
        else:
            _EVALUATED.setdefault(context.run_id, {})[dg.AssetCheckKey(key, check_name(s))] = \
                dg.AssetCheckResult(**args)
    return out


def samples_table(results) -> dg.TableMetadataValue | None:
    """The validation's sample rows as one table (the rule each broke, then the row's
    columns, masked ones as ***), for the UI; None without samples."""
    samples = [(r.name, row) for r in results for row in r.samples]
    if not samples:
        return None
    columns = list(dict.fromkeys(c for _, row in samples for c in row))
    return dg.MetadataValue.table(
        records=[dg.TableRecord({"rule": name, **{c: _cell(row.get(c)) for c in columns}})
                 for name, row in samples],
        schema=dg.TableSchema(columns=[dg.TableColumn("rule", "string"),
                                       *[dg.TableColumn(c, "string") for c in columns]]))


class _Failed(Exception):
    """A step's failure, raised once the op has reported the events that go with it (its
    asset check evaluations: an event logged by a failing op is otherwise lost)."""

    def __init__(self, failure: dg.Failure, events: list):
        super().__init__(failure.description)
        self.failure, self.events = failure, events


def check_name(s) -> str:
    return safe_name(s.name or f"s{s.index:02d}_{s.method}")


def _is(cls):
    return lambda _context, value: isinstance(value, cls)


SPARK_DATAFRAME = dg.DagsterType(
    name="SparkDataFrame", type_check_fn=_is(StepOutput),
    description="A Spark DataFrame passed on as a lazy plan (nothing is computed between "
    "steps), with the row counter riding on it.")
LOADED_TABLE = dg.DagsterType(
    name="LoadedTable", type_check_fn=_is(dict),
    description="What a load wrote: its location and the rows written (its materialization "
    "carries schema, counts and the table's own metrics).")


def config_summary(raw: dict, width: int = 140) -> str:
    """The step's config on one line, secrets masked: `condition="amount > 0"`."""
    parts = [f"{k}={json.dumps(v, default=str)}" for k, v in sanitized(raw).items()]
    text = ", ".join(parts)
    return text if len(text) <= width else text[:width - 1] + "…"


def _op_inputs(node: StepNode, source: bool) -> dict[str, dg.In]:
    ins: dict[str, dg.In] = {}
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


def params_resource(plan: Plan) -> dg.ResourceDefinition:
    """The pipeline's `params` as run configuration: the Launchpad shows each with its
    default (the file's, with the environment applied) and a run may change it. `DATE` and
    the params whose default depends on it are empty by default: the run's date decides."""
    p = plan.pipeline

    def pipeline_params(init) -> dict[str, str]:
        return dict(init.resource_config or {})
    pipeline_params.__qualname__ = "pipeline_params"  # its type as dg list defs / the UI show it

    fields = {name: dg.Field(str, default_value="" if p.dated(name) else value,
                             is_required=False,
                             description=f"${{{name}}} in the steps of pipeline '{p.name}'"
                             + (f"; empty: {p.config.params[name]} of the run's date"
                                if p.dated(name) else ""))
              for name, value in p.params.items() if name != DATE}
    fields[DATE] = dg.Field(str, default_value="", is_required=False, description=(
        "The run's logical time, yyyy-MM-dd or yyyy-MM-ddTHH:mm (${DATE}, ${DATE-1}, "
        "${DATE:yyyyMMdd}, ${DATE:HH}); empty: the partition's start, the schedule tick's, "
        "`pipeline run --date`'s, else now"))
    return dg.ResourceDefinition(resource_fn=pipeline_params, config_schema=fields,
                                 description=f"Parameters of pipeline '{p.name}' ({p.file})")


def run_params(context, plan: Plan, key: str | None) -> dict[str, str]:
    """This run's parameter values: what the run config sets, else what the definitions were
    loaded with, with `DATE` the run's date and the defaults that depend on it re-read."""
    p = plan.pipeline
    given = {k: v for k, v in (dict(getattr(context.resources, key)) if key else {}).items()
             if v != ""}
    date = given.pop(DATE, None) or run_time(context)
    base = {k: v for k, v in p.params.items() if k != DATE and not p.dated(k)}
    base.update({k: v for k, v in p.overrides.items() if k != DATE})
    trigger = context.run.tags.get(TRIGGER_TAG)
    if trigger:  # the file a newFiles sensor started this run for
        base.update({TRIGGER_FILE: trigger, TRIGGER_NAME: trigger.rstrip("/").rsplit("/", 1)[-1]})
    base.update(given)
    return resolve_params(p.config.params if p.config else {}, base, None, date)


def _with_run_params(context, plan: Plan, node: StepNode, registry: Registry,
                     key: str | None) -> StepNode:
    """The node with its step configured by this run's parameter values."""
    step = with_params(plan.pipeline, node.step, registry, run_params(context, plan, key))
    return node if step is node.step else replace(node, step=step)


def run_time(context) -> str:
    """The run's logical time (yyyy-MM-ddTHH:mm:ss, local to its timezone): its partition's
    start (in the partitions' timezone: an hourly partition keeps its hour), the time
    `pipeline run --date` or its schedule's tick gave (tag `pipeline/date`, in the
    schedule's timezone), else now."""
    if context.has_partition_key:
        try:
            return iso(context.partition_time_window.start)
        except Exception:  # noqa: BLE001 - not a time partition: its key is the time
            return iso(parse_time(context.partition_key))
    if context.run.tags.get(DATE_TAG):
        return iso(parse_time(context.run.tags[DATE_TAG]))
    return now()


def _condition_holds(context, plan: Plan, s, condition, current: StepOutput | None,
                     named: dict[str, StepOutput], params_key: str | None) -> bool:
    """Evaluates the step's `condition`. A count persists the DataFrame it counts first, so
    the step then reads it from the cache: one Spark job, the data computed once."""
    outputs = {o.op_name: o for src in [current, *named.values()] if src is not None
               for o in src.lineage()}
    op_name = plan.node(s.index).op_name
    context.resources.spark.spark.sparkContext.setJobGroup(
        job_group(plan.job_name, op_name, context.run_id),
        f"{plan.pipeline.name} step {s.index} condition")
    params = run_params(context, plan, params_key)
    seen: dict[str, object] = {}

    def rows(o: StepOutput | None, what: str) -> int:
        if o is None:
            raise dg.Failure(description=f"step {s.index} ({s.label}): condition "
                             f"`{condition.text}` needs {what}, which this step does not "
                             "read.", allow_retries=False)
        with _counted_by_this_action(context.resources.spark.spark, o.lineage()):
            return o.df.persist().count()

    def value_of(name: str):
        if name == "previous_step_count":
            value = rows(current, "the previous step's rows")
        elif name == "execution_date":  # the logical time's date
            value = params.get("execution_date") or parse_time(params[DATE]).date().isoformat()
        elif name.startswith("steps."):
            step = name.split(".")[1]
            value = rows(outputs.get(step), f"the rows of step '{step}'")
        else:
            value = params.get(name, plan.pipeline.params.get(name))
        seen[name] = value
        return value

    holds = condition.evaluate(value_of)
    values = ", ".join(f"{k}={v!r}" for k, v in seen.items())
    if not holds:
        context.log.info(f"step {s.index} ({s.label}) skipped: condition `{condition.text}` "
                         f"is false ({values}); the steps that need it are skipped too")
    else:
        context.log.debug(f"condition `{condition.text}` holds ({values})")
    return holds


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


def _output(context, node: StepNode, df: DataFrame, ctx: StepContext, parents: tuple,
            pending: tuple, table_key, started: float, evaluated_in: str | None) -> dg.Output:
    """The step's output: the lazy DataFrame (with its row counter and, for a load's column
    lineage, its columns' ids) and what the op shows about it."""
    obs, columns = None, ()
    if table_key is not None and not df.isStreaming:  # for the loads' column lineage
        columns = tuple((i, (table_key, name)) for i, name in column_ids(df).items())
    if node.observe and not df.isStreaming:  # a stream's rows come from its progress
        df, obs = _observe(df, context.run_id, node.op_name)
    meta = {"dagster/column_schema": table_schema(df.schema) if not df.isStreaming
            else None, "duration_s": round(time.perf_counter() - started, 3),
            **{k: _plain(v) for k, v in ctx.metadata.items()}}
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


class _HeldLog:
    """The log of a validation evaluated in another op's pass: what it says is held and
    said by its own op when that op runs."""

    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def __getattr__(self, level: str):
        if level not in ("debug", "info", "warning", "error"):
            raise AttributeError(level)
        return lambda msg, *args: self.lines.append((level, msg % args if args else msg))


def _run_validations(context, plan: Plan, node: StepNode, stepdef: StepDef,
                     current: StepOutput, ctx: StepContext, group: list[int],
                     registry: Registry, params_key: str | None) -> DataFrame:
    """A validate step alone, or the first of a group of consecutive validations: records
    every rule of the group and evaluates them in one Spark pass (quarantined rows written
    by that pass). Each step's results stay with its own Pending for its own op to report."""
    ctx.activity = "evaluating its rules"
    members = group[1:]
    # failures are raised by each step's own op (_report_validation), after its checks
    ctx.validation = ValidationGroup([], defer=bool(members), raise_failures=False)
    df = stepdef.fn(current.df, node.step.config, ctx)
    for k, i in enumerate(members):
        m = _with_run_params(context, plan, plan.node(i), registry, params_key)
        m_ctx = replace(ctx, step=i, method=m.step.label, op_name=m.op_name, log=_HeldLog(),
                        metadata={}, results=[], validation=ctx.validation)
        ctx.validation.defer = k < len(members) - 1
        df = registry.get("validate", m.step.method).fn(df, m.step.config, m_ctx)
    return df


def _report_validation(context, plan: Plan, s, group: tuple, check_targets) -> None:
    """A validate step's own results, under its own op: the warnings its evaluation held, its
    asset check results, and its failure (action `fail`). When it fails the run, the check
    results of its whole group are logged now (the pipeline's check op will not run)."""
    mine = next((p for p in group if p.ctx.step == s.index), None)
    if mine is None:  # a stream's validation: judged per micro-batch, as the query runs
        return
    for level, line in getattr(mine.ctx.log, "lines", ()):
        getattr(context.log, level)(line)
    if mine.failure is None:
        if "passed" in mine.ctx.metadata:
            _log_checks(context, s, mine.ctx, check_targets.get(s.index, []), now=False)
        return
    events = []
    for p in group:
        if "passed" in p.ctx.metadata:
            step = plan.node(p.ctx.step).step
            for key in check_targets.get(p.ctx.step, []):
                _EVALUATED.get(context.run_id, {}).pop(dg.AssetCheckKey(key, check_name(step)),
                                                       None)
            events += _log_checks(context, step, p.ctx, check_targets.get(p.ctx.step, []),
                                  now=True)
    raise _Failed(_failure(plan.pipeline, s, ValidationFailed(mine.failure), context,
                           "evaluating its rules"), events)


def op_for(plan: Plan, node: StepNode, registry: Registry, load_keys, check_targets,
           source: bool = False, table_key: dg.AssetKey | None = None) -> dg.OpDefinition:
    pipeline = plan.pipeline
    s = node.step
    stepdef = registry.get(s.kind, s.method)
    # consecutive validations are evaluated in one pass, run by the first of them
    group = plan.validation_group(s.index)
    evaluated_in = plan.node(group[0]).op_name if group[0] != s.index else None

    params_key = plan.params_key
    quarantines = plan.quarantines().get(s.index, [])  # tables this op's pass writes
    condition = parse_condition(s.condition) if s.condition else None

    def compute(context: dg.OpExecutionContext, **inputs):
        if context.resources.spark.cancelled:
            raise dg.Failure(description=f"step {s.index} ({s.label}) not started: the run "
                             "was terminated.", allow_retries=False)
        current: StepOutput | None = inputs.get("df")
        named = {n: inputs[input_name(n)] for n in node.named}
        try:
            run_node = _with_run_params(context, plan, node, registry, params_key)
        except ConfigError as e:
            raise dg.Failure(description=str(e)) from None
        parents = tuple(([current] if current else []) + list(named.values()))
        started = time.perf_counter()
        if condition is not None and not _condition_holds(context, plan, s, condition,
                                                          current, named, params_key):
            # no result: Dagster skips every step that needs it; `done` lets later loads go on
            return [dg.Output(None, "done")]
        ctx = None
        try:
            if evaluated_in is not None:  # evaluated by the group's first op: report it
                ctx = next(p.ctx for p in current.pending if p.ctx.step == s.index)
                df = current.df
                _report_validation(context, plan, s, current.pending, check_targets)
            else:
                ctx = _step_context(context, plan, run_node, registry, named)
                if s.kind == "load":
                    return _run_load(context, plan, run_node, stepdef, current, ctx, started,
                                     load_keys[s.index])
                if s.kind == "validate":
                    with _counted_by_this_action(ctx.spark, current.lineage()):
                        df = _run_validations(context, plan, run_node, stepdef, current, ctx,
                                              group, registry, params_key)
                    _report_validation(context, plan, s, ctx.validation.pending,
                                       check_targets)
                else:
                    df = _run_step(context, plan, run_node, stepdef, current, ctx)
        except (dg.Failure, _Failed):
            raise
        except (PipelineError, PySparkException, Exception) as e:  # noqa: BLE001
            raise _failure(pipeline, s, e, context,
                           ctx.activity if ctx is not None else "running") from None
        pending = ()
        if s.kind == "validate" and len(group) > 1:
            pending = current.pending if evaluated_in else tuple(ctx.validation.pending)
        outputs = [_output(context, node, df, ctx, parents, pending, table_key, started,
                           evaluated_in)]
        if quarantines:
            outputs += _quarantine_outputs(context, ctx, quarantines, df)
        if condition is not None:
            outputs.append(dg.Output(None, "done"))
        return outputs

    tags = {"pipeline/kind": s.kind, "pipeline/method": s.method}
    return dg.OpDefinition(
        # unique in the repository, the step first; the node is aliased to the op_name
        name=f"{node.op_name}__{plan.job_name}",
        ins=_op_inputs(node, source), compute_fn=_wrap(compute),
        outs={"result": dg.Out(LOADED_TABLE if s.kind == "load" else SPARK_DATAFRAME,
                               is_required=condition is None),
              **{f"quarantine_s{i:02d}": dg.Out(LOADED_TABLE, is_required=False)
                 for i in quarantines},
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
        + (f": {config_summary(s.raw_config)}" if s.raw_config else ""))


def _auditor(context: dg.OpExecutionContext, vault):
    """Credential accesses go to the audit log and, as the same record, into the run's events."""
    def audit(record: dict) -> None:
        full = vault.audit(record)
        context.log.info("credential access " + json.dumps(full, default=str))
    return audit


@contextmanager
def _interrupts_cancel_spark(context):
    """While a step runs on the main thread (a run worker), an interrupt (Dagster's
    termination, Ctrl-C) cancels the session's Spark jobs, so the running Spark action
    returns at once; Dagster's own handler would raise in the middle of the py4j call and
    leave the job running in the JVM. Yields the list of interrupts seen."""
    hit: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield hit
        return
    spark = context.resources.spark

    def handler(signo, _frame):
        hit.append(signo)
        if spark._session is not None:
            threading.Thread(target=spark._session.sparkContext.cancelAllJobs,
                             daemon=True).start()
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield hit
    finally:
        signal.signal(signal.SIGINT, previous)


def _wrap(compute):
    """OpDefinition calls compute_fn(context, inputs_dict) and wants its results yielded.
    A step of a terminated run (an interrupt, or the Spark resource's watcher saw the run
    CANCELING or already marked CANCELED) ends as an interruption, not a failure: Dagster then
    ends the run CANCELED, also when the UI marked it canceled at once."""
    def fn(context, inputs):
        hit: list[int] = []
        try:
            with _interrupts_cancel_spark(context) as hit:
                out = compute(context, **inputs)
        except _Failed as e:
            _interrupted(context, hit, e.failure)
            yield from e.events
            raise e.failure from None
        except BaseException as e:
            _interrupted(context, hit, e)
            raise
        _interrupted(context, hit, None)
        # Only the outputs this run selected: a subset of the pipeline's assets, or a graph
        # whose last step is conditional, leaves some (`done`, a quarantine table) unselected,
        # and Dagster refuses an output it did not ask for.
        selected = context.selected_output_names
        yield from (o for o in (out if isinstance(out, list) else [out])
                    if not isinstance(o, dg.Output) or o.output_name in selected)
    return fn


def _interrupted(context, hit: list[int], error: BaseException | None) -> None:
    if not hit and not context.resources.spark.cancelled:
        return
    if isinstance(error, dg.Failure) and error.description:
        context.log.warning(error.description)
    raise DagsterExecutionInterruptedError() from None


DQ_COLUMNS = {"_dq_rules": "the rules of the group the row broke",
              "_dq_reason": "why it was quarantined, as a sentence",
              "_dq_run_id": "the Dagster run that quarantined it",
              "_dq_time": "when (UTC)"}


def _quarantine_outputs(context, ctx: StepContext, steps: list[int], df) -> list[dg.Output]:
    """The quarantine tables this pass appended to, as their assets' materializations."""
    out = []
    for p in ctx.validation.pending:
        name = f"quarantine_s{p.ctx.step:02d}"
        location = p.ctx.metadata.get("quarantine_location")
        if p.ctx.step not in steps or not location:  # (unselected ones are dropped by _wrap)
            continue
        rows = int(p.ctx.metadata.get("quarantined_rows", 0))
        schema = dg.TableSchema(columns=[
            *table_schema(df.schema).columns,
            *[dg.TableColumn(c, "array<string>" if c == "_dq_rules" else "string",
                             description=d) for c, d in DQ_COLUMNS.items()]])
        out.append(dg.Output({"location": location, "rows": rows}, name, metadata={
            "dagster/row_count": rows, "location": location, "dagster/uri": uri(location),
            "format": "delta", "mode": "append", "dagster/column_schema": schema,
            "rules": dg.MetadataValue.json([r.text for r in p.rules])}))
    return out


def _failure(pipeline: LoadedPipeline, s, e: BaseException, context=None,
             activity: str = "running") -> dg.Failure:
    internal = internal_error(e)
    if context is not None and context.resources.spark.cancelled:
        return dg.Failure(description=f"pipeline '{pipeline.name}', step {s.index} ({s.label})"
                          ": cancelled, the run was terminated; nothing it was writing was "
                          "committed.", metadata={"pipeline": pipeline.name, "step": s.index,
                                                  "cancelled": True}, allow_retries=False)
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
    retry = not internal and transient(e)  # a retry policy retries only what it may cure
    if retry and context is not None and context.op_def.retry_policy is not None:
        policy = context.op_def.retry_policy
        if context.retry_number < policy.max_retries:  # said here: the retry event does not
            context.log.warning(secrets.scrub(
                f"attempt {context.retry_number + 1} of step {s.index} ({s.label}) failed "
                f"with a transient error, retried in about {policy.delay or 0:g}s or more: "
                f"{reason}"))
    return dg.Failure(description=secrets.scrub(f"{err} [{pipeline.file}]"),
                      metadata={"pipeline": pipeline.name, "step": s.index,
                                "method": s.label, "error_type": type(e).__name__,
                                "transient": retry,
                                "config": dg.MetadataValue.json(err.config)},
                      allow_retries=retry)


def _column_lineage(context, current: StepOutput) -> dg.TableColumnLineage | None:
    """Which columns of the tables read each written column comes from (Spark's analyzed
    plan, no job). Best effort: a plan shape it cannot read gives no lineage, never a failed
    load."""
    sources = dict(c for o in current.lineage() for c in o.columns)
    if not sources:
        return None
    try:
        found = column_sources(current.df)
    except Exception as e:  # noqa: BLE001 - lineage is metadata, the load succeeded
        context.log.debug(f"no column lineage: {type(e).__name__}: {e}")
        return None
    return dg.TableColumnLineage(deps_by_column={
        column: [dg.TableColumnDep(asset_key=sources[i][0], column_name=sources[i][1])
                 for i in sorted(ids) if i in sources]
        for column, ids in found.items()})


def _run_load(context, plan: Plan, node: StepNode, stepdef: StepDef, current: StepOutput,
              ctx: StepContext, started: float, key: dg.AssetKey) -> dg.Output:
    if current.df.isStreaming:
        from pipeline_defs.stream_runs import start_stream
        return start_stream(context, plan, node, stepdef, current, ctx, key)
    s = node.step
    df, obs = current.df, None
    if not s.config.counts_rows:
        df, obs = _observe(df, context.run_id, node.op_name)
    ctx.activity = f"writing to {s.config.location() or 'its target'}"
    with _counted_by_this_action(ctx.spark, current.lineage()):
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
    meta = {"location": result.location, "dagster/uri": uri(result.location),
            "format": result.format, "mode": result.mode,
            "dagster/column_schema": table_schema(current.df.schema),
            "duration_s": duration, "step_rows": dg.MetadataValue.json(step_rows),
            **{k: _plain(v) for k, v in result.metadata.items()}}
    if rows is not None:
        meta["dagster/row_count"] = int(rows)
    if s.config.catalog_name():
        meta["dagster/table_name"] = s.config.catalog_name()
    lineage = _column_lineage(context, current)
    if lineage is not None:
        meta["dagster/column_lineage"] = lineage
    context.log.info(f"{s.label} wrote {rows if rows is not None else '?'} rows to "
                     f"{result.location} in {duration:.1f}s")
    return dg.Output({"location": result.location, "rows": rows}, metadata=meta)


