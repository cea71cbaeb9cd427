"""PostgreSQL and MySQL: fromPostgres / fromMySQL (parallel reads, bounds from one query,
pushdown), toPostgres / toMySQL (atomic staging loads; COPY into PostgreSQL; as streams,
each micro-batch loaded once by its batch id)."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from pyspark.sql import DataFrame
from pyspark.sql.streaming import StreamingQuery

from pipeline_defs.config.model import AssetKeyParts, FormatModel, asset_key_field, exactly_one
from pipeline_defs.steps.context import LoadResult, StepContext
from pipeline_defs.steps.errors import transient
from pipeline_defs.steps.jdbc.connection import (
    Connection,
    JdbcConnection,
    JdbcError,
    java_message,
    jdbc_endpoint,
)
from pipeline_defs.steps.jdbc.staging import LoadSpec, load
from pipeline_defs.steps.registry import step, stream_writer
from pipeline_defs.steps.streaming import Sink, StreamingSink

__all__ = ["FromMySQL", "FromPostgres", "JdbcError", "ToMySQL", "ToPostgres"]


# ---------------------------------------------------------------- reads
PUSHDOWN = ("pushDownPredicate", "pushDownAggregate", "pushDownLimit", "pushDownOffset",
            "pushDownTableSample")


class JdbcHints(FormatModel):
    """How much of the work Spark may hand to the database (the improvement plan's hints)."""

    pushdown: bool = Field(True, description="Spark sends later steps' filters to the database "
                           "as a WHERE clause (and, where Spark's JDBC source can, aggregates, "
                           "LIMIT, OFFSET and TABLESAMPLE): its options pushDownPredicate, "
                           "pushDownAggregate, pushDownLimit, pushDownOffset, "
                           "pushDownTableSample. false: the database returns every row and "
                           "Spark filters them (when the database would compare differently, "
                           "e.g. a case-insensitive collation).")
    column_pruning: bool = Field(True, description="Read only the columns later steps use. "
                                 "Spark's JDBC source always does; false is refused.")


class FromJdbc(JdbcConnection):
    sql_fields: ClassVar[frozenset[str]] = frozenset({"query"})  # SQL text
    # names spliced into the SQL sent to the database
    name_fields: ClassVar[frozenset[str]] = frozenset({"table", "partitionColumn"})
    uses_current = False

    def location(self) -> str | None:
        where = self.database or self.credential_path or ""
        return f"{self.kind}://{where}/{self.table or 'query'}"

    def table_name(self) -> str | None:
        return self.table.rsplit(".", 1)[-1] if self.table else None

    def catalog_name(self) -> str | None:
        return ".".join(p for p in (self.database, self.table) if p) if self.table else None

    table: str | None = Field(None, description="Table to read, e.g. public.users.")
    query: str | None = Field(None, description="SELECT to run instead of a table.")
    partition_column: str | None = Field(None, description="Numeric/date column to split the "
                                         "read on, for parallel reads.")
    lower_bound: int | str | None = Field(None, description="Lowest partitionColumn value "
                                          "(read with one min/max query when missing).")
    upper_bound: int | str | None = Field(None, description="Highest partitionColumn value.")
    num_partitions: int | None = Field(None, ge=1, description="Parallel reads.")
    fetch_size: int = Field(10_000, ge=1, description="Rows per round trip (Spark's default 0 "
                                                      "makes the Postgres driver buffer all).")

    hints: JdbcHints | None = Field(None, description="{\"pushdown\": true, "
                                    "\"columnPruning\": true} (the defaults): what Spark may "
                                    "hand to the database.")

    def problems(self):
        out = exactly_one(self, "table", "query", "Set \"table\", or \"query\" with a SELECT.")
        if self.hints and not self.hints.column_pruning:
            out.append(("hints.columnPruning", "Spark's JDBC source always reads only the "
                        "columns later steps use; it has no switch to read them all.",
                        "Remove \"columnPruning\" (or set it to true)."))
        return out


def _jdbc_read(cfg: FromJdbc, ctx: StepContext, dialect: str) -> DataFrame:
    ep = jdbc_endpoint(cfg, ctx, dialect)
    source = cfg.table or f"({cfg.query}) AS pipeline_query"
    opts = {**ep.spark_options(), "fetchsize": str(cfg.fetch_size), "dbtable": source}
    if cfg.hints is not None:
        opts.update(dict.fromkeys(PUSHDOWN, str(cfg.hints.pushdown).lower()))
        ctx.metadata["pushdown"] = "on" if cfg.hints.pushdown else "off"
    # One driver-side connection first: a wrong password or host fails here with a message
    # naming host, database and user (Spark's own error hides the whole URL), and the
    # partition bounds come from one min/max query on it.
    with Connection(ctx.spark, ep) as conn:
        try:
            conn.query(f"SELECT * FROM {source} WHERE 1 = 0")
        except Exception as e:  # noqa: BLE001
            what = f"table {cfg.table}" if cfg.table else "the query"
            raise JdbcError(f"cannot read {what} from {ep.describe()}: {java_message(e)}"
                            ).retriable(transient(e)) from None
        if cfg.partition_column:
            lo, hi = cfg.lower_bound, cfg.upper_bound
            if lo is None or hi is None:
                c = cfg.partition_column
                blo, bhi = conn.query(f"SELECT min({c}), max({c}) FROM {source}")[0]
                lo = lo if lo is not None else blo
                hi = hi if hi is not None else bhi
                ctx.metadata["partition_bounds"] = (f"{lo} .. {hi}" if lo is not None and
                                                    hi is not None else "none (no rows)")
            if lo is not None and hi is not None:
                opts.update(partitionColumn=cfg.partition_column, lowerBound=str(lo),
                            upperBound=str(hi), numPartitions=str(cfg.num_partitions or 4))
    ctx.metadata["source"] = f"{ep.label} {ep.host}:{ep.port}/{ep.database}"
    return ctx.spark.read.format("jdbc").options(**opts).load()


class FromPostgres(FromJdbc):
    """Read a PostgreSQL table or query over JDBC, in parallel when partitionColumn is set."""

    kind: ClassVar[str] = "postgres"
    sql_dialect: ClassVar[str] = "postgres"


class FromMySQL(FromJdbc):
    """Read a MySQL table or query over JDBC, in parallel when partitionColumn is set."""

    kind: ClassVar[str] = "mysql"
    sql_dialect: ClassVar[str] = "mysql"


@step("extract", "fromPostgres", FromPostgres, asset_kind="postgres")
def from_postgres(df: None, cfg: FromPostgres, ctx: StepContext) -> DataFrame:
    return _jdbc_read(cfg, ctx, "postgres")


@step("extract", "fromMySQL", FromMySQL, asset_kind="mysql")
def from_mysql(df: None, cfg: FromMySQL, ctx: StepContext) -> DataFrame:
    return _jdbc_read(cfg, ctx, "mysql")


# ---------------------------------------------------------------- writes
class ToJdbc(JdbcConnection, StreamingSink):
    name_fields: ClassVar[frozenset[str]] = frozenset({"table"})  # spliced into its SQL
    table: str = Field(description="Target table, e.g. public.customer_summary (created when "
                                   "missing).")
    mode: Literal["append", "overwrite", "upsert", "errorifexists", "error", "ignore"] = Field(
        "append", description="append; overwrite (rows replaced, the table's DDL and grants "
        "kept); upsert (rows whose keyColumns match are replaced, others added). Every mode "
        "is atomic: readers see the old rows or all the new ones.")
    key_columns: list[str] | None = Field(None, description="upsert: columns identifying a "
                                          "row, e.g. [\"customer_id\"].")
    recreate: bool = Field(False, description="overwrite: drop and recreate the table from the "
                           "data's schema instead of keeping its DDL.")
    batch_size: int = Field(1000, ge=1, description="Rows per INSERT batch (when fastPath "
                            "is off or cannot carry the columns).")
    fast_path: bool = Field(True, description="Bulk-load from Spark's executors: COPY into "
                            "PostgreSQL, LOAD DATA LOCAL INFILE into MySQL (several times "
                            "faster than batched INSERTs); false uses Spark's JDBC writer.")
    asset_key: AssetKeyParts | None = asset_key_field("the table")
    kind: ClassVar[str] = ""

    def location(self) -> str | None:
        return f"{self.kind}://{self.database or self.credential_path or ''}/{self.table}"

    def table_name(self) -> str | None:
        return self.table.rsplit(".", 1)[-1]

    def catalog_name(self) -> str | None:
        return ".".join(p for p in (self.database, self.table) if p)

    def problems(self):
        if self.mode == "upsert" and not self.key_columns:
            return [("keyColumns", "mode upsert needs keyColumns.",
                     "Set \"keyColumns\": [\"id\"] (the columns identifying a row).")]
        if self.recreate and self.mode != "overwrite":
            return [("recreate", "recreate only applies to mode overwrite.",
                     "Remove it, or set \"mode\": \"overwrite\".")]
        return []

    def streaming_problems(self):
        if self.mode not in ("append", "upsert"):
            return [("mode", f"mode '{self.mode}' has no meaning for a stream: each "
                     "micro-batch is loaded on its own.", "Use append, or upsert with "
                     "keyColumns.")]
        return []


class ToPostgres(ToJdbc):
    """Write to a PostgreSQL table: COPY into a staging table, then one transaction."""

    kind: ClassVar[str] = "postgres"
    sql_dialect: ClassVar[str] = "postgres"


class ToMySQL(ToJdbc):
    """Write to a MySQL table: LOAD DATA into a staging table, then one transaction."""

    kind: ClassVar[str] = "mysql"
    sql_dialect: ClassVar[str] = "mysql"


def _jdbc_write(df: DataFrame, cfg: ToJdbc, ctx: StepContext, dialect: str) -> LoadResult:
    ep = jdbc_endpoint(cfg, ctx, dialect)
    spec = LoadSpec(cfg.table, cfg.mode, tuple(cfg.key_columns or ()), cfg.recreate,
                         cfg.batch_size, cfg.fast_path)
    out = load(ctx.spark, df, ep, spec, ctx.run_id, ctx.log)
    meta = {"target": f"{ep.label} {ep.host}:{ep.port}/{ep.database} {cfg.table}",
            **{k: v for k, v in out.items() if k != "rows"}}
    return LoadResult(f"{dialect}://{ep.host}:{ep.port}/{ep.database}/{cfg.table}", "jdbc",
                      cfg.mode, meta, out["rows"])


@step("load", "toPostgres", ToPostgres, asset_kind="postgres")
def to_postgres(df: DataFrame, cfg: ToPostgres, ctx: StepContext) -> LoadResult:
    return _jdbc_write(df, cfg, ctx, "postgres")


@step("load", "toMySQL", ToMySQL, asset_kind="mysql")
def to_mysql(df: DataFrame, cfg: ToMySQL, ctx: StepContext) -> LoadResult:
    return _jdbc_write(df, cfg, ctx, "mysql")


def _write_stream(df: DataFrame, cfg: ToJdbc, ctx: StepContext, sink: Sink, dialect: str
                  ) -> StreamingQuery:
    """foreachBatch, idempotent by batch id: each micro-batch is loaded in one transaction
    together with a (query, batch id) marker, and a replayed batch is skipped."""
    ep = jdbc_endpoint(cfg, ctx, dialect)
    spec = LoadSpec(cfg.table, cfg.mode, tuple(cfg.key_columns or ()), False, cfg.batch_size,
                    cfg.fast_path)

    def write(batch: DataFrame, batch_id: int) -> None:
        load(batch.sparkSession, batch, ep, spec, f"{sink.query_name}{batch_id}", ctx.log,
             marker=(sink.query_name, int(batch_id)))
    return sink.writer(df).foreachBatch(write).start()


@stream_writer("toPostgres")
def write_postgres_stream(df: DataFrame, cfg: ToPostgres, ctx: StepContext, sink: Sink
                          ) -> StreamingQuery:
    return _write_stream(df, cfg, ctx, sink, "postgres")


@stream_writer("toMySQL")
def write_mysql_stream(df: DataFrame, cfg: ToMySQL, ctx: StepContext, sink: Sink
                       ) -> StreamingQuery:
    return _write_stream(df, cfg, ctx, sink, "mysql")
