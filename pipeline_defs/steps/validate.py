"""Validate methods: rules on the current DataFrame, with an action when rows break them.

Each validator turns its config into row rules (a boolean "violates" column each), dataset
rules (an aggregate and a test of its value) or schema rules (checked without reading data).
All rules of a step are counted in one Spark job; `onFailure` then decides: fail the run,
warn, drop the violating rows, or quarantine them (written to a Delta table with the rules
they broke) and go on with the good rows."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal

from pydantic import Field
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

from pipeline_defs.config.model import FormatModel, StepModel
from pipeline_defs.errors import PipelineError, UnsupportedError
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.registry import step

SAMPLES = 5
RULES_COL, REASON_COL, RUN_COL, TIME_COL = "_dq_rules", "_dq_reason", "_dq_run_id", "_dq_time"


class ValidationFailed(PipelineError):
    """Data broke a validation rule whose action is `fail`."""


@dataclass(frozen=True)
class RowRule:
    name: str  # e.g. "not_null(amount)"
    text: str  # the rule as a person reads it
    violates: Column  # true for a violating row
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetRule:
    name: str
    text: str
    value: Column  # an aggregate over the whole DataFrame
    judge: Callable[[Any, int], tuple[int, str]]  # (value, rows) -> (violations, detail)
    columns: tuple[str, ...] = ()


@dataclass
class RuleResult:
    name: str
    text: str
    columns: tuple[str, ...]
    violations: int
    detail: str = ""
    samples: list[dict] = field(default_factory=list)


Action = Literal["fail", "warn", "drop", "quarantine"]


class Validator(StepModel):
    on_failure: Action = Field("fail", description="fail: the run fails, nothing downstream is "
                               "loaded; warn: the check fails with WARN and the run goes on; "
                               "drop: violating rows are removed; quarantine: they are written "
                               "to the quarantine table with the rules they broke.")
    max_violations: int | None = Field(None, ge=0, description="Up to this many violating "
                                       "rows still count as a pass.")
    max_violation_fraction: float | None = Field(None, ge=0, le=1, description="Up to this "
                                                 "fraction of rows violating still passes.")
    quarantine_path: str | None = Field(None, description="Delta table for quarantined rows "
                                        "(default <quarantine root>/<pipeline>/<step>).")
    passes_filters = True  # rows go on unchanged or filtered: later filters still reach the source
    row_actions: ClassVar[bool] = True  # drop/quarantine make sense (False: dataset rules)

    def keeps_rows(self) -> bool:
        return self.on_failure in ("fail", "warn")

    def problems(self):
        if self.on_failure in ("drop", "quarantine") and not type(self).row_actions:
            return [("onFailure", f"'{self.on_failure}' needs row rules; this validator "
                     "checks the whole dataset.", "Use fail or warn.")]
        return []


def passes(cfg: Validator, violations: int, rows: int) -> bool:
    if violations == 0:
        return True
    if cfg.max_violations is not None and violations <= cfg.max_violations:
        return True
    return bool(cfg.max_violation_fraction is not None and rows and
                violations / rows <= cfg.max_violation_fraction)


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


def quarantine_location(cfg: Validator, ctx: StepContext) -> str:
    if cfg.quarantine_path:
        return cfg.quarantine_path
    root = ctx.options.get("quarantine_root") or "quarantine"
    op = re.sub(r"[^A-Za-z0-9_]+", "_", ctx.op_name or f"step{ctx.step}")
    return f"{root.rstrip('/')}/{re.sub(r'[^A-Za-z0-9_]+', '_', ctx.pipeline)}/{op}"


def _flag(rules: list[RowRule]) -> Column:
    return F.array_compact(F.array(*[F.when(r.violates, F.lit(r.name)) for r in rules]))


@dataclass
class Pending:
    """What one validate step checks; evaluated with its group (consecutive validations)."""

    cfg: Validator
    ctx: StepContext
    rules: list[RowRule]
    dataset_rules: list[DatasetRule]
    schema_errors: list[str]
    finalize: Callable[[list[RuleResult], int | None], None] | None = None


def _finish(df: DataFrame, cfg: Validator, ctx: StepContext, rules: list[RowRule],
            schema_errors: list[str] | None = None,
            dataset_rules: list[DatasetRule] | None = None,
            finalize: Callable | None = None) -> DataFrame:
    """Record the step's rules; evaluate now, or later with the rest of its group when the
    runner says the next step is a validation too (ctx.options["defer_validation"])."""
    if df.isStreaming:
        return _per_micro_batch(df, cfg, ctx, rules, schema_errors or [], dataset_rules or [],
                                finalize)
    pending = Pending(cfg, ctx, rules, dataset_rules or [], schema_errors or [], finalize)
    group = list(ctx.options.get("pending_validations", [])) + [pending]
    ctx.options["pending_validations"] = group
    if ctx.options.get("defer_validation"):
        return df
    return evaluate(df, group)


def _per_micro_batch(df: DataFrame, cfg: Validator, ctx: StepContext, rules: list[RowRule],
                     schema_errors: list[str], dataset_rules: list, finalize) -> DataFrame:
    """A validation inside a stream: its row rules apply to every row of every micro-batch.
    fail stops the query (and the run) at the first violating row; warn counts violations
    per micro-batch (logged by the run's stream watcher); drop filters; quarantine writes the
    violating rows to the quarantine Delta table by a query of their own."""
    from pipeline_defs.steps import streaming
    if dataset_rules or finalize:  # the load-time check refuses such files: a product bug
        raise UnsupportedError(f"{ctx.method} has dataset rules, which a stream never has.")
    if schema_errors:
        msg = "; ".join(schema_errors)
        if cfg.on_failure == "fail":
            raise ValidationFailed(f"{ctx.method}: {msg}")
        ctx.log.warning(f"{ctx.method}: {msg}")
    if not rules:
        return df
    broken = F.greatest(*[F.coalesce(r.violates, F.lit(False)) for r in rules]) \
        if len(rules) > 1 else F.coalesce(rules[0].violates, F.lit(False))
    ctx.metadata["rules"] = [r.text for r in rules]
    if cfg.on_failure == "fail":
        return df.filter(F.when(broken, F.raise_error(F.concat(
            F.lit(f"{ctx.method} (step {ctx.step}) failed: a row broke "),
            F.array_join(_flag(rules), ", ")))).otherwise(F.lit(True)))
    if cfg.on_failure == "warn":
        metric = f"dq_step{ctx.step}"
        ctx.metadata["observed_metric"] = metric
        return df.observe(metric, F.count(F.lit(1)).alias("rows"),
                          *[F.count(F.when(r.violates, 1)).alias(r.name) for r in rules])
    if cfg.on_failure == "quarantine":
        location = quarantine_location(cfg, ctx)
        bad = (df.filter(broken).withColumn(RULES_COL, _flag(rules))
               .withColumn(REASON_COL, F.concat(F.lit("broke: "), F.array_join(RULES_COL, ", ")))
               .withColumn(RUN_COL, F.lit(ctx.run_id))
               .withColumn(TIME_COL, F.current_timestamp()))
        settings = ctx.options["streaming_settings"]
        q = (bad.writeStream.queryName(f"{ctx.pipeline}.quarantine.s{ctx.step}.{ctx.run_id[:8]}")
             .format("delta").option("mergeSchema", "true")
             .option("checkpointLocation", streaming.checkpoint_for(None, ctx, settings)
                     + "_quarantine")
             .trigger(**(streaming.trigger_kwargs(settings.trigger) or {}))
             .start(location))
        streaming.register(ctx.run_id, q, ctx.step, f"quarantine of step {ctx.step}")
        ctx.metadata["quarantine_location"] = location
    return df.filter(~broken)


def evaluate(df: DataFrame, group: list[Pending]) -> DataFrame:
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
    masked = set(group[-1].ctx.options.get("mask_columns", ()))
    data_cols = [c for c in df.columns if not c.startswith("__dq_")]
    base = df.withColumns(dict(flags)) if flags else df
    aggs = [F.count(F.lit(1)).alias("__rows")]
    aggs += [F.count(F.when(r.violates, 1)).alias(f"r{i}") for i, r in enumerate(rules)]
    aggs += [r.value.alias(f"d{i}") for i, (_, r) in enumerate(dataset)]
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
        results = [RuleResult(r.name, r.text, r.columns, counts[i], "", samples[i])
                   for i, r in enumerate(rules) if owner[i] == k]
        for i, (kk, r) in enumerate(dataset):
            if kk == k:
                n, detail = r.judge(agg[f"d{i}"], rows)
                results.append(RuleResult(r.name, r.text, r.columns, n, detail))
        results += [RuleResult("schema", e, (), 1, e) for e in p.schema_errors]
        message = _report(p, results, rows, {r.name for _, r in dataset})
        if p.finalize:
            p.finalize(results, rows)
        if message and p.cfg.on_failure == "fail" and not p.ctx.metadata["passed"]:
            failures.append(message)
    if failures:
        raise ValidationFailed(" ".join(failures))
    return kept


def _quarantine(base: DataFrame, data_cols: list[str], aggs: list[Column],
                rules: list[RowRule], owner: list[int], group: list[Pending],
                quarantined: list[int]) -> dict:
    """One job: count everything (observe) while writing the violating rows of
    the quarantine steps, once each, listing every rule of the group they broke."""
    from pyspark.sql import Observation
    first = group[quarantined[0]]
    ctx = first.ctx
    obs = Observation(f"dq_{ctx.run_id.replace('-', '')[:12]}_{ctx.step}")
    all_broken = _flag(rules)
    in_quarantine = F.greatest(*[r.violates for i, r in enumerate(rules)
                                 if owner[i] in quarantined] + [F.lit(False)])
    locations = {k: quarantine_location(group[k].cfg, group[k].ctx) for k in quarantined}
    bad = (base.observe(obs, *aggs).filter(in_quarantine)
           .select(*data_cols, all_broken.alias(RULES_COL))
           .withColumn(REASON_COL, F.concat(F.lit("broke: "), F.array_join(RULES_COL, ", ")))
           .withColumn(RUN_COL, F.lit(ctx.run_id))
           .withColumn(TIME_COL, F.lit(datetime.now(timezone.utc)).cast("timestamp")))
    location = locations[quarantined[0]]
    bad.write.format("delta").mode("append").option("mergeSchema", "true").save(location)
    for k in quarantined:
        group[k].ctx.metadata["quarantine_location"] = location
    return obs.get


def _report(p: Pending, results: list[RuleResult], rows: int | None, dataset: set[str]
            ) -> str | None:
    """Fill the step's metadata and results; warn; return the failure message if any."""
    cfg, ctx = p.cfg, p.ctx
    violations = sum(r.violations for r in results)
    ok = passes(cfg, violations, rows or 0)
    if rows is not None:
        ctx.metadata["rows"] = rows
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
    message = f"{ctx.method} found problems: " + "; ".join(parts) + "."
    samples = [f"{r.name}: {r.samples[:SAMPLES]}" for r in results if r.samples]
    if samples:
        message += " Samples: " + "; ".join(samples) + "."
    if not (cfg.on_failure == "fail" and not ok):
        ctx.log.warning(message + f" [action: {cfg.on_failure}]")
    return message


# ---------------------------------------------------------------- schema
class ExpectedColumn(FormatModel):
    name: str = Field(description="Column name.")
    type: str | None = Field(None, description="Spark type: string, long, int, double, date, "
                                               "timestamp, boolean, decimal(10,2), ...")
    nullable: bool = Field(True, description="evolve mode: a missing nullable column is added "
                                             "as nulls.")


_TYPE_ALIASES = {"long": "bigint", "integer": "int", "short": "smallint", "byte": "tinyint",
                 "bool": "boolean", "str": "string", "text": "string", "real": "float",
                 "float64": "double", "int64": "bigint", "int32": "int"}
_WIDER = {("tinyint", "smallint"), ("tinyint", "int"), ("tinyint", "bigint"),
          ("smallint", "int"), ("smallint", "bigint"), ("int", "bigint"), ("float", "double"),
          ("int", "double"), ("smallint", "double"), ("tinyint", "double"),
          ("date", "timestamp")}


def normalize_type(name: str) -> str:
    t = name.strip().lower().replace(" ", "")
    return _TYPE_ALIASES.get(t, t)


class ValidateSchema(Validator):
    """The DataFrame has these columns with these types (checked without reading data).
    Modes: strict (exactly these), lenient (allowExtraColumns / allowMissingColumns), evolve
    (missing nullable columns added as nulls, types widened where safe)."""

    expected_columns: list[ExpectedColumn] = Field(min_length=1, description="[{name, type}]")
    mode: Literal["strict", "lenient", "evolve"] = Field(
        "lenient", description="strict, lenient or evolve.")
    allow_extra_columns: bool = Field(True, description="lenient: columns beyond the expected "
                                                        "ones are fine.")
    allow_missing_columns: bool = Field(False, description="lenient: expected columns may be "
                                                           "absent.")
    row_actions = False


@step("validate", "validateSchema", ValidateSchema, streams=True)
def validate_schema(df: DataFrame, cfg: ValidateSchema, ctx: StepContext) -> DataFrame:
    actual = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    expected = {c.name: c for c in cfg.expected_columns}
    errors, added, widened = [], [], []
    for col in cfg.expected_columns:
        want = normalize_type(col.type) if col.type else None
        if col.name not in actual:
            if cfg.mode == "evolve" and col.nullable and want:
                df = df.withColumn(col.name, F.lit(None).cast(want))
                added.append(col.name)
            elif not (cfg.mode == "lenient" and cfg.allow_missing_columns):
                errors.append(f"column '{col.name}' is missing")
        elif want and want != actual[col.name]:
            if cfg.mode == "evolve" and (actual[col.name], want) in _WIDER:
                df = df.withColumn(col.name, F.col(col.name).cast(want))
                widened.append(f"{col.name}: {actual[col.name]} -> {want}")
            else:
                errors.append(f"column '{col.name}' is {actual[col.name]}, expected {want}")
    extra = [c for c in actual if c not in expected]
    if extra and (cfg.mode == "strict" or (cfg.mode == "lenient" and
                                           not cfg.allow_extra_columns)):
        errors.append(f"unexpected columns {', '.join(extra)}")
    if cfg.mode == "strict" and not errors:
        order = [c.name for c in cfg.expected_columns]
        if [c for c in actual if c in expected] != order:
            errors.append(f"columns are in the order {', '.join(actual)}, expected "
                          f"{', '.join(order)}")
    ctx.metadata.update(added_columns=added, widened_columns=widened)
    return _finish(df, cfg, ctx, [], errors)


# ---------------------------------------------------------------- row rules
class ValidateNulls(Validator):
    """These columns hold no nulls."""

    not_null_columns: list[str] = Field(min_length=1, description="Columns that must not be "
                                                                  "null.")


@step("validate", "validateNulls", ValidateNulls, streams=True)
def validate_nulls(df: DataFrame, cfg: ValidateNulls, ctx: StepContext) -> DataFrame:
    rules = [RowRule(f"not_null({c})", f"{c} IS NOT NULL", F.col(c).isNull(), (c,))
             for c in cfg.not_null_columns]
    return _finish(df, cfg, ctx, rules)


class Range(FormatModel):
    min: float | None = Field(None, description="Smallest allowed value (inclusive).")
    max: float | None = Field(None, description="Largest allowed value (inclusive).")


class ValidateRanges(Validator):
    """Values lie within [min, max]; nulls are not range violations."""

    ranges: dict[str, Range] = Field(min_length=1, description="{column: {min, max}}")


@step("validate", "validateRanges", ValidateRanges, streams=True)
def validate_ranges(df: DataFrame, cfg: ValidateRanges, ctx: StepContext) -> DataFrame:
    rules = []
    for c, r in cfg.ranges.items():
        parts, text = [], []
        if r.min is not None:
            parts.append(F.col(c) < F.lit(r.min))
            text.append(f"{c} >= {r.min:g}")
        if r.max is not None:
            parts.append(F.col(c) > F.lit(r.max))
            text.append(f"{c} <= {r.max:g}")
        if parts:
            cond = parts[0] if len(parts) == 1 else parts[0] | parts[1]
            rules.append(RowRule(f"range({c})", " AND ".join(text),
                                 F.coalesce(cond, F.lit(False)), (c,)))
    return _finish(df, cfg, ctx, rules)


class ValidateBusinessRules(Validator):
    """Every row satisfies each SQL boolean expression (a null result counts as a violation)."""

    rules: list[str] = Field(min_length=1, description="SQL boolean expressions, e.g. "
                                                       "\"amount > 0\".")


@step("validate", "validateBusinessRules", ValidateBusinessRules, streams=True)
def validate_business_rules(df: DataFrame, cfg: ValidateBusinessRules, ctx: StepContext
                            ) -> DataFrame:
    rules = [RowRule(f"rule[{i}]", r, ~F.coalesce(F.expr(r), F.lit(False)))
             for i, r in enumerate(cfg.rules)]
    return _finish(df, cfg, ctx, rules)


class ValidateAcceptedValues(Validator):
    """The column only holds these values (nulls are not violations)."""

    column: str = Field(description="Column to check.")
    values: list[str | int | float | bool] = Field(min_length=1, description="Allowed values.")


@step("validate", "validateAcceptedValues", ValidateAcceptedValues, streams=True)
def validate_accepted_values(df: DataFrame, cfg: ValidateAcceptedValues, ctx: StepContext
                             ) -> DataFrame:
    rule = RowRule(f"accepted_values({cfg.column})", f"{cfg.column} IN {tuple(cfg.values)}",
                   F.coalesce(~F.col(cfg.column).isin(list(cfg.values)), F.lit(False)),
                   (cfg.column,))
    return _finish(df, cfg, ctx, [rule])


class ValidateRegex(Validator):
    """The column's text matches a Java regular expression (nulls are not violations)."""

    column: str = Field(description="Column to check.")
    pattern: str = Field(description="Java regex the whole value must match, e.g. "
                                     "\"[^@]+@[^@]+\".")

    def problems(self):
        try:
            re.compile(self.pattern)
        except re.error as e:
            return [("pattern", f"is not a valid regular expression: {e}.", "Fix the pattern.")]
        return super().problems()


@step("validate", "validateRegex", ValidateRegex, streams=True)
def validate_regex(df: DataFrame, cfg: ValidateRegex, ctx: StepContext) -> DataFrame:
    anchored = f"^(?:{cfg.pattern})$"
    rule = RowRule(f"regex({cfg.column})", f"{cfg.column} matches {cfg.pattern}",
                   F.coalesce(~F.col(cfg.column).cast("string").rlike(anchored), F.lit(False)),
                   (cfg.column,))
    return _finish(df, cfg, ctx, [rule])


class ValidateUnique(Validator):
    """No two rows share these columns (a composite key when several); every row of a
    duplicated key violates."""

    columns: list[str] = Field(min_length=1, description="Key column(s).")


@step("validate", "validateUnique", ValidateUnique)
def validate_unique(df: DataFrame, cfg: ValidateUnique, ctx: StepContext) -> DataFrame:
    dup = F.count(F.lit(1)).over(Window.partitionBy(*cfg.columns)) > 1
    rule = RowRule(f"unique({', '.join(cfg.columns)})", f"({', '.join(cfg.columns)}) is "
                   "unique", dup, tuple(cfg.columns))
    return _finish(df, cfg, ctx, [rule])


class ValidateReferentialIntegrity(Validator):
    """Every foreignKey value exists in referencedDataFrame.referencedColumn. NULL keys are
    not violations (SQL semantics) unless allowNulls is false."""

    foreign_key: str = Field(description="Column of the current DataFrame.")
    referenced_data_frame: str = Field(description="Registered DataFrame holding the keys.")
    referenced_column: str = Field(description="Key column of the referenced DataFrame.")
    allow_nulls: bool = Field(True, description="false: a NULL foreign key is a violation.")

    def named_inputs(self, registered=()):
        return [("referencedDataFrame", self.referenced_data_frame)]


@step("validate", "validateReferentialIntegrity", ValidateReferentialIntegrity)
def validate_referential_integrity(df: DataFrame, cfg: ValidateReferentialIntegrity,
                                   ctx: StepContext) -> DataFrame:
    key, hit = f"__dq_ref_key_{ctx.step}", f"__dq_ref_hit_{ctx.step}"
    keys = (ctx.frame(cfg.referenced_data_frame)
            .select(F.col(cfg.referenced_column).alias(key)).distinct()
            .withColumn(hit, F.lit(True)))
    joined = df.join(keys, df[cfg.foreign_key] == keys[key], "left")
    missing = F.col(cfg.foreign_key).isNotNull() & F.col(hit).isNull()
    if not cfg.allow_nulls:
        missing = missing | F.col(cfg.foreign_key).isNull()
    rule = RowRule(f"references({cfg.foreign_key})",
                   f"{cfg.foreign_key} IN {cfg.referenced_data_frame}.{cfg.referenced_column}",
                   missing, (cfg.foreign_key,))
    return _finish(joined, cfg, ctx, [rule])  # helper columns go when the group is evaluated


# ---------------------------------------------------------------- dataset rules
class ValidateRowCount(Validator):
    """The number of rows lies within [min, max]."""

    min: int | None = Field(None, ge=0, description="Fewest rows allowed.")
    max: int | None = Field(None, ge=0, description="Most rows allowed.")
    row_actions = False


@step("validate", "validateRowCount", ValidateRowCount)
def validate_row_count(df: DataFrame, cfg: ValidateRowCount, ctx: StepContext) -> DataFrame:
    def judge(n, rows):
        if cfg.min is not None and n < cfg.min:
            return 1, f"{n} rows, fewer than {cfg.min}"
        if cfg.max is not None and n > cfg.max:
            return 1, f"{n} rows, more than {cfg.max}"
        return 0, f"{n} rows"
    text = " AND ".join(t for t in (f"rows >= {cfg.min}" if cfg.min is not None else "",
                                    f"rows <= {cfg.max}" if cfg.max is not None else "") if t)
    return _finish(df, cfg, ctx, [], None, [DatasetRule("row_count", text or "any",
                                                        F.count(F.lit(1)), judge)])


_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600,
          "hour": 3600, "d": 86400, "day": 86400, "w": 604800, "week": 604800}


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+?)s?\s*", text.lower())
    if not m or m.group(2) not in _UNITS:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


