"""Validate steps in Dagster: consecutive validations evaluated in one Spark pass by the
first op of the group, each step's results reported by its own op as asset check
evaluations, and the quarantine tables that pass wrote as materializations."""
from __future__ import annotations

from dataclasses import replace

import dagster as dg
from pyspark.sql import DataFrame

from pipeline_defs.config.assets import uri
from pipeline_defs.config.dataflow import safe_name
from pipeline_defs.dagster_layer.failures import Failed, step_failure
from pipeline_defs.dagster_layer.outputs import (
    StepOutput,
    cell,
    plain,
    table_schema,
)
from pipeline_defs.dagster_layer.params import (
    with_run_params,
)
from pipeline_defs.dagster_layer.plan import Plan, StepNode
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.registry import Registry, StepDef
from pipeline_defs.steps.validate import ValidationFailed, ValidationGroup

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
    # what a dataset rule measured (evaluateModel's metric): a number Dagster plots
    meta.update({k: float(v) for k, v in ctx.metadata.get("measured", {}).items()})
    if getattr(type(cfg), "checks_model", False):  # a model's metric: no rows fail or pass
        for k in ("failing_rows", "failing_fraction", "rule_violations"):
            meta.pop(k)
        meta["threshold"] = str(ctx.metadata.get("threshold", ""))
        if ctx.metadata.get("promoted_to"):
            meta["promoted_to"] = str(ctx.metadata["promoted_to"])
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
        records=[dg.TableRecord({"rule": name, **{c: cell(row.get(c)) for c in columns}})
                 for name, row in samples],
        schema=dg.TableSchema(columns=[dg.TableColumn("rule", "string"),
                                       *[dg.TableColumn(c, "string") for c in columns]]))


def check_name(s) -> str:
    return safe_name(s.name or f"s{s.index:02d}_{s.method}")


def table_check_name(s, name: str) -> str:
    """The asset check of a load's table check `name` (TableCheck)."""
    return safe_name(f"{check_name(s)}_{name}")


def record_table_checks(context, s, key: dg.AssetKey, checks) -> None:
    """A load's table checks (steps.context.TableCheck), for the pipeline's check op."""
    about = dict(s.config.table_checks())
    for c in checks:
        name = table_check_name(s, c.name)
        _EVALUATED.setdefault(context.run_id, {})[dg.AssetCheckKey(key, name)] = \
            dg.AssetCheckResult(asset_key=key, check_name=name, passed=c.passed,
                                severity=dg.AssetCheckSeverity.ERROR,
                                metadata={k: plain(v) for k, v in c.metadata.items()},
                                description=f"{s.label} (step {s.index}): {about.get(c.name)}")
        if not c.passed:
            context.log.error(f"{s.label}: check {name} failed: {about.get(c.name)} does not "
                              f"hold ({c.metadata})")


class _HeldLog:
    """The log of a validation evaluated in another op's pass: what it says is held and
    said by its own op when that op runs."""

    def __init__(self):
        self.lines: list[tuple[str, str]] = []

    def __getattr__(self, level: str):
        if level not in ("debug", "info", "warning", "error"):
            raise AttributeError(level)
        return lambda msg, *args: self.lines.append((level, msg % args if args else msg))


def run_validations(context, plan: Plan, node: StepNode, stepdef: StepDef,
                     current: StepOutput, ctx: StepContext, group: list[int],
                     registry: Registry, params_key: str | None) -> DataFrame:
    """A validate step alone, or the first of a group of consecutive validations: records
    every rule of the group and evaluates them in one Spark pass (quarantined rows written
    by that pass). Each step's results stay with its own Pending for its own op to report."""
    ctx.activity = "evaluating its rules"
    members = group[1:]
    # failures are raised by each step's own op (report_validation), after its checks
    ctx.validation = ValidationGroup([], defer=bool(members), raise_failures=False)
    df = stepdef.fn(current.df, node.step.config, ctx)
    for k, i in enumerate(members):
        m = with_run_params(context, plan, plan.node(i), registry, params_key)
        m_ctx = replace(ctx, step=i, method=m.step.label, op_name=m.op_name, log=_HeldLog(),
                        metadata={}, results=[], validation=ctx.validation)
        ctx.validation.defer = k < len(members) - 1
        df = registry.get("validate", m.step.method).fn(df, m.step.config, m_ctx)
    return df


def report_validation(context, plan: Plan, s, group: tuple, check_targets) -> None:
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
    raise Failed(step_failure(plan.pipeline, s, ValidationFailed(mine.failure), context,
                           "evaluating its rules"), events)


DQ_COLUMNS = {"_dq_rules": "the rules of the group the row broke",
              "_dq_reason": "why it was quarantined, as a sentence",
              "_dq_run_id": "the Dagster run that quarantined it",
              "_dq_time": "when (UTC)"}


def quarantine_outputs(context, ctx: StepContext, steps: list[int], df) -> list[dg.Output]:
    """The quarantine tables this pass appended to, as their assets' materializations."""
    out = []
    for p in ctx.validation.pending:
        name = f"quarantine_s{p.ctx.step:02d}"
        location = p.ctx.metadata.get("quarantine_location")
        if p.ctx.step not in steps or not location:  # (unselected ones are dropped by wrap)
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
