"""Validators of rows and schemas: each row is judged on its own (they also run per
micro-batch of a stream), except uniqueness and referential integrity, which compare rows."""
from __future__ import annotations

import json
import re
from typing import Any, ClassVar, Literal

from pydantic import Field
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StructType
from pyspark.sql.window import Window

from pipeline_defs.config.model import FormatModel, exactly_one
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.registry import step
from pipeline_defs.steps.validate.engine import finish
from pipeline_defs.steps.validate.rules import RowRule, Validator


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
    """A type as Spark's simpleString writes it, in lower case, with the common aliases
    (long, integer, text, ...) replaced, also inside array/map/struct types."""
    t = name.strip().lower().replace(" ", "")
    return re.sub(r"\b[a-z][a-z0-9_]*\b(?!:)",  # a word before ':' is a struct field's name
                  lambda m: _TYPE_ALIASES.get(m.group(), m.group()), t)


def _top_level(text: str, sep: str = ",") -> list[str]:
    """`text` split at `sep` outside <>, () and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, c in enumerate(text):
        if quote:
            quote = "" if c == quote else quote
        elif c in "'`\"":
            quote = c
        elif c in "<(":
            depth += 1
        elif c in ">)":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


_DDL_COLUMN = re.compile(r"^(`(?:[^`]|``)+`|[A-Za-z_][\w$]*)\s*:?\s+(.+?)"
                         r"(\s+NOT\s+NULL)?(\s+COMMENT\s+'(?:[^'\\]|\\.)*')?$",
                         re.IGNORECASE | re.DOTALL)


def ddl_columns(ddl: str) -> list[ExpectedColumn]:
    """Columns of a DDL schema string: "id BIGINT NOT NULL, amount DECIMAL(10,2)"."""
    out = []
    for part in _top_level(ddl):
        m = _DDL_COLUMN.match(part)
        if not part or m is None:
            raise ValueError(f"'{part}' is not \"name TYPE\" (e.g. \"id BIGINT NOT NULL\")")
        name = m.group(1)[1:-1].replace("``", "`") if m.group(1)[0] == "`" else m.group(1)
        if m.group(2).count("<") != m.group(2).count(">") or \
                m.group(2).count("(") != m.group(2).count(")"):
            raise ValueError(f"the type of '{name}' is unbalanced: {m.group(2)}")
        out.append(ExpectedColumn(name=name, type=m.group(2), nullable=m.group(3) is None))
    return out


def schema_columns(schema: dict | str) -> list[ExpectedColumn]:
    """Columns of Spark's JSON schema form (an object, or that JSON as a string) or DDL."""
    if isinstance(schema, str) and schema.lstrip().startswith("{"):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as e:
            raise ValueError(f"is not valid JSON: {e}") from None
    if isinstance(schema, str):
        return ddl_columns(schema)
    try:
        struct = StructType.fromJson(schema)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError("is not Spark's JSON schema form ({\"type\": \"struct\", "
                         f"\"fields\": [{{\"name\", \"type\", \"nullable\"}}]}}): {e}"
                         ) from None
    return [ExpectedColumn(name=f.name, type=f.dataType.simpleString(), nullable=f.nullable)
            for f in struct.fields]


class ValidateSchema(Validator):
    """The DataFrame has these columns with these types (checked without reading data).
    Modes: strict (exactly these), lenient (allowExtraColumns / allowMissingColumns), evolve
    (missing nullable columns added as nulls, types widened where safe)."""

    expected_columns: list[ExpectedColumn] | None = Field(
        None, min_length=1, description="[{name, type}] (or expectedSchema).")
    expected_schema: dict[str, Any] | str | None = Field(
        None, description="The expected schema instead of expectedColumns: Spark's JSON form "
        "(df.schema.json(): {\"type\": \"struct\", \"fields\": [{\"name\", \"type\", "
        "\"nullable\"}]}, as an object or a string) or a DDL string (\"id BIGINT NOT NULL, "
        "amount DECIMAL(10,2)\"). Its nullability counts as expectedColumns' nullable.")
    mode: Literal["strict", "lenient", "evolve"] = Field(
        "lenient", description="strict, lenient or evolve.")
    allow_extra_columns: bool = Field(True, description="lenient: columns beyond the expected "
                                                        "ones are fine.")
    allow_missing_columns: bool = Field(False, description="lenient: expected columns may be "
                                                           "absent.")
    row_actions = False

    def columns(self) -> list[ExpectedColumn]:
        return self.expected_columns or schema_columns(self.expected_schema)

    def problems(self):
        out = exactly_one(self, "expected_columns", "expected_schema",
                          "Give the columns as expectedColumns [{name, type}] or as "
                          "expectedSchema (Spark's JSON schema or a DDL string).")
        if self.expected_schema is not None:
            try:
                if not self.columns():
                    raise ValueError("has no columns")
            except ValueError as e:
                out.append(("expectedSchema", f"{e}.", "Write it as DDL (\"id BIGINT, name "
                            "STRING\") or as Spark's JSON form (df.schema.json())."))
        return out + super().problems()


