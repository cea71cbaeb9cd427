"""Transforms across DataFrames and shapes: joins, unions, aggregations (with time windows),
pivot/unpivot, Avro schemas."""
from __future__ import annotations

import json
import re
from typing import Any, ClassVar, Literal

from pydantic import Field
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import StructType

from pipeline_defs.config.model import FormatModel, StepModel
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.errors import StepDataError
from pipeline_defs.steps.names import quoted
from pipeline_defs.steps.registry import step

# ---------------------------------------------------------------- joins and unions
JoinType = Literal["inner", "left", "right", "full", "semi", "anti", "cross", "left_outer",
                   "right_outer", "full_outer", "outer", "left_semi", "left_anti"]
_HOW = {"left_outer": "left", "right_outer": "right", "full_outer": "full", "outer": "full",
        "left_semi": "semi", "left_anti": "anti"}
_EQ = re.compile(r"^\s*`?(\w+)`?\.`?(\w+)`?\s*={1,2}\s*`?(\w+)`?\.`?(\w+)`?\s*$")


class JoinDataFrames(StepModel):
    """Join registered DataFrames, left to right; duplicate join-key columns are dropped."""
    sql_fields: ClassVar[frozenset[str]] = frozenset({"joinConditions"})  # SQL text

    input_data_frames: list[str] = Field(min_length=2, description="Names to join, in order; "
                                         "each is also its alias in joinConditions.")
    join_conditions: list[str] | None = Field(None, description="N-1 SQL conditions, the i-th "
                                              "joining frame i+1, e.g. \"users.id = orders."
                                              "user_id\".")
    join_column: str | None = Field(None, description="One key column present in all inputs.")
    join_columns: list[str] | None = Field(None, description="Key columns present in all "
                                           "inputs.")
    join_type: JoinType = Field("inner", description="inner, left, right, full, semi, anti, "
                                                     "cross.")
    uses_current = False
    passes_filters = True

    def named_inputs(self, registered=()):
        return [(f"inputDataFrames[{i}]", n) for i, n in enumerate(self.input_data_frames)]

    def problems(self):
        ways = [w for w in (self.join_conditions, self.join_column, self.join_columns) if w]
        n = len(self.input_data_frames)
        if len(ways) > 1:
            return [("joinConditions", "give one of joinConditions, joinColumn, joinColumns.",
                     "Keep one of them.")]
        if not ways and self.join_type != "cross":
            return [("joinConditions", "no join condition given.",
                     f"Add {n - 1} joinConditions, or joinColumn(s) shared by all inputs.")]
        if self.join_conditions is not None and len(self.join_conditions) != n - 1:
            return [("joinConditions", f"{n} inputDataFrames need {n - 1} joinConditions, got "
                     f"{len(self.join_conditions)}.", "The i-th condition joins input i+1 to "
                     "the inputs before it.")]
        return []


def _equi_keys(condition: str) -> list[str] | None:
    """Column names when the condition is only `a.k = b.k` terms on same-named columns."""
    keys = []
    for term in re.split(r"\s+AND\s+", condition.strip(), flags=re.I):
        m = _EQ.match(term)
        if not m or m.group(2) != m.group(4) or m.group(1) == m.group(3):
            return None
        keys.append(m.group(2))
    return keys


@step("transform", "joinDataFrames", JoinDataFrames)
def join_data_frames(df: None, cfg: JoinDataFrames, ctx: StepContext) -> DataFrame:
    how = _HOW.get(cfg.join_type, cfg.join_type)
    frames = [ctx.frame(n).alias(n) for n in cfg.input_data_frames]
    result = frames[0]
    for i, right in enumerate(frames[1:]):
        if how == "cross" and not (cfg.join_conditions or cfg.join_column or cfg.join_columns):
            result = result.crossJoin(right)
            continue
        keys = ([cfg.join_column] if cfg.join_column else cfg.join_columns) or \
            _equi_keys(cfg.join_conditions[i])
        if keys:  # a USING join keeps one copy of each key (coalesced for full joins)
            result = result.join(right, on=keys, how=how)
        else:
            result = result.join(right, F.expr(cfg.join_conditions[i]), how)
    return result


class UnionDataFrames(StepModel):
    """Append registered DataFrames to the current one, matching columns by name."""

    input_data_frames: list[str] = Field(min_length=1, description="Names to union onto the "
                                         "current DataFrame.")
    distinct: bool = Field(False, description="Remove duplicate rows (UNION instead of UNION "
                                              "ALL).")
    allow_missing_columns: bool = Field(False, description="Fill columns missing on one side "
                                        "with nulls instead of failing.")
    passes_filters = True

    def named_inputs(self, registered=()):
        return [(f"inputDataFrames[{i}]", n) for i, n in enumerate(self.input_data_frames)]


@step("transform", "unionDataFrames", UnionDataFrames)
def union_data_frames(df: DataFrame, cfg: UnionDataFrames, ctx: StepContext) -> DataFrame:
    for name in cfg.input_data_frames:
        df = df.unionByName(ctx.frame(name), allowMissingColumns=cfg.allow_missing_columns)
    return df.distinct() if cfg.distinct else df