class ValidateFreshness(Validator):
    """The newest value of a timestamp column is at most maxAge old."""

    column: str = Field(description="Timestamp (or date) column.")
    max_age: str = Field(description="e.g. \"24 hours\", \"30 minutes\", \"2 days\".")
    row_actions = False

    def problems(self):
        try:
            parse_duration(self.max_age)
        except ValueError:
            return [("maxAge", f"'{self.max_age}' is not a duration.",
                     "Write it as \"<number> <seconds|minutes|hours|days|weeks>\".")]
        return super().problems()


@step("validate", "validateFreshness", ValidateFreshness)
def validate_freshness(df: DataFrame, cfg: ValidateFreshness, ctx: StepContext) -> DataFrame:
    limit = parse_duration(cfg.max_age)

    def judge(newest, rows):
        if newest is None:
            return 1, "no timestamp at all"
        if not isinstance(newest, datetime):
            newest = datetime.combine(newest, datetime.min.time())
        if newest.tzinfo is None:
            newest = newest.replace(tzinfo=timezone.utc)
        age = (datetime.now(timezone.utc) - newest).total_seconds()
        return (1 if age > limit else 0), f"newest {newest.isoformat()}, {age / 3600:.1f} h old"
    rule = DatasetRule(f"freshness({cfg.column})", f"max({cfg.column}) >= now - {cfg.max_age}",
                       F.max(F.col(cfg.column).cast("timestamp")), judge, (cfg.column,))
    return _finish(df, cfg, ctx, [], None, [rule])