@step("validate", "validateSchema", ValidateSchema, row_level=True)
def validate_schema(df: DataFrame, cfg: ValidateSchema, ctx: StepContext) -> DataFrame:
    actual = {f.name: normalize_type(f.dataType.simpleString()) for f in df.schema.fields}
    columns = cfg.columns()
    expected = {c.name: c for c in columns}
    errors, added, widened = [], [], []
    for col in columns:
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
        order = [c.name for c in columns]
        if [c for c in actual if c in expected] != order:
            errors.append(f"columns are in the order {', '.join(actual)}, expected "
                          f"{', '.join(order)}")
    ctx.metadata.update(added_columns=added, widened_columns=widened)
    return finish(df, cfg, ctx, [], errors)


# ---------------------------------------------------------------- row rules
class ValidateNulls(Validator):
    """These columns hold no nulls."""

    not_null_columns: list[str] = Field(min_length=1, description="Columns that must not be "
                                                                  "null.")


@step("validate", "validateNulls", ValidateNulls, row_level=True)
def validate_nulls(df: DataFrame, cfg: ValidateNulls, ctx: StepContext) -> DataFrame:
    rules = [RowRule(f"not_null({c})", f"{c} IS NOT NULL", F.col(c).isNull(), (c,))
             for c in cfg.not_null_columns]
    return finish(df, cfg, ctx, rules)


class Range(FormatModel):
    min: float | None = Field(None, description="Smallest allowed value (inclusive).")
    max: float | None = Field(None, description="Largest allowed value (inclusive).")


class ValidateRanges(Validator):
    """Values lie within [min, max]; nulls are not range violations."""

    ranges: dict[str, Range] = Field(min_length=1, description="{column: {min, max}}")


@step("validate", "validateRanges", ValidateRanges, row_level=True)
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
    return finish(df, cfg, ctx, rules)


class ValidateBusinessRules(Validator):
    """Every row satisfies each SQL boolean expression (a null result counts as a violation)."""
    sql_fields: ClassVar[frozenset[str]] = frozenset({"rules"})  # SQL text

    rules: list[str] = Field(min_length=1, description="SQL boolean expressions, e.g. "
                                                       "\"amount > 0\".")


@step("validate", "validateBusinessRules", ValidateBusinessRules, row_level=True)
def validate_business_rules(df: DataFrame, cfg: ValidateBusinessRules, ctx: StepContext
                            ) -> DataFrame:
    rules = [RowRule(f"rule[{i}]", r, ~F.coalesce(F.expr(r), F.lit(False)))
             for i, r in enumerate(cfg.rules)]
    return finish(df, cfg, ctx, rules)


class ValidateAcceptedValues(Validator):
    """The column only holds these values (nulls are not violations)."""

    column: str = Field(description="Column to check.")
    values: list[str | int | float | bool] = Field(min_length=1, description="Allowed values.")


@step("validate", "validateAcceptedValues", ValidateAcceptedValues, row_level=True)
def validate_accepted_values(df: DataFrame, cfg: ValidateAcceptedValues, ctx: StepContext
                             ) -> DataFrame:
    rule = RowRule(f"accepted_values({cfg.column})", f"{cfg.column} IN {tuple(cfg.values)}",
                   F.coalesce(~F.col(cfg.column).isin(list(cfg.values)), F.lit(False)),
                   (cfg.column,))
    return finish(df, cfg, ctx, [rule])


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


@step("validate", "validateRegex", ValidateRegex, row_level=True)
def validate_regex(df: DataFrame, cfg: ValidateRegex, ctx: StepContext) -> DataFrame:
    anchored = f"^(?:{cfg.pattern})$"
    rule = RowRule(f"regex({cfg.column})", f"{cfg.column} matches {cfg.pattern}",
                   F.coalesce(~F.col(cfg.column).cast("string").rlike(anchored), F.lit(False)),
                   (cfg.column,))
    return finish(df, cfg, ctx, [rule])


class ValidateUnique(Validator):
    """No two rows share these columns (a composite key when several); every row of a
    duplicated key violates."""

    columns: list[str] = Field(min_length=1, description="Key column(s).")


@step("validate", "validateUnique", ValidateUnique)
def validate_unique(df: DataFrame, cfg: ValidateUnique, ctx: StepContext) -> DataFrame:
    dup = F.count(F.lit(1)).over(Window.partitionBy(*cfg.columns)) > 1
    rule = RowRule(f"unique({', '.join(cfg.columns)})", f"({', '.join(cfg.columns)}) is "
                   "unique", dup, tuple(cfg.columns))
    return finish(df, cfg, ctx, [rule])


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
    return finish(joined, cfg, ctx, [rule])  # helper columns go when the group is evaluated