# ---------------------------------------------------------------- aggregation and reshaping
AGG_FUNCTIONS = {"sum", "count", "avg", "mean", "min", "max", "first", "last", "stddev",
                 "stddev_samp", "stddev_pop", "variance", "var_samp", "var_pop", "median",
                 "count_distinct", "countdistinct", "approx_count_distinct", "collect_list",
                 "collect_set", "any_value", "bool_and", "bool_or"}


class TimeWindow(FormatModel):
    column: str = Field(description="Timestamp column, e.g. event_time.")
    duration: str = Field(description="Window length, e.g. \"1 minute\".")
    slide: str | None = Field(None, description="Slide for overlapping windows, e.g. \"30 "
                                                "seconds\" (default: tumbling).")


class Watermark(FormatModel):
    column: str = Field(description="Event-time column (usually the window's column).")
    delay: str = Field(description="Lateness tolerated, e.g. \"10 minutes\".")


class AggregateData(StepModel):
    """Group rows and aggregate. Two forms: {column: "sum"} gives column_sum; {alias:
    "sum(amount)"} gives alias."""
    sql_fields: ClassVar[frozenset[str]] = frozenset({"aggregations"})  # SQL text

    group_by: list[str] = Field(description="Columns to group by (may be empty for a total).")
    aggregations: dict[str, str] = Field(min_length=1, description="{column: function} or "
                                         "{alias: SQL aggregate expression}.")
    window: TimeWindow | None = Field(None, description="Also group by a time window of a "
                                      "timestamp column: output columns window_start, "
                                      "window_end.")
    watermark: Watermark | None = Field(None, description="Streaming: how late events may "
                                        "arrive; old windows are then finalized and their "
                                        "state dropped (needed for outputMode append).")
    passes_filters = True


def _aggregate(key: str, value: str):
    fn = value.strip()
    if fn.lower() in AGG_FUNCTIONS:
        lower = fn.lower()
        if lower in ("count_distinct", "countdistinct"):
            return F.expr(f"count(DISTINCT {quoted(key)})").alias(f"{key}_{fn}")
        return F.expr(f"{lower}({quoted(key)})").alias(f"{key}_{fn}")
    return F.expr(value).alias(key)


@step("transform", "aggregateData", AggregateData)
def aggregate_data(df: DataFrame, cfg: AggregateData, ctx: StepContext) -> DataFrame:
    aggs = [_aggregate(k, v) for k, v in cfg.aggregations.items()]
    if cfg.watermark:
        df = df.withWatermark(cfg.watermark.column, cfg.watermark.delay)
    keys = [F.col(c) for c in cfg.group_by]
    if cfg.window:
        w = cfg.window
        keys.insert(0, F.window(w.column, w.duration, w.slide).alias("window"))
    out = df.groupBy(*keys).agg(*aggs)
    if cfg.window:
        out = out.select(F.col("window.start").alias("window_start"),
                         F.col("window.end").alias("window_end"),
                         *[c for c in out.columns if c != "window"])
    return out


class ReshapeData(StepModel):
    """Pivot (rows to columns) or unpivot (columns to rows)."""

    operation: Literal["pivot", "unpivot"] = Field(description="pivot or unpivot.")
    pivot_column: str | None = Field(None, description="pivot: column whose values become "
                                     "columns.")
    pivot_values: list[Any] | None = Field(None, description="pivot: the values to turn into "
                                           "columns. Without it Spark runs one extra job to "
                                           "find them.")
    group_by_columns: list[str] | None = Field(None, description="pivot: the row key. Columns "
                                               "that are constant by construction (enrichData "
                                               "with current_date() or a literal) are kept too.")
    aggregate_column: str | None = Field(None, description="pivot: column aggregated into "
                                         "each cell (sum); without it cells count rows.")
    aggregate_function: str | None = Field(None, description="pivot: sum (default with "
                                           "aggregateColumn), avg, min, max, first, count.")
    id_cols: list[str] | None = Field(None, description="unpivot: columns kept as they are.")
    value_cols: list[str] | None = Field(None, description="unpivot: columns turned into rows "
                                         "(default: all others).")
    variable_col_name: str = Field("variable", description="unpivot: name of the column "
                                   "holding the former column names.")
    value_col_name: str = Field("value", description="unpivot: name of the value column.")

    def problems(self):
        if self.operation == "pivot":
            out = []
            if not self.pivot_column:
                out.append(("pivotColumn", "pivot needs pivotColumn.", "Add it."))
            if not self.group_by_columns:
                out.append(("groupByColumns", "pivot needs groupByColumns.", "Add the row "
                            "key columns."))
            return out
        if not self.id_cols:
            return [("idCols", "unpivot needs idCols.", "Add the columns to keep.")]
        return []


_ROW_ONLY_NODES = ("CollectMetrics", "Filter", "Sort", "Repartition", "RepartitionByExpression",
                   "GlobalLimit", "LocalLimit", "Sample", "Deduplicate")