# ---------------------------------------------------------------- anomalies
class DetectAnomalies(Validator):
    """Per-row outliers of a numeric column, by z-score (|x - mean| / stddev > threshold) or
    IQR (outside [q1 - threshold*IQR, q3 + threshold*IQR]). The statistics take one Spark
    pass; the rows are then judged like any validation (flag adds a boolean column)."""

    column: str = Field(description="Numeric column.")
    method: Literal["zscore", "iqr"] = Field("zscore", description="zscore or iqr.")
    threshold: float | None = Field(None, gt=0, description="z-score limit (default 3) or IQR "
                                    "multiplier (default 1.5).")
    on_failure: Literal["flag", "warn", "drop", "quarantine", "fail"] = Field(
        "flag", description="flag: add a boolean column and go on; or as for validators.")
    flag_column: str | None = Field(None, description="Name of the flag column (default "
                                    "<column>_is_anomaly).")

    def keeps_rows(self) -> bool:
        return self.on_failure in ("flag", "warn", "fail")


@step("validate", "detectAnomalies", DetectAnomalies)
def detect_anomalies(df: DataFrame, cfg: DetectAnomalies, ctx: StepContext) -> DataFrame:
    x = F.col(cfg.column).cast("double")
    if cfg.method == "zscore":
        limit = cfg.threshold or 3.0
        stats = df.agg(F.mean(x).alias("m"), F.stddev(x).alias("s")).first()
        mean, sd = stats["m"], stats["s"]
        ctx.metadata.update(mean=mean, stddev=sd)
        outlier = (F.abs(x - F.lit(mean)) / F.lit(sd)) > F.lit(limit) if sd else F.lit(False)
        text = f"|{cfg.column} - {mean:.6g}| / {sd or 0:.6g} <= {limit:g}"
    else:
        k = cfg.threshold or 1.5
        q1, q3 = df.agg(F.percentile_approx(x, [0.25, 0.75], 10000)).first()[0] or (None, None)
        lo, hi = (q1 - k * (q3 - q1), q3 + k * (q3 - q1)) if q1 is not None else (None, None)
        ctx.metadata.update(q1=q1, q3=q3, lower=lo, upper=hi)
        outlier = ((x < F.lit(lo)) | (x > F.lit(hi))) if lo is not None else F.lit(False)
        text = f"{cfg.column} within [{lo:.6g}, {hi:.6g}]" if lo is not None else "no data"
    outlier = F.coalesce(outlier, F.lit(False))
    if cfg.on_failure == "flag":
        df = df.withColumn(cfg.flag_column or f"{cfg.column}_is_anomaly", outlier)
    rule = RowRule(f"anomaly({cfg.column})", text, outlier, (cfg.column,))
    return _finish(df, cfg, ctx, [rule])


