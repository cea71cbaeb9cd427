"""Load methods: each writes the current DataFrame and says what it wrote."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipeline_defs.config.model import FormatModel, check_trigger
from pipeline_defs.steps.connections import (FileFormat, JdbcConnection, KafkaClient,
                                             PathCredentials, S3Connection, Scalar,
                                             configure_s3, jdbc_endpoint, options_of,
                                             prepare_path, s3_path, with_defaults,
                                             write_options)
from pipeline_defs.steps.context import LoadResult, StepContext
from pipeline_defs.steps.extract import kafka_options
from pipeline_defs.steps.registry import step
from pipeline_defs.steps.transform import StepDataError

WriteMode = Literal["append", "overwrite", "errorifexists", "error", "ignore"]


class Load(PathCredentials):
    asset_key: list[str] | None = Field(None, description="Dagster asset key for the target, "
                                        "e.g. [\"sales\", \"orders\"]. Default: derived from "
                                        "the path or table.")

    def location(self) -> str | None:
        return getattr(self, "path", None) or getattr(self, "table", None)


class StreamingSink(FormatModel):
    """Keys that only matter in streaming pipelines (accepted in batch, where they are unused)."""

    checkpoint_location: str | None = Field(
        None, description="Streaming: checkpoint directory. Default: a stable path derived "
        "from pipeline and step under the checkpoint root, so a new run resumes.")
    output_mode: Literal["append", "complete", "update"] | None = Field(
        None, description="Streaming: append (default), complete or update.")
    trigger: str | None = Field(
        None, description="Streaming: \"5 seconds\" (processing time), \"availableNow\" or "
        "\"once\" (the run ends when the backlog is drained). Default: the pipeline's "
        "streaming.trigger, else micro-batches as fast as possible.")

    _trigger = field_validator("trigger")(check_trigger)


class FileSink(Load, StreamingSink):
    mode: WriteMode = Field("errorifexists", description="append, overwrite, errorifexists or "
                                                         "ignore.")
    partition_by: list[str] | None = Field(None, description="Partition columns (one directory "
                                                             "level each).")
    compression: str | None = Field(None, description="Codec, e.g. snappy, gzip, zstd.")
    options: dict[str, Scalar] = Field(default_factory=dict, description="Spark writer options. "
                                       "CSV defaults (RFC 4180): header true, escape '\"' (a "
                                       "quote in a value is doubled).")


def _write_files(df: DataFrame, cfg: FileSink, ctx: StepContext, fmt: str, path: str,
                 extra: dict[str, str] | None = None) -> LoadResult:
    if cfg.partition_by:
        from pipeline_defs.steps.transform import _missing
        _missing(df, cfg.partition_by, "partitionBy")
    opts = write_options(fmt, with_defaults(extra or {}, options_of(cfg.options)))
    w = df.write.format(fmt).mode(cfg.mode).options(**opts)
    if cfg.compression:
        w = w.option("compression", cfg.compression)
    if cfg.partition_by:
        w = w.partitionBy(*cfg.partition_by)
    w.save(path)
    return LoadResult(path, fmt, cfg.mode)


# ---------------------------------------------------------------- files
class ToFile(FileSink):
    """Write files to any Hadoop path in any Spark format."""

    path: str = Field(description="Output directory, e.g. /data/out/orders or s3a://b/orders.")
    format: FileFormat = Field("parquet", description="parquet, csv, json, avro, orc, text, "
                                                      "delta.")


@step("load", "toFile", ToFile, streams=True)
def to_file(df: DataFrame, cfg: ToFile, ctx: StepContext) -> LoadResult:
    prepare_path(ctx.spark, cfg, ctx, cfg.path)
    return _write_files(df, cfg, ctx, cfg.format, cfg.path)


class ToAvro(FileSink):
    """Write Avro files."""

    path: str = Field(description="Output directory.")
    record_name: str | None = Field(None, description="Avro record name (default "
                                    "topLevelRecord).")
    record_namespace: str | None = Field(None, description="Avro record namespace.")


@step("load", "toAvro", ToAvro, streams=True)
def to_avro(df: DataFrame, cfg: ToAvro, ctx: StepContext) -> LoadResult:
    prepare_path(ctx.spark, cfg, ctx, cfg.path)
    extra = {k: v for k, v in {"recordName": cfg.record_name,
                               "recordNamespace": cfg.record_namespace}.items() if v}
    return _write_files(df, cfg, ctx, "avro", cfg.path, extra)


class ToS3(S3Connection):
    """Write files to an S3 bucket (s3a) in any Spark format."""

    bucket: str = Field(description="Bucket name.")
    path: str = Field(description="Key prefix, e.g. processed/users/.")
    format: FileFormat = Field("parquet", description="parquet, csv, json, avro, orc, text, "
                                                      "delta.")
    mode: WriteMode = Field("errorifexists", description="append, overwrite, errorifexists, "
                                                         "ignore.")
    partition_by: list[str] | None = Field(None, description="Partition columns.")
    compression: str | None = Field(None, description="Codec, e.g. snappy.")
    options: dict[str, Scalar] = Field(default_factory=dict, description="Spark writer options.")
    asset_key: list[str] | None = Field(None, description="Dagster asset key for the target.")

    def location(self) -> str | None:
        return s3_path(self.bucket, self.path)


@step("load", "toS3", ToS3)
def to_s3(df: DataFrame, cfg: ToS3, ctx: StepContext) -> LoadResult:
    configure_s3(ctx.spark, cfg, ctx, cfg.bucket)
    return _write_files(df, cfg, ctx, cfg.format, s3_path(cfg.bucket, cfg.path))


# ---------------------------------------------------------------- Delta Lake
class Merge(FormatModel):
    key_columns: list[str] = Field(min_length=1, description="Columns identifying a row.")
    when_matched: Literal["update", "ignore", "delete"] = Field(
        "update", description="What happens to target rows whose key is in the input.")
    when_not_matched: Literal["insert", "ignore"] = Field(
        "insert", description="What happens to input rows whose key is not in the target.")
    matched_condition: str | None = Field(None, description="Only act on matches where this "
                                          "holds; `t.` is the target, `s.` the input, e.g. "
                                          "\"s.updated_at > t.updated_at\".")


class ToDeltaLake(Load, StreamingSink):
    """Write a Delta table (path or table), or upsert into it with `merge`."""

    counts_rows: ClassVar[bool] = True  # Delta's commit metrics count what was written

    path: str | None = Field(None, description="Table location.")
    table: str | None = Field(None, description="Catalog table name (instead of path).")
    mode: WriteMode = Field("errorifexists", description="append, overwrite, errorifexists, "
                                                         "ignore (ignored with merge).")
    partition_by: list[str] | None = Field(None, description="Partition columns.")
    merge_schema: bool = Field(False, description="Add new input columns to the table schema.")
    overwrite_schema: bool = Field(False, description="With overwrite: replace the schema.")
    replace_where: str | None = Field(None, description="With overwrite: replace only the rows "
                                      "matching this predicate, e.g. \"day = '2025-01-01'\".")
    merge: Merge | None = Field(None, description="Upsert on key columns instead of a plain "
                                "write; creates the table on first run.")
    def problems(self):
        if (self.path is None) == (self.table is None):
            return [("path", "give exactly one of path and table.",
                     "Set \"path\" for a location or \"table\" for a catalog table.")]
        return []

    def streaming_problems(self):
        if self.merge is not None:
            return [("merge", "merge (upsert) into Delta from a stream is not supported.",
                     "Use \"mode\": \"append\", or merge from a batch pipeline.")]
        return []


def _delta_table(ctx: StepContext, cfg: ToDeltaLake):
    from delta.tables import DeltaTable
    if cfg.table:
        return DeltaTable.forName(ctx.spark, cfg.table) if ctx.spark.catalog.tableExists(
            cfg.table) else None
    return DeltaTable.forPath(ctx.spark, cfg.path) if DeltaTable.isDeltaTable(
        ctx.spark, cfg.path) else None


def _merge(df: DataFrame, cfg: ToDeltaLake, ctx: StepContext, table) -> None:
    m = cfg.merge
    from pipeline_defs.steps.transform import _missing
    _missing(df, m.key_columns, "merge.keyColumns")
    on = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in m.key_columns)
    builder = table.alias("t").merge(df.alias("s"), on)
    if m.when_matched == "update":
        builder = builder.whenMatchedUpdateAll(condition=m.matched_condition)
    elif m.when_matched == "delete":
        builder = builder.whenMatchedDelete(condition=m.matched_condition)
    if m.when_not_matched == "insert":
        builder = builder.whenNotMatchedInsertAll()
    if cfg.merge_schema:
        builder = builder.withSchemaEvolution()
    try:
        builder.execute()
    except Exception as e:  # a Py4J/Spark error: say what it means for a merge
        if "MULTIPLE_SOURCE_ROW_MATCHING" in str(e):
            raise StepDataError(
                f"several input rows share a merge key ({', '.join(m.key_columns)}), so Delta "
                "cannot tell which one wins. Add a deduplicate step on those columns (with "
                "orderBy to pick the latest) before this load.") from None
        raise


@step("load", "toDeltaLake", ToDeltaLake, streams=True)
def to_delta_lake(df: DataFrame, cfg: ToDeltaLake, ctx: StepContext) -> LoadResult:
    target = cfg.path or cfg.table
    if cfg.path:
        prepare_path(ctx.spark, cfg, ctx, cfg.path)
    table = _delta_table(ctx, cfg)
    if cfg.merge and table is not None:
        _merge(df, cfg, ctx, table)
        mode = "merge"
    else:
        mode = "overwrite" if cfg.merge else cfg.mode
        w = df.write.format("delta").mode(mode)
        if cfg.partition_by:
            w = w.partitionBy(*cfg.partition_by)
        if cfg.merge_schema:
            w = w.option("mergeSchema", "true")
        if cfg.overwrite_schema:
            w = w.option("overwriteSchema", "true")
        if cfg.replace_where:
            w = w.option("replaceWhere", cfg.replace_where)
        w.saveAsTable(cfg.table) if cfg.table else w.save(cfg.path)
        table = table or _delta_table(ctx, cfg)
    meta, rows = {}, None
    if table is not None:
        last = table.history(1).select("version", "operation", "operationMetrics").first()
        metrics = last["operationMetrics"] or {}
        meta = {"delta_version": last["version"], "delta_operation": last["operation"],
                **{f"delta_{k}": int(v) for k, v in metrics.items()
                   if k in ("numOutputRows", "numTargetRowsInserted", "numTargetRowsUpdated",
                            "numTargetRowsDeleted", "numFiles", "numOutputBytes",
                            "numAddedFiles", "numRemovedFiles", "numSourceRows")
                   and str(v).isdigit()}}
        rows = meta.get("delta_numSourceRows" if mode == "merge" else "delta_numOutputRows")
    return LoadResult(target, "delta", mode, meta, rows)


# ---------------------------------------------------------------- databases and Kafka
class ToJdbc(JdbcConnection, StreamingSink):
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
    batch_size: int = Field(1000, ge=1, description="Rows per INSERT batch (when not COPY).")
    asset_key: list[str] | None = Field(None, description="Dagster asset key for the target.")
    kind: ClassVar[str] = ""

    def location(self) -> str | None:
        return f"{self.kind}://{self.database or self.credential_path or ''}/{self.table}"

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
    fast_path: bool = Field(True, description="Load with COPY (several times faster than "
                            "batched INSERTs); false uses Spark's JDBC writer.")


class ToMySQL(ToJdbc):
    """Write to a MySQL table: batched INSERTs into a staging table, then one transaction."""

    kind: ClassVar[str] = "mysql"


def _jdbc_write(df: DataFrame, cfg: ToJdbc, ctx: StepContext, dialect: str) -> LoadResult:
    from pipeline_defs.steps import jdbc
    ep = jdbc_endpoint(cfg, ctx, dialect)
    spec = jdbc.LoadSpec(cfg.table, cfg.mode, tuple(cfg.key_columns or ()), cfg.recreate,
                         cfg.batch_size, getattr(cfg, "fast_path", False))
    out = jdbc.load(ctx.spark, df, ep, spec, ctx.run_id, ctx.log)
    meta = {"target": f"{ep.label} {ep.host}:{ep.port}/{ep.database} {cfg.table}",
            **{k: v for k, v in out.items() if k != "rows"}}
    return LoadResult(f"{dialect}://{ep.host}:{ep.port}/{ep.database}/{cfg.table}", "jdbc",
                      cfg.mode, meta, out["rows"])


@step("load", "toPostgres", ToPostgres, streams=True)
def to_postgres(df: DataFrame, cfg: ToPostgres, ctx: StepContext) -> LoadResult:
    return _jdbc_write(df, cfg, ctx, "postgres")


@step("load", "toMySQL", ToMySQL, streams=True)
def to_mysql(df: DataFrame, cfg: ToMySQL, ctx: StepContext) -> LoadResult:
    return _jdbc_write(df, cfg, ctx, "mysql")


class ToKafka(KafkaClient, StreamingSink):
    """Write rows to a Kafka topic: key/value columns, or each whole row as JSON."""

    topic: str = Field(description="Topic name.")
    key_column: str | None = Field(None, description="Column (or SQL expression) for the key.")
    value_column: str | None = Field(None, description="Column for the value; default: the "
                                     "whole row as JSON.")
    asset_key: list[str] | None = Field(None, description="Dagster asset key for the topic.")

    def location(self) -> str | None:
        return f"kafka://{self.topic}"


def kafka_frame(df: DataFrame, cfg: ToKafka) -> DataFrame:
    """key/value columns for Kafka: the given columns, or the whole row as JSON."""
    value = (F.expr(cfg.value_column).cast("string") if cfg.value_column
             else F.to_json(F.struct(*[F.col(c) for c in df.columns])))
    cols = [value.alias("value")]
    if cfg.key_column:
        cols.append(F.expr(cfg.key_column).cast("string").alias("key"))
    return df.select(*cols)


@step("load", "toKafka", ToKafka, streams=True)
def to_kafka(df: DataFrame, cfg: ToKafka, ctx: StepContext) -> LoadResult:
    opts = {**kafka_options(cfg, ctx), "topic": cfg.topic}
    kafka_frame(df, cfg).write.format("kafka").options(**opts).save()
    return LoadResult(f"kafka://{cfg.topic}", "kafka", "append")
