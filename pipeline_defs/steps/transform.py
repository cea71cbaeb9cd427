"""Transforms of rows and columns: filter, derive, select, drop, rename, deduplicate, SQL,
partitions and caching. Each turns DataFrames into a DataFrame, lazily."""
from __future__ import annotations

import re
from typing import ClassVar

from pydantic import Field
from pyspark import StorageLevel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from pipeline_defs.config.model import StepModel, StorageLevelName
from pipeline_defs.config.sqltext import THIS
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.errors import missing_columns
from pipeline_defs.steps.registry import step


# ---------------------------------------------------------------- row and column basics
class FilterRows(StepModel):
    """Keep the rows for which `condition` (a Spark SQL boolean expression) is true."""
    sql_fields: ClassVar[frozenset[str]] = frozenset({"condition"})  # SQL text
    keeps_rows_identity = True

    condition: str = Field(description="e.g. \"active = true AND age >= 18\"")
    filters = True


@step("transform", "filterRows", FilterRows)
def filter_rows(df: DataFrame, cfg: FilterRows, ctx: StepContext) -> DataFrame:
    return df.filter(F.expr(cfg.condition))


class EnrichData(StepModel):
    """Add or replace columns computed from Spark SQL expressions, in the order given."""
    sql_fields: ClassVar[frozenset[str]] = frozenset({"columns"})  # SQL text
    keeps_rows_identity = True
    preserves_rows = True

    columns: dict[str, str] = Field(min_length=1, description="{new_column: SQL expression}, "
                                    "e.g. {\"year\": \"year(order_date)\"}. Later entries may "
                                    "use earlier ones.")
    passes_filters = True


@step("transform", "enrichData", EnrichData)
def enrich_data(df: DataFrame, cfg: EnrichData, ctx: StepContext) -> DataFrame:
    for name, expression in cfg.columns.items():
        df = df.withColumn(name, F.expr(expression))
    return df


class SelectColumns(StepModel):
    """Keep only these columns (names or SQL expressions such as \"price * qty AS total\")."""
    sql_fields: ClassVar[frozenset[str]] = frozenset({"columns"})  # SQL text
    keeps_rows_identity = True

    columns: list[str] = Field(min_length=1, description="Column names or SQL expressions.")
    passes_filters = True


@step("transform", "selectColumns", SelectColumns)
def select_columns(df: DataFrame, cfg: SelectColumns, ctx: StepContext) -> DataFrame:
    return df.selectExpr(*cfg.columns)


class DropColumns(StepModel):
    """Remove these columns."""
    keeps_rows_identity = True
    preserves_rows = True

    columns: list[str] = Field(min_length=1, description="Column names to drop.")
    passes_filters = True


@step("transform", "dropColumns", DropColumns)
def drop_columns(df: DataFrame, cfg: DropColumns, ctx: StepContext) -> DataFrame:
    missing_columns(df, cfg.columns, "columns")
    return df.drop(*cfg.columns)


class RenameColumns(StepModel):
    """Rename columns."""
    keeps_rows_identity = True
    preserves_rows = True

    columns: dict[str, str] = Field(min_length=1, description="{old_name: new_name}")
    passes_filters = True


@step("transform", "renameColumns", RenameColumns)
def rename_columns(df: DataFrame, cfg: RenameColumns, ctx: StepContext) -> DataFrame:
    missing_columns(df, cfg.columns, "columns")
    return df.withColumnsRenamed(cfg.columns)


class Deduplicate(StepModel):
    """Keep one row per key: the first by `orderBy` when given, else any one."""
    sql_fields: ClassVar[frozenset[str]] = frozenset({"orderBy"})  # SQL text
    keeps_rows_identity = True

    columns: list[str] | None = Field(None, description="Key columns; all columns when absent.")
    order_by: list[str] | None = Field(None, description="Which row to keep, as SQL order "
                                       "expressions, e.g. [\"updated_at DESC\"].")

    def problems(self):
        if self.order_by and not self.columns:
            return [("orderBy", "orderBy needs key columns.", "Add \"columns\": the key.")]
        return []

    def streaming_problems(self):
        if self.order_by:
            return [("orderBy", "picking a row by orderBy needs the whole dataset, which a "
                     "stream never has.", "Remove orderBy: in a stream the first row to "
                     "arrive per key is kept.")]
        return []


@step("transform", "deduplicate", Deduplicate)
def deduplicate(df: DataFrame, cfg: Deduplicate, ctx: StepContext) -> DataFrame:
    if cfg.columns:
        missing_columns(df, cfg.columns, "columns")
    if not cfg.order_by:
        return df.dropDuplicates(cfg.columns) if cfg.columns else df.dropDuplicates()
    order = [_order_expr(o) for o in cfg.order_by]
    w = Window.partitionBy(*cfg.columns).orderBy(*order)
    rn = "__pipeline_row_number"
    return df.withColumn(rn, F.row_number().over(w)).filter(F.col(rn) == 1).drop(rn)


