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
from pipeline_defs.errors import PipelineError
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.registry import step

SAMPLES = 5
RULES_COL, REASON_COL, RUN_COL, TIME_COL = "_dq_rules", "_dq_reason", "_dq_run_id", "_dq_time"
ID_COL = "__dq_row_id"


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


def _sample_aggs(df: DataFrame, i: int, rule: RowRule) -> list[Column]:
    """SAMPLES aggregates that each keep one violating row (by different hash orders of a row
    id), so samples come out of the counting pass itself, in bounded memory."""
    row = F.when(rule.violates, F.struct(*[F.col(c) for c in df.columns]))
    out = []
    for k in range(SAMPLES):
        order = F.when(rule.violates, F.xxhash64(F.col(ID_COL), F.lit(k // 2)))
        agg = F.min_by if k % 2 == 0 else F.max_by
        out.append(agg(row, order).alias(f"s{i}_{k}"))
    return out


def _decode_samples(agg: dict, i: int, masked: set[str]) -> list[dict]:
    seen, out = set(), []
    for k in range(SAMPLES):
        r = agg.get(f"s{i}_{k}")
        if r is None:
            continue
        d = {c: (v if isinstance(v, (int, float, str, bool, type(None))) else str(v))
             for c, v in r.asDict().items()}
        key = repr(sorted(d.items()))
        if key not in seen:
            seen.add(key)
            out.append(_mask(d, masked))
    return out


def quarantine_location(cfg: Validator, ctx: StepContext) -> str:
    if cfg.quarantine_path:
        return cfg.quarantine_path
    root = ctx.options.get("quarantine_root") or "quarantine"
    op = re.sub(r"[^A-Za-z0-9_]+", "_", ctx.op_name or f"step{ctx.step}")
    return f"{root.rstrip('/')}/{re.sub(r'[^A-Za-z0-9_]+', '_', ctx.pipeline)}/{op}"


def _flag(df: DataFrame, rules: list[RowRule]) -> Column:
    return F.array_compact(F.array(*[F.when(r.violates, F.lit(r.name)) for r in rules]))


def _finish(df: DataFrame, cfg: Validator, ctx: StepContext, rules: list[RowRule],
            schema_errors: list[str] | None = None,
            dataset_rules: list[DatasetRule] | None = None) -> DataFrame:
    """Count every rule in one Spark job, then act."""
    dataset_rules = dataset_rules or []
    masked = set(ctx.options.get("mask_columns", ()))
    results: list[RuleResult] = []
    rows = None
    out = df
    # Each rule's verdict is computed once per row, as a column (window rules included).
    flags = [f"__dq_v{i}" for i in range(len(rules))]
    base = df.withColumns({ID_COL: F.monotonically_increasing_id(),
                           **{f: r.violates for f, r in zip(flags, rules)}}) if rules else df
    rules = [RowRule(r.name, r.text, F.col(f), r.columns) for f, r in zip(flags, rules)]
    aggs = [F.count(F.lit(1)).alias("__rows")]
    aggs += [F.count(F.when(r.violates, 1)).alias(f"r{i}") for i, r in enumerate(rules)]
    aggs += [a for i, r in enumerate(rules) for a in _sample_aggs(df, i, r)]
    aggs += [r.value.alias(f"d{i}") for i, r in enumerate(dataset_rules)]
    quarantine = cfg.on_failure == "quarantine" and rules
    if rules or dataset_rules:
        if quarantine:
            # one job: count and sample everything (observe) while writing the violating rows
            from pyspark.sql import Observation
            obs = Observation(f"dq_{ctx.run_id.replace('-', '')[:12]}_{ctx.step}")
            flagged = base.observe(obs, *aggs).withColumn(RULES_COL, _flag(df, rules))
            bad = (flagged.filter(F.size(RULES_COL) > 0).drop(ID_COL, *flags)
                   .withColumn(REASON_COL, F.concat(F.lit("broke: "),
                                                    F.array_join(RULES_COL, ", ")))
                   .withColumn(RUN_COL, F.lit(ctx.run_id))
                   .withColumn(TIME_COL, F.lit(datetime.now(timezone.utc)).cast("timestamp")))
            location = quarantine_location(cfg, ctx)
            bad.write.format("delta").mode("append").option("mergeSchema", "true") \
                .save(location)
            agg = obs.get
            ctx.metadata["quarantine_location"] = location
        else:
            agg = base.agg(*aggs).first().asDict()
        rows = agg["__rows"]
        ctx.metadata["rows"] = rows
        for i, r in enumerate(rules):
            results.append(RuleResult(r.name, r.text, r.columns, int(agg[f"r{i}"]), "",
                                      _decode_samples(agg, i, masked)))
        for i, r in enumerate(dataset_rules):
            n, detail = r.judge(agg[f"d{i}"], rows)
            results.append(RuleResult(r.name, r.text, r.columns, n, detail))
    for e in schema_errors or []:
        results.append(RuleResult("schema", e, (), 1, e))
    violations = sum(r.violations for r in results)
    ok = passes(cfg, violations, rows or 0)
    if cfg.on_failure in ("drop", "quarantine") and rules:
        any_bad = F.greatest(*[r.violates for r in rules]) if len(rules) > 1 else \
            rules[0].violates
        out = base.filter(~F.coalesce(any_bad, F.lit(False))).drop(ID_COL, *flags)
    ctx.metadata["violations"] = {r.name: r.violations for r in results}
    ctx.metadata["passed"] = ok
    ctx.metadata["action"] = cfg.on_failure
    ctx.results = results
    if not ok or violations:
        dataset = {r.name for r in dataset_rules}
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
        if cfg.on_failure == "fail" and not ok:
            raise ValidationFailed(message)
        ctx.log.warning(message + f" [action: {cfg.on_failure}]")
    return out


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


@step("validate", "validateSchema", ValidateSchema)
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


@step("validate", "validateNulls", ValidateNulls)
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


@step("validate", "validateRanges", ValidateRanges)
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


@step("validate", "validateBusinessRules", ValidateBusinessRules)
def validate_business_rules(df: DataFrame, cfg: ValidateBusinessRules, ctx: StepContext
                            ) -> DataFrame:
    rules = [RowRule(f"rule[{i}]", r, ~F.coalesce(F.expr(r), F.lit(False)))
             for i, r in enumerate(cfg.rules)]
    return _finish(df, cfg, ctx, rules)


class ValidateAcceptedValues(Validator):
    """The column only holds these values (nulls are not violations)."""

    column: str = Field(description="Column to check.")
    values: list[str | int | float | bool] = Field(min_length=1, description="Allowed values.")


@step("validate", "validateAcceptedValues", ValidateAcceptedValues)
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


@step("validate", "validateRegex", ValidateRegex)
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
    hit = "__pipeline_ref_hit"
    keys = (ctx.frame(cfg.referenced_data_frame)
            .select(F.col(cfg.referenced_column).alias("__pipeline_ref_key")).distinct()
            .withColumn(hit, F.lit(True)))
    joined = df.join(keys, df[cfg.foreign_key] == keys["__pipeline_ref_key"], "left")
    missing = F.col(cfg.foreign_key).isNotNull() & F.col(hit).isNull()
    if not cfg.allow_nulls:
        missing = missing | F.col(cfg.foreign_key).isNull()
    rule = RowRule(f"references({cfg.foreign_key})",
                   f"{cfg.foreign_key} IN {cfg.referenced_data_frame}.{cfg.referenced_column}",
                   missing, (cfg.foreign_key,))
    out = _finish(joined, cfg, ctx, [rule])
    return out.drop("__pipeline_ref_key", hit)


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