def constant_columns(df: DataFrame) -> list[str]:
    """Columns the plan itself makes constant (a literal or a run-constant expression such as
    current_date(), set by enrichData), found in the optimized plan without reading data."""
    try:
        plan = df._jdf.queryExecution().optimizedPlan()
        while plan.nodeName() in _ROW_ONLY_NODES:  # e.g. the row count's observe()
            plan = plan.child()
        if plan.nodeName() != "Project":
            return []
        exprs = plan.projectList()
        out = []
        for i in range(exprs.size()):
            e = exprs.apply(i)
            if e.nodeName() == "Alias" and e.child().foldable():
                out.append(e.name())
        return out
    except Exception:  # noqa: BLE001 - a plan shape we do not know: keep nothing extra
        return []


@step("transform", "reshapeData", ReshapeData)
def reshape_data(df: DataFrame, cfg: ReshapeData, ctx: StepContext) -> DataFrame:
    if cfg.operation == "unpivot":
        values = cfg.value_cols or [c for c in df.columns if c not in cfg.id_cols]
        return df.unpivot(cfg.id_cols, values, cfg.variable_col_name, cfg.value_col_name)
    used = {cfg.pivot_column, cfg.aggregate_column, *cfg.group_by_columns}
    kept = [c for c in constant_columns(df) if c not in used]
    if kept:  # same value on every row: part of every group's key, changing no group
        ctx.metadata["kept_constant_columns"] = kept
    grouped = df.groupBy(*cfg.group_by_columns, *kept).pivot(cfg.pivot_column, cfg.pivot_values)
    fn = (cfg.aggregate_function or ("sum" if cfg.aggregate_column else "count")).lower()
    if fn == "count" and not cfg.aggregate_column:
        return grouped.count()
    return grouped.agg(F.expr(f"{fn}({quoted(cfg.aggregate_column)})"))


# ---------------------------------------------------------------- Avro schemas
class ToAvroSchema(StepModel):
    """Check the DataFrame converts to Avro and show its Avro schema; rows pass unchanged."""
    keeps_rows_identity = True
    preserves_rows = True

    name: str = Field("Record", description="Avro record name.")
    namespace: str = Field("", description="Avro namespace, e.g. com.pipeline.")
    passes_filters = True


def _jvm_avro(ctx: StepContext):
    return ctx.spark._jvm.org.apache.spark.sql.avro.SchemaConverters


@step("transform", "toAvroSchema", ToAvroSchema)
def to_avro_schema(df: DataFrame, cfg: ToAvroSchema, ctx: StepContext) -> DataFrame:
    jvm = ctx.spark._jvm
    catalyst = jvm.org.apache.spark.sql.types.DataType.fromJson(df.schema.json())
    avro = _jvm_avro(ctx).toAvroType(catalyst, False, cfg.name, cfg.namespace)
    ctx.metadata["avro_schema"] = json.loads(avro.toString())
    return df


class EvolveAvroSchema(StepModel):
    """Conform the DataFrame to a target Avro schema: cast, add missing fields from their
    defaults, drop the rest."""
    keeps_rows_identity = True
    preserves_rows = True

    target_schema: str | dict = Field(description="Avro record schema (JSON text or object).")
    passes_filters = True

    def problems(self):
        try:
            schema = (json.loads(self.target_schema) if isinstance(self.target_schema, str)
                      else self.target_schema)
        except json.JSONDecodeError as e:
            return [("targetSchema", f"is not valid JSON: {e.msg}.", "Fix the Avro schema.")]
        if not isinstance(schema, dict) or schema.get("type") != "record":
            return [("targetSchema", "must be an Avro record schema.",
                     "Use {\"type\": \"record\", \"name\": ..., \"fields\": [...]}.")]
        return []

    def avro(self) -> dict:
        return (json.loads(self.target_schema) if isinstance(self.target_schema, str)
                else self.target_schema)


@step("transform", "evolveAvroSchema", EvolveAvroSchema)
def evolve_avro_schema(df: DataFrame, cfg: EvolveAvroSchema, ctx: StepContext) -> DataFrame:
    avro = cfg.avro()
    parsed = ctx.spark._jvm.org.apache.avro.Schema.Parser().parse(json.dumps(avro))
    spark_type = StructType.fromJson(json.loads(_jvm_avro(ctx).toSqlType(parsed).dataType()
                                                .json()))
    fields = {f["name"]: f for f in avro["fields"]}
    have = set(df.columns)
    cols, added, cast = [], [], []
    for field in spark_type.fields:
        if field.name in have:
            current = df.schema[field.name].dataType
            if current != field.dataType:
                cast.append(field.name)
            cols.append(F.col(field.name).cast(field.dataType).alias(field.name))
            continue
        spec = fields[field.name]
        if "default" not in spec and not field.nullable:
            raise StepDataError(f"targetSchema field '{field.name}' is missing from the data "
                                "and has no default. Add a default to the field, make it "
                                "nullable ([\"null\", ...]), or produce the column first.")
        cols.append(F.lit(spec.get("default")).cast(field.dataType).alias(field.name))
        added.append(field.name)
    dropped = [c for c in df.columns if c not in fields]
    ctx.metadata.update(added_columns=added, cast_columns=cast, dropped_columns=dropped)
    return df.select(*cols)
