"""The single-pass validation engine: rules of consecutive validate steps counted in one
Spark job, then each step's action (fail, warn, drop, quarantine), samples and reports.

Each validator turns its config into row rules (a boolean "violates" column each), dataset
rules (an aggregate and a test of its value) or schema rules (checked without reading data)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.validate.rules import (
    REASON_COL,
    RULES_COL,
    RUN_COL,
    TIME_COL,
    DatasetRule,
    RowRule,
    RuleResult,
    ValidationFailed,
    Validator,
    flag,
    passes,
    quarantine_location,
)
from pipeline_defs.steps.validate.stream import per_micro_batch

SAMPLES = 5


def _mask(row: dict, masked: set[str]) -> dict:
    return {k: ("***" if k in masked else v) for k, v in row.items()}


def _collect_samples(base: DataFrame, data_cols: list[str], rules: list[RowRule],
                     counts: list[int], masked: set[str]) -> list[list[dict]]:
    """Up to SAMPLES violating rows per rule that has violations, from one query of limited
    parts (each stops reading once it has enough); nothing runs when every rule passed."""
    failing = [i for i, n in enumerate(counts) if n]
    out: list[list[dict]] = [[] for _ in rules]
    if not failing:
        return out
    picked = None
    for i in failing:
        part = base.filter(rules[i].violates).select(F.lit(i).alias("__rule"), *data_cols) \
            .limit(SAMPLES)
        picked = part if picked is None else picked.unionByName(part)
    for row in picked.collect():
        d = row.asDict()
        out[d.pop("__rule")].append(_mask(
            {c: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
             for c, v in d.items()}, masked))
    return out


@dataclass
class Pending:
    """What one validate step checks; evaluated with its group (consecutive validations)."""

    cfg: Validator
    ctx: StepContext
    rules: list[RowRule]
    dataset_rules: list[DatasetRule]
    schema_errors: list[str]
    finalize: Callable[[list[RuleResult], int | None], None] | None = None
    failure: str | None = None
    """Once evaluated: why this step fails the run (its action is `fail` and a rule broke)."""


@dataclass
class ValidationGroup:
    """Consecutive validate steps, evaluated together in one Spark pass. The runner gives
    each validate step of the group the same group and says whether another validation is
    still to be recorded (`defer`: record this step's rules, evaluate them later); the step
    recorded last evaluates all. `raise_failures`: raise ValidationFailed for the group's
    failing steps (off when the runner reports each step's failure itself)."""

    pending: list[Pending] = field(default_factory=list)
    defer: bool = False
    raise_failures: bool = True


def finish(df: DataFrame, cfg: Validator, ctx: StepContext, rules: list[RowRule],
           schema_errors: list[str] | None = None,
           dataset_rules: list[DatasetRule] | None = None,
           finalize: Callable | None = None) -> DataFrame:
    """Record the step's rules; evaluate now, or later with the rest of its group."""
    if df.isStreaming:
        return per_micro_batch(df, cfg, ctx, rules, schema_errors or [], dataset_rules or [],
                               finalize)
    pending = Pending(cfg, ctx, rules, dataset_rules or [], schema_errors or [], finalize)
    group = ctx.validation if ctx.validation is not None else ValidationGroup()
    group.pending.append(pending)
    ctx.validation = group
    if group.defer:
        return df
    return evaluate(df, group.pending, group.raise_failures)


def evaluate(df: DataFrame, group: list[Pending], raise_failures: bool = True) -> DataFrame:
    """Count every rule of every validation in the group in ONE Spark job (quarantined rows
    are written by that same job), then act: fail, warn, drop or quarantine. Returns the
    rows that go on. A rule only counts rows that earlier drop/quarantine steps kept.
    Samples of violating rows come from one limited query, run only when a rule has
    violations."""
    multi = len(group) > 1
    flags, rules, owner = [], [], []
    removed_before: list[Column | None] = []
    removed: Column | None = None
    for k, p in enumerate(group):
        removed_before.append(removed)
        prefix = f"{p.ctx.op_name or p.ctx.step}:" if multi else ""
        mine = []
        for r in p.rules:
            name = f"__dq_v{len(flags)}"
            verdict = F.coalesce(r.violates, F.lit(False))
            if removed is not None:
                verdict = verdict & ~removed
            flags.append((name, verdict))
            rule = RowRule(prefix + r.name, r.text, F.col(name), r.columns)
            rules.append(rule)
            owner.append(k)
            mine.append(rule)
        if p.cfg.on_failure in ("drop", "quarantine") and mine:
            gone = F.greatest(*[r.violates for r in mine]) if len(mine) > 1 else mine[0].violates
            removed = gone if removed is None else (removed | gone)
    dataset = [(k, r) for k, p in enumerate(group) for r in p.dataset_rules]
    masked = set(group[-1].ctx.mask_columns)
    data_cols = [c for c in df.columns if not c.startswith("__dq_")]
    base = df.withColumns(dict(flags)) if flags else df
    aggs = _aggregates(len(group), removed_before, rules, owner, dataset)
    kept = df if data_cols == df.columns else df.select(*data_cols)
    if removed is not None:
        kept = base.filter(~removed).select(*data_cols)
    quarantined = [k for k, p in enumerate(group) if p.cfg.on_failure == "quarantine"
                   and p.rules]
    agg = None
    if rules or dataset:
        if quarantined:
            agg = _quarantine(base, data_cols, aggs, rules, owner, group, quarantined)
        else:
            agg = base.agg(*aggs).first().asDict()
    rows = agg["__rows"] if agg else None
    counts = [int(agg[f"r{i}"]) for i in range(len(rules))]
    samples = _collect_samples(base, data_cols, rules, counts, masked)
    failures = []
    for k, p in enumerate(group):
        if agg and removed_before[k] is not None:  # the rows this step's rules saw
            rows = agg[f"rows{k}"]
        results = [RuleResult(r.name, r.text, r.columns, counts[i], "", samples[i])
                   for i, r in enumerate(rules) if owner[i] == k]
        for i, (kk, r) in enumerate(dataset):
            if kk == k:
                n, detail = r.judge(agg[f"d{i}"], rows)
                results.append(RuleResult(r.name, r.text, r.columns, n, detail))
        results += [RuleResult("schema", e, (), 1, e) for e in p.schema_errors]
        failing = int(agg[f"f{k}"]) if agg and f"f{k}" in agg else 0
        message = _report(p, results, rows, {r.name for _, r in dataset}, failing)
        if p.finalize:
            p.finalize(results, rows)
        if message and p.cfg.on_failure == "fail" and not p.ctx.metadata["passed"]:
            p.failure = message
            failures.append(message)
    if failures and raise_failures:
        raise ValidationFailed(" ".join(failures))
    return kept


def _aggregates(steps: int, removed_before: list[Column | None], rules: list[RowRule],
                owner: list[int], dataset: list) -> list[Column]:
    """What the group's one pass counts: all rows (`__rows`), the rows each step saw after
    earlier drops (`rows<k>`), each rule's violations (`r<i>`), the rows that broke at least
    one of a step's row rules (`f<k>`: one row may break several), each dataset rule's
    value (`d<i>`)."""
    seen = [~gone if gone is not None else F.lit(True) for gone in removed_before]
    aggs = [F.count(F.lit(1)).alias("__rows")]
    aggs += [F.count(F.when(seen[k], 1)).alias(f"rows{k}")
             for k in range(steps) if removed_before[k] is not None]
    aggs += [F.count(F.when(r.violates, 1)).alias(f"r{i}") for i, r in enumerate(rules)]
    for k in range(steps):
        mine = [r.violates for i, r in enumerate(rules) if owner[i] == k]
        if mine:
            aggs.append(F.count(F.when(F.greatest(*mine) if len(mine) > 1 else mine[0], 1))
                        .alias(f"f{k}"))
    aggs += [r.value(seen[k]).alias(f"d{i}") for i, (k, r) in enumerate(dataset)]
    return aggs


def _quarantine(base: DataFrame, data_cols: list[str], aggs: list[Column],
                rules: list[RowRule], owner: list[int], group: list[Pending],
                quarantined: list[int]) -> dict:
    """One job: count everything (observe) while writing the violating rows of
    the quarantine steps, once each, listing every rule of the group they broke."""
    from pyspark.sql import Observation
    first = group[quarantined[0]]
    ctx = first.ctx
    obs = Observation(f"dq_{ctx.run_id.replace('-', '')[:12]}_{ctx.step}")
    all_broken = flag(rules)
    in_quarantine = F.greatest(*[r.violates for i, r in enumerate(rules)
                                 if owner[i] in quarantined] + [F.lit(False)])
    locations = {k: quarantine_location(group[k].cfg, group[k].ctx) for k in quarantined}
    aggs = [*aggs, F.count(F.when(in_quarantine, 1)).alias("__quarantined")]
    bad = (base.observe(obs, *aggs).filter(in_quarantine)
           .select(*data_cols, all_broken.alias(RULES_COL))
           .withColumn(REASON_COL, F.concat(F.lit("broke: "), F.array_join(RULES_COL, ", ")))
           .withColumn(RUN_COL, F.lit(ctx.run_id))
           .withColumn(TIME_COL, F.lit(datetime.now(UTC)).cast("timestamp")))
    location = locations[quarantined[0]]
    bad.write.format("delta").mode("append").option("mergeSchema", "true").save(location)
    counts = obs.get
    for k in quarantined:
        group[k].ctx.metadata["quarantine_location"] = location
        group[k].ctx.metadata["quarantined_rows"] = int(counts["__quarantined"])
    return counts


def _report(p: Pending, results: list[RuleResult], rows: int | None, dataset: set[str],
            failing_rows: int = 0) -> str | None:
    """Fill the step's metadata and results; warn (one sentence: the samples are in the
    metadata); return the failure message if any. `failing_rows`: rows that broke at least
    one row rule; with the broken dataset and schema rules, what maxViolations bounds."""
    cfg, ctx = p.cfg, p.ctx
    violations = sum(r.violations for r in results)
    failing = failing_rows + sum(r.violations for r in results
                                 if r.name == "schema" or r.name in dataset)
    ok = passes(cfg, failing, rows or 0)
    if rows is not None:
        ctx.metadata["rows"] = rows
    ctx.metadata["failing_rows"] = failing_rows
    ctx.metadata["rule_violations"] = violations
    ctx.metadata["violations"] = {r.name: r.violations for r in results}
    ctx.metadata["passed"] = ok
    ctx.metadata["action"] = cfg.on_failure
    ctx.results = results
    if ok and not violations:
        return None
    parts = []
    for r in (r for r in results if r.violations):
        if r.name == "schema":
            parts.append(r.text)
        elif r.name in dataset:
            parts.append(f"{r.name}: `{r.text}` does not hold ({r.detail})")
        else:
            parts.append(f"{r.name}: {r.violations} of {rows} rows violate `{r.text}`")
    rows_part = f"{failing_rows} of {rows} rows broke a rule" if failing_rows and rows else ""
    message = f"{ctx.method} found problems" + (f" ({rows_part})" if rows_part else "") + \
        ": " + "; ".join(parts) + "."
    if any(r.samples for r in results):
        message += " Samples of the rows are in the step's metadata."
    if not (cfg.on_failure == "fail" and not ok):
        ctx.log.warning(message + f" [action: {cfg.on_failure}]")
    return message
