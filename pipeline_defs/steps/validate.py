"""Validate methods: rules on the current DataFrame, evaluated in one Spark pass per step.

Each validator turns its config into row rules (a boolean "violates" column each) or schema
rules (checked without reading data). One aggregation counts every rule's violations."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from pipeline_defs.config.model import FormatModel, StepModel
from pipeline_defs.errors import PipelineError
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.registry import step


class ValidationFailed(PipelineError):
    """Data broke a validation rule whose action is `fail`."""


@dataclass(frozen=True)
class RowRule:
    name: str  # e.g. "not_null(amount)"
    text: str  # the rule as a person reads it
    violates: Column  # true for a violating row


class Validator(StepModel):
    passes_filters = True  # the rows go on unchanged, so later filters still reach the source
    preserves_rows = True
    on_failure: Literal["fail", "warn"] = Field("fail", description="fail: the run fails and "
                                                "nothing downstream is loaded; warn: log and "
                                                "go on.")


def _finish(df: DataFrame, cfg: Validator, ctx: StepContext, rules: list[RowRule],
            schema_errors: list[str] | None = None) -> DataFrame:
    """Count every rule's violations in one job; act on them."""
    failures = list(schema_errors or [])
    results = {}
    if rules:
        aggs = [F.count(F.lit(1)).alias("__rows")] + [
            F.count(F.when(r.violates, 1)).alias(f"r{i}") for i, r in enumerate(rules)]
        row = df.agg(*aggs).first()
        ctx.metadata["rows"] = row["__rows"]
        for i, r in enumerate(rules):
            n = row[f"r{i}"]
            results[r.name] = n
            if n:
                failures.append(f"{r.name}: {n} of {row['__rows']} rows violate `{r.text}`")
    ctx.metadata["violations"] = results
    ctx.metadata["passed"] = not failures
    if failures:
        message = f"{ctx.method} found problems: " + "; ".join(failures) + "."
        if cfg.on_failure == "fail":
            raise ValidationFailed(message)
        ctx.log.warning(message)
    return df


# ---------------------------------------------------------------- schema
class ExpectedColumn(FormatModel):
    name: str = Field(description="Column name.")
    type: str | None = Field(None, description="Spark type: string, long, int, double, date, "
                                               "timestamp, boolean, decimal(10,2), ...")


_TYPE_ALIASES = {"long": "bigint", "integer": "int", "short": "smallint", "byte": "tinyint",
                 "bool": "boolean", "str": "string", "text": "string", "real": "float",
                 "float64": "double", "int64": "bigint", "int32": "int"}


def normalize_type(name: str) -> str:
    t = name.strip().lower().replace(" ", "")
    return _TYPE_ALIASES.get(t, t)


class ValidateSchema(Validator):
    """The DataFrame has these columns with these types (checked without reading data)."""

    expected_columns: list[ExpectedColumn] = Field(min_length=1, description="[{name, type}]")


@step("validate", "validateSchema", ValidateSchema)
def validate_schema(df: DataFrame, cfg: ValidateSchema, ctx: StepContext) -> DataFrame:
    actual = {f.name: f.dataType.simpleString() for f in df.schema.fields}
    errors = []
    for col in cfg.expected_columns:
        if col.name not in actual:
            errors.append(f"column '{col.name}' is missing")
        elif col.type and normalize_type(col.type) != actual[col.name]:
            errors.append(f"column '{col.name}' is {actual[col.name]}, expected "
                          f"{normalize_type(col.type)}")
    return _finish(df, cfg, ctx, [], errors)


# ---------------------------------------------------------------- row rules
class ValidateNulls(Validator):
    """These columns hold no nulls."""

    not_null_columns: list[str] = Field(min_length=1, description="Columns that must not be "
                                                                  "null.")


@step("validate", "validateNulls", ValidateNulls)
def validate_nulls(df: DataFrame, cfg: ValidateNulls, ctx: StepContext) -> DataFrame:
    rules = [RowRule(f"not_null({c})", f"{c} IS NOT NULL", F.col(c).isNull())
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
            rules.append(RowRule(f"range({c})", " AND ".join(text), F.coalesce(cond, F.lit(False))))
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


class ValidateReferentialIntegrity(Validator):
    """Every non-null foreignKey value exists in referencedDataFrame.referencedColumn."""

    foreign_key: str = Field(description="Column of the current DataFrame.")
    referenced_data_frame: str = Field(description="Registered DataFrame holding the keys.")
    referenced_column: str = Field(description="Key column of the referenced DataFrame.")

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
    rule = RowRule(f"references({cfg.foreign_key})",
                   f"{cfg.foreign_key} IN {cfg.referenced_data_frame}.{cfg.referenced_column}",
                   F.col(cfg.foreign_key).isNotNull() & F.col(hit).isNull())
    _finish(joined, cfg, ctx, [rule])
    return df
