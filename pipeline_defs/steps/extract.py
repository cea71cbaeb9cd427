"""Extract methods: each reads a source into a (lazy) DataFrame."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from pyspark.sql import DataFrame, DataFrameReader

from pipeline_defs.steps.connections import (CSV_READ, FileFormat, JdbcConnection,
                                             KafkaClient, PathCredentials, S3Connection, Scalar,
                                             configure_s3, credentials, csv_read_options,
                                             jdbc_endpoint, options_of, prepare_path, s3_path,
                                             with_defaults)
from pipeline_defs.errors import UnsupportedError
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.registry import step


class Extract(PathCredentials):
    """Extracts that read a path (credentials used only for s3a:// paths)."""

    uses_current = False

    def location(self) -> str | None:
        return getattr(self, "path", None) or getattr(self, "table", None)


# ---------------------------------------------------------------- files and tables
class FromFile(Extract):
    """Read files from any Hadoop path (local, s3a://, hdfs://) in any Spark format."""

    path: str = Field(description="File or directory, e.g. /data/orders or s3a://bucket/orders.")
    format: FileFormat = Field("parquet", description="parquet, csv, json, avro, orc, text or "
                                                      "delta.")
    options: dict[str, Scalar] = Field(
        default_factory=dict, description="Spark reader options, e.g. {\"header\": true}. CSV "
        "defaults (RFC 4180): header true, escape '\"' (a doubled quote is a quote), multiLine "
        "true (quoted fields may hold line breaks; false splits big files for parallel reads), "
        "and inferSchema true unless `schema` is given.")
    ddl_schema: str | None = Field(
        None, alias="schema", description="Schema as a DDL string, e.g. \"id BIGINT, name "
        "STRING\". Giving it saves the inference pass over CSV and JSON.")


def _reader(ctx: StepContext, fmt: str, options: dict[str, str], ddl: str | None
            ) -> DataFrameReader:
    r = ctx.spark.read.format(fmt)
    if fmt == "csv":
        options = csv_read_options(options, ddl)
    r = r.options(**options)
    return r.schema(ddl) if ddl else r


@step("extract", "fromFile", FromFile, streams=True)
def from_file(df: None, cfg: FromFile, ctx: StepContext) -> DataFrame:
    prepare_path(ctx.spark, cfg, ctx, cfg.path)
    reader = _reader(ctx, cfg.format, options_of(cfg.options), cfg.ddl_schema)
    if not ctx.options.get("streaming"):
        return reader.load(cfg.path)
    # a stream of new files in the directory; without `schema`, the files there now give it
    schema = cfg.ddl_schema or reader.load(cfg.path).schema
    opts = options_of(cfg.options)
    if cfg.format == "csv":
        opts = with_defaults(CSV_READ, opts)
    return ctx.spark.readStream.format(cfg.format).options(**opts).schema(schema).load(cfg.path)


class FromDeltaLake(Extract):
    """Read a Delta table by path or name, optionally as of a version or timestamp."""

    path: str | None = Field(None, description="Table location, e.g. /data/delta/orders.")
    table: str | None = Field(None, description="Table name in the catalog (instead of path).")
    version: int | None = Field(None, description="Time travel: read this table version.")
    timestamp: str | None = Field(None, description="Time travel: the table as of this time, "
                                                    "e.g. \"2025-01-01 00:00:00\".")

    def problems(self):
        out = []
        if (self.path is None) == (self.table is None):
            out.append(("path", "give exactly one of path and table.",
                        "Set \"path\" for a location or \"table\" for a catalog table."))
        if self.version is not None and self.timestamp is not None:
            out.append(("version", "version and timestamp both set.", "Keep one of them."))
        return out

    def streaming_problems(self):
        if self.timestamp is not None:
            return [("timestamp", "a stream starts at a version, not a timestamp.",
                     "Use \"version\" (the first version to read), or remove it.")]
        return []


@step("extract", "fromDeltaLake", FromDeltaLake, streams=True)
def from_delta_lake(df: None, cfg: FromDeltaLake, ctx: StepContext) -> DataFrame:
    if ctx.options.get("streaming"):  # new commits as they come (from `version` when given)
        if cfg.timestamp is not None:
            raise UnsupportedError("fromDeltaLake: a stream starts at a version, not a "
                                   "timestamp. Use \"version\".")
        prepare_path(ctx.spark, cfg, ctx, cfg.path or "")
        rs = ctx.spark.readStream.format("delta")
        if cfg.version is not None:
            rs = rs.option("startingVersion", cfg.version)
        return rs.table(cfg.table) if cfg.table else rs.load(cfg.path)
    r = ctx.spark.read.format("delta")
    if cfg.version is not None:
        r = r.option("versionAsOf", cfg.version)
    if cfg.timestamp is not None:
        r = r.option("timestampAsOf", cfg.timestamp)
    if cfg.table:
        return r.table(cfg.table)
    prepare_path(ctx.spark, cfg, ctx, cfg.path)
    return r.load(cfg.path)


class FromAvro(Extract):
    """Read Avro files."""

    path: str = Field(description="File or directory of .avro files.")
    options: dict[str, Scalar] = Field(default_factory=dict, description="spark-avro reader "
                                       "options, e.g. {\"avroSchema\": \"...\"}.")


@step("extract", "fromAvro", FromAvro)
def from_avro(df: None, cfg: FromAvro, ctx: StepContext) -> DataFrame:
    prepare_path(ctx.spark, cfg, ctx, cfg.path)
    return ctx.spark.read.format("avro").options(**options_of(cfg.options)).load(cfg.path)


# ---------------------------------------------------------------- databases
class FromJdbc(JdbcConnection):
    uses_current = False

    def location(self) -> str | None:
        return f"{self.kind}://{self.database or self.credential_path or ''}/{self.table or 'query'}"

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

    def problems(self):
        if (self.table is None) == (self.query is None):
            return [("table", "give exactly one of table and query.",
                     "Set \"table\", or \"query\" with a SELECT.")]
        return []


def _jdbc_read(cfg: FromJdbc, ctx: StepContext, dialect: str) -> DataFrame:
    from pipeline_defs.steps.jdbc import Connection, JdbcError, java_message
    ep = jdbc_endpoint(cfg, ctx, dialect)
    source = cfg.table or f"({cfg.query}) AS pipeline_query"
    opts = {**ep.spark_options(), "fetchsize": str(cfg.fetch_size), "dbtable": source}
    # One driver-side connection first: a wrong password or host fails here with a message
    # naming host, database and user (Spark's own error hides the whole URL), and the
    # partition bounds come from one min/max query on it.
    with Connection(ctx.spark, ep) as conn:
        try:
            conn.query(f"SELECT * FROM {source} WHERE 1 = 0")
        except Exception as e:  # noqa: BLE001
            what = f"table {cfg.table}" if cfg.table else "the query"
            raise JdbcError(f"cannot read {what} from {ep.describe()}: {java_message(e)}"
                            ) from None
        if cfg.partition_column:
            lo, hi = cfg.lower_bound, cfg.upper_bound
            if lo is None or hi is None:
                c = cfg.partition_column
                blo, bhi = conn.query(f"SELECT min({c}), max({c}) FROM {source}")[0]
                lo = lo if lo is not None else blo
                hi = hi if hi is not None else bhi
                ctx.metadata["partition_bounds"] = f"{lo} .. {hi}"
            if lo is not None and hi is not None:
                opts.update(partitionColumn=cfg.partition_column, lowerBound=str(lo),
                            upperBound=str(hi), numPartitions=str(cfg.num_partitions or 4))
    ctx.metadata["source"] = f"{ep.label} {ep.host}:{ep.port}/{ep.database}"
    return ctx.spark.read.format("jdbc").options(**opts).load()


class FromPostgres(FromJdbc):
    """Read a PostgreSQL table or query over JDBC, in parallel when partitionColumn is set."""

    kind: ClassVar[str] = "postgres"


class FromMySQL(FromJdbc):
    """Read a MySQL table or query over JDBC, in parallel when partitionColumn is set."""

    kind: ClassVar[str] = "mysql"


@step("extract", "fromPostgres", FromPostgres)
def from_postgres(df: None, cfg: FromPostgres, ctx: StepContext) -> DataFrame:
    return _jdbc_read(cfg, ctx, "postgres")


@step("extract", "fromMySQL", FromMySQL)
def from_mysql(df: None, cfg: FromMySQL, ctx: StepContext) -> DataFrame:
    return _jdbc_read(cfg, ctx, "mysql")


# ---------------------------------------------------------------- S3 and Kafka
class FromS3(S3Connection):
    """Read files from an S3 bucket (s3a), in any Spark format."""

    uses_current = False

    def location(self) -> str | None:
        return s3_path(self.bucket, self.path)

    bucket: str = Field(description="Bucket name.")
    path: str = Field(description="Key prefix or file in the bucket, e.g. raw/orders/.")
    format: FileFormat = Field("parquet", description="parquet, csv, json, avro, orc, text, "
                                                      "delta.")
    header: bool | None = Field(None, description="CSV: first line is a header (default true).")
    infer_schema: bool | None = Field(None, description="CSV/JSON: infer column types.")
    delimiter: str | None = Field(None, description="CSV field delimiter.")
    multi_line: bool | None = Field(None, description="JSON/CSV records span lines.")
    options: dict[str, Scalar] = Field(default_factory=dict, description="More reader options.")
    ddl_schema: str | None = Field(None, alias="schema", description="Schema as DDL.")


@step("extract", "fromS3", FromS3)
def from_s3(df: None, cfg: FromS3, ctx: StepContext) -> DataFrame:
    configure_s3(ctx.spark, cfg, ctx, cfg.bucket)
    opts = {k: v for k, v in {"header": cfg.header, "inferSchema": cfg.infer_schema,
                              "delimiter": cfg.delimiter, "multiLine": cfg.multi_line}.items()
            if v is not None}
    opts = options_of({**opts, **cfg.options})
    return _reader(ctx, cfg.format, opts, cfg.ddl_schema).load(s3_path(cfg.bucket, cfg.path))


class FromKafka(KafkaClient):
    """Read a Kafka topic: in batch from earliest to latest offsets (or the ones given), in a
    streaming pipeline as a stream (from latest, unless startingOffsets says otherwise)."""

    topic: str = Field(description="Topic name (comma-separated for several).")
    starting_offsets: str | None = Field(None, description="earliest, latest or JSON offsets. "
                                         "Batch default earliest; streaming default latest.")
    ending_offsets: str | None = Field(None, description="Batch only: latest (default) or JSON.")
    fail_on_data_loss: bool = Field(True, description="Fail when offsets were deleted before "
                                    "being read. The original defaulted to false, silently "
                                    "skipping lost data; set false to get that back.")
    max_offsets_per_trigger: int | None = Field(None, description="Streaming: at most this many "
                                                "offsets per micro-batch.")
    min_partitions: int | None = Field(None, description="Minimum Spark partitions to read with.")
    value_format: Literal["auto", "string", "json", "avro", "raw"] = Field(
        "auto", description="How values are decoded: json (columns of `schema`), avro (with "
        "`avroSchema`), string (one `value` column), raw (bytes). auto: json with `schema` "
        "when given; else json with a schema inferred from up to 1,000 messages of the topic "
        "when they are JSON objects (pin `schema` in production), else string.")
    ddl_schema: str | None = Field(None, alias="schema", description="json: the value's schema "
                                   "as DDL, e.g. \"id BIGINT, amount DECIMAL(10,2)\".")
    avro_schema: str | None = Field(None, description="avro: the writer schema (Avro JSON).")
    include_key: bool = Field(False, description="Keep the message key (as string column "
                                                 "`key`).")
    include_metadata: bool = Field(False, description="Keep kafka_topic, kafka_partition, "
                                   "kafka_offset and kafka_timestamp columns.")
    uses_current = False

    def location(self) -> str | None:
        return f"kafka://{self.topic}"

    def problems(self):
        out = super().problems()
        if self.value_format == "avro" and not self.avro_schema:
            out.append(("avroSchema", "valueFormat avro needs avroSchema.",
                        "Give the writer schema as Avro JSON."))
        return out

    def streaming_problems(self):
        if self.ending_offsets is not None:
            return [("endingOffsets", "a stream has no end offsets.",
                     "Remove it; a stream stops at the pipeline's streaming.timeout, with "
                     "trigger availableNow, or when the run is terminated.")]
        return []


def kafka_options(cfg, ctx: StepContext) -> dict[str, str]:
    props = credentials(cfg, ctx, {"bootstrap.servers": cfg.bootstrap_servers,
                                   **cfg.properties}, ("bootstrap.servers",), "kafka")
    return {f"kafka.{k}": str(v) for k, v in props.items()}


def _infer_json_schema(ctx: StepContext, opts: dict[str, str], topic: str) -> str | None:
    """The schema of the topic's JSON values, from a sample read in batch (None if the values
    are not all JSON objects, or the topic is empty)."""
    sample = ctx.spark.read.format("kafka").options(**{
        **{k: v for k, v in opts.items() if k.startswith("kafka.") or k == "subscribe"},
        "startingOffsets": "earliest", "endingOffsets": "latest"}).load() \
        .selectExpr("CAST(value AS STRING) AS v").limit(1000)
    values = [r.v for r in sample.collect() if r.v is not None]
    if not values or not all(v.lstrip().startswith("{") for v in values):
        return None
    schema = ctx.spark.read.json(ctx.spark.sparkContext.parallelize(values)).schema
    if "_corrupt_record" in schema.fieldNames():
        return None
    ddl = ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in schema.fields)
    ctx.metadata["inferred_schema"] = ddl
    ctx.log.warning(f"fromKafka: the values of '{topic}' are decoded as JSON with the schema "
                    f"inferred from {len(values)} messages: {ddl}. Pin it with \"schema\".")
    return ddl