# ---------------------------------------------------------------- metrics history
class ValidateMetricsHistory(Validator):
    """Compare this run's row count and null fractions with the last runs of the same
    pipeline step (z-score); the history is a Delta table, so it survives restarts."""

    columns: list[str] | None = Field(None, description="Columns whose null fraction is "
                                      "tracked (default all).")
    lookback: int = Field(10, ge=2, description="How many earlier passing runs to compare "
                                                "with.")
    min_runs: int = Field(3, ge=2, description="Judge only once this many runs are recorded.")
    threshold: float = Field(3.0, gt=0, description="Largest z-score that still passes.")
    history_path: str | None = Field(None, description="Delta table of metrics (default "
                                     "<quarantine root>/_metrics_history).")
    row_actions = False


def _zscore(value: float, history: list[float]) -> float:
    mean = sum(history) / len(history)
    var = sum((h - mean) ** 2 for h in history) / (len(history) - 1)
    if var == 0:
        return 0.0 if value == mean else float("inf")
    return abs(value - mean) / var ** 0.5


@step("validate", "validateMetricsHistory", ValidateMetricsHistory)
def validate_metrics_history(df: DataFrame, cfg: ValidateMetricsHistory, ctx: StepContext
                             ) -> DataFrame:
    path = cfg.history_path or \
        f"{(ctx.options.get('quarantine_root') or 'quarantine').rstrip('/')}/_metrics_history"
    step_id = ctx.op_name or str(ctx.step)
    spark = ctx.spark
    past: dict[str, list[float]] = {}
    from delta.tables import DeltaTable
    if DeltaTable.isDeltaTable(spark, path):
        recent = (spark.read.format("delta").load(path)
                  .filter((F.col("pipeline") == ctx.pipeline) & (F.col("step") == step_id) &
                          F.col("passed")).select("run_id", "recorded_at").distinct()
                  .orderBy(F.col("recorded_at").desc()).limit(cfg.lookback))
        rows = (spark.read.format("delta").load(path)
                .filter((F.col("pipeline") == ctx.pipeline) & (F.col("step") == step_id))
                .join(recent.select("run_id"), "run_id").collect())
        for r in rows:
            past.setdefault(r.metric, []).append(r.value)
    cols = cfg.columns or df.columns

    def judge_for(metric: str):
        def judge(value, rows):
            current = float(value) if metric == "row_count" else \
                (float(value) / rows if rows else 0.0)
            seen = past.get(metric, [])
            if len(seen) < cfg.min_runs:
                return 0, f"{metric} = {current:.6g}; {len(seen)} earlier runs, judging from " \
                          f"{cfg.min_runs}"
            z = _zscore(current, seen)
            mean = sum(seen) / len(seen)
            return (1 if z > cfg.threshold else 0), \
                f"{metric} = {current:.6g} vs mean {mean:.6g} of {len(seen)} runs, z = {z:.2f}"
        return judge

    rules = [DatasetRule("row_count", f"row count within {cfg.threshold:g} sd of history",
                         F.count(F.lit(1)), judge_for("row_count"))]
    rules += [DatasetRule(f"null_fraction({c})", f"null fraction of {c} within "
                          f"{cfg.threshold:g} sd of history",
                          F.count(F.when(F.col(c).isNull(), 1)), judge_for(f"null_fraction({c})"),
                          (c,)) for c in cols]

    def record(results: list[RuleResult], rows: int | None) -> None:
        passed = bool(ctx.metadata.get("passed"))
        now = datetime.now(timezone.utc)
        values = [("row_count", float(rows or 0))]
        for r in results:
            if r.name.startswith("null_fraction("):
                frac = float(r.detail.split(" = ", 1)[1].split(" ", 1)[0].rstrip(";"))
                values.append((r.name, frac))
        spark.createDataFrame(
            [(ctx.pipeline, step_id, ctx.run_id, now, m, v, passed) for m, v in values],
            "pipeline string, step string, run_id string, recorded_at timestamp, "
            "metric string, value double, passed boolean") \
            .write.format("delta").mode("append").save(path)
        ctx.metadata["history_location"] = path

    return _finish(df, cfg, ctx, [], None, rules, record)