def _order_expr(text: str):
    m = re.fullmatch(r"\s*(.+?)\s+(ASC|DESC)(\s+NULLS\s+(FIRST|LAST))?\s*", text, re.I)
    if not m:
        return F.expr(text).asc()
    e = F.expr(m.group(1))
    desc = m.group(2).upper() == "DESC"
    nulls = (m.group(4) or "").upper()
    if desc:
        return e.desc_nulls_first() if nulls == "FIRST" else e.desc_nulls_last()
    return e.asc_nulls_last() if nulls == "LAST" else e.asc_nulls_first()


# ---------------------------------------------------------------- partitions and caching
class Repartition(StepModel):
    """Shuffle into numPartitions partitions (by columns when given)."""
    keeps_rows_identity = True
    preserves_rows = True

    num_partitions: int = Field(ge=1, description="Number of partitions.")
    columns: list[str] | None = Field(None, description="Hash-partition by these columns.")
    passes_filters = True


@step("transform", "repartition", Repartition, aliases=("repartitionData",))
def repartition(df: DataFrame, cfg: Repartition, ctx: StepContext) -> DataFrame:
    return df.repartition(cfg.num_partitions, *(cfg.columns or []))


class RepartitionByColumns(StepModel):
    """Hash-partition by columns (e.g. before a partitioned write)."""
    keeps_rows_identity = True
    preserves_rows = True

    columns: list[str] = Field(min_length=1, description="Columns to partition by.")
    num_partitions: int | None = Field(None, ge=1, description="Number of partitions "
                                       "(default spark.sql.shuffle.partitions).")
    passes_filters = True


@step("transform", "repartitionByColumns", RepartitionByColumns)
def repartition_by_columns(df: DataFrame, cfg: RepartitionByColumns, ctx: StepContext
                           ) -> DataFrame:
    if cfg.num_partitions:
        return df.repartition(cfg.num_partitions, *cfg.columns)
    return df.repartition(*cfg.columns)


class Coalesce(StepModel):
    """Reduce the number of partitions without a shuffle (e.g. fewer output files)."""
    keeps_rows_identity = True
    preserves_rows = True

    num_partitions: int = Field(ge=1, description="Target number of partitions.")
    passes_filters = True


@step("transform", "coalesce", Coalesce, aliases=("coalesceData",))
def coalesce(df: DataFrame, cfg: Coalesce, ctx: StepContext) -> DataFrame:
    return df.coalesce(cfg.num_partitions)


class Cache(StepModel):
    """Keep the current DataFrame once computed, for steps that read it more than once."""
    keeps_rows_identity = True
    preserves_rows = True

    storage_level: StorageLevelName = Field("MEMORY_AND_DISK", description="Spark storage "
                                            "level.")


@step("transform", "cache", Cache)
def cache(df: DataFrame, cfg: Cache, ctx: StepContext) -> DataFrame:
    return df.persist(getattr(StorageLevel, cfg.storage_level))


# ---------------------------------------------------------------- SQL


class Sql(StepModel):
    """Run Spark SQL over registered DataFrames (as views by their names); __THIS__ is the
    current DataFrame."""
    sql_fields: ClassVar[frozenset[str]] = frozenset({"query"})  # SQL text

    query: str = Field(description="e.g. \"SELECT u.name, count(*) AS n FROM users u JOIN "
                                   "orders o USING (user_id) GROUP BY u.name\"")
    input_data_frames: list[str] | None = Field(None, description="Views to provide; default: "
                                                "every registered name the query mentions.")
    filters = True

    @property
    def uses_this(self) -> bool:
        return THIS in self.query

    def reads_current(self) -> bool:
        return self.uses_this

    def named_inputs(self, registered=()):
        if self.input_data_frames is not None:
            return [(f"inputDataFrames[{i}]", n) for i, n in enumerate(self.input_data_frames)]
        return [("query", n) for n in registered
                if re.search(rf"(?<![\w.`]){re.escape(n)}(?![\w`])", self.query, re.I)]


@step("transform", "sql", Sql)
def sql(df: DataFrame | None, cfg: Sql, ctx: StepContext) -> DataFrame:
    query = cfg.query
    for name, frame in ctx.frames.items():
        frame.createOrReplaceTempView(name)
    if cfg.uses_this:
        view = f"__this_{ctx.run_id.replace('-', '_')}_{ctx.step}"
        df.createOrReplaceTempView(view)
        query = query.replace(THIS, view)
    return ctx.spark.sql(query)