def decode_kafka(raw: DataFrame, cfg: FromKafka, ddl: str | None) -> DataFrame:
    from pyspark.sql import functions as F
    cols = [F.col("key").cast("string").alias("key")] if cfg.include_key else []
    fmt = cfg.value_format
    if fmt == "auto":
        fmt = "json" if ddl else "string"
    if fmt == "json":
        value = [F.from_json(F.col("value").cast("string"), ddl).alias("v")]
    elif fmt == "avro":
        from pyspark.sql.avro.functions import from_avro
        value = [from_avro(F.col("value"), cfg.avro_schema).alias("v")]
    elif fmt == "string":
        value = [F.col("value").cast("string").alias("value")]
    else:
        value = [F.col("value")]
    meta = [F.col(c).alias(f"kafka_{c}") for c in ("topic", "partition", "offset", "timestamp")
            ] if cfg.include_metadata else []
    out = raw.select(*cols, *value, *meta)
    if fmt in ("json", "avro"):
        out = out.select(*[c for c in out.columns if c != "v"], "v.*")
    return out


@step("extract", "fromKafka", FromKafka, streams=True)
def from_kafka(df: None, cfg: FromKafka, ctx: StepContext) -> DataFrame:
    streaming = bool(ctx.options.get("streaming"))
    opts = {**kafka_options(cfg, ctx), "subscribe": cfg.topic,
            "failOnDataLoss": str(cfg.fail_on_data_loss).lower(),
            "startingOffsets": cfg.starting_offsets or ("latest" if streaming else "earliest")}
    if cfg.min_partitions:
        opts["minPartitions"] = str(cfg.min_partitions)
    ddl = cfg.ddl_schema
    if ddl is None and cfg.value_format in ("auto", "json"):
        ddl = _infer_json_schema(ctx, opts, cfg.topic)
        if ddl is None and cfg.value_format == "json":
            raise UnsupportedError(f"fromKafka: valueFormat json needs \"schema\" (the topic "
                                  f"'{cfg.topic}' has no JSON sample to infer it from).")
    if streaming:
        if cfg.max_offsets_per_trigger:
            opts["maxOffsetsPerTrigger"] = str(cfg.max_offsets_per_trigger)
        raw = ctx.spark.readStream.format("kafka").options(**opts).load()
    else:
        opts["endingOffsets"] = cfg.ending_offsets or "latest"
        raw = ctx.spark.read.format("kafka").options(**opts).load()
    return decode_kafka(raw, cfg, ddl)
