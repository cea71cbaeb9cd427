"""Files and S3: fromFile, fromAvro, fromS3, toFile, toAvro, toS3 (any Hadoop path: local,
s3a://, hdfs://), in batch and, for files, as streams; per-bucket S3 settings; CSV as
RFC 4180."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Literal

from pydantic import Field, SecretStr
from pyspark.sql import DataFrame, DataFrameReader, SparkSession
from pyspark.sql.streaming import StreamingQuery

from pipeline_defs.config.model import AssetKeyParts, asset_key_field
from pipeline_defs.steps import csvsplit
from pipeline_defs.steps.context import LoadResult, StepContext
from pipeline_defs.steps.credentials import Credentialed, credentials
from pipeline_defs.steps.errors import missing_columns
from pipeline_defs.steps.registry import step, stream_reader, stream_writer
from pipeline_defs.steps.streaming import Sink, StreamingSink

FileFormat = Literal["parquet", "csv", "json", "avro", "orc", "text", "delta"]
Scalar = str | int | float | bool
WriteMode = Literal["append", "overwrite", "errorifexists", "error", "ignore"]


# ---------------------------------------------------------------- S3 (s3a)
class S3Connection(Credentialed):
    access_key_id: SecretStr | None = Field(None, description="AWS access key id; prefer "
                                                                "credentialPath.")
    secret_access_key: SecretStr | None = Field(None, description="AWS secret key; prefer "
                                                                    "credentialPath.")
    session_token: SecretStr | None = Field(None, description="Session token (temporary "
                                                                "credentials).")
    region: str | None = Field(None, description="Bucket region, e.g. eu-west-1.")
    endpoint: str | None = Field(None, description="S3-compatible endpoint (MinIO, ...), e.g. "
                                                   "http://127.0.0.1:9000. Default AWS.")


def s3_path(bucket: str, path: str) -> str:
    return f"s3a://{bucket}/{path.lstrip('/')}"


def bucket_of(path: str) -> str | None:
    if path.startswith(("s3a://", "s3://", "s3n://")):
        return path.split("://", 1)[1].split("/", 1)[0]
    return None


def _env_endpoint() -> str | None:
    """The S3 endpoint the AWS tools' environment names (the S3-specific one first)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def configure_s3(spark: SparkSession, cfg: S3Connection, ctx: StepContext, bucket: str) -> None:
    """Per-bucket s3a settings, so two buckets with two sets of credentials can coexist."""
    c = credentials(cfg, ctx, {"accessKeyId": cfg.access_key_id,
                               "secretAccessKey": cfg.secret_access_key,
                               "sessionToken": cfg.session_token, "region": cfg.region,
                               "endpoint": cfg.endpoint}, (), "s3")
    prefix = f"fs.s3a.bucket.{bucket}."
    settings: dict[str, str] = {}
    if c.get("accessKeyId"):
        settings[prefix + "access.key"] = str(c["accessKeyId"])
        settings[prefix + "secret.key"] = str(c.get("secretAccessKey", ""))
        if c.get("sessionToken"):
            settings[prefix + "session.token"] = str(c["sessionToken"])
            settings[prefix + "aws.credentials.provider"] = \
                "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider"
        else:
            settings[prefix + "aws.credentials.provider"] = \
                "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider"
    if c.get("region"):
        settings[prefix + "endpoint.region"] = str(c["region"])
    endpoint = c.get("endpoint") or _env_endpoint()
    if endpoint:
        settings[prefix + "endpoint"] = str(endpoint)
        settings[prefix + "path.style.access"] = "true"
    hconf = spark.sparkContext._jsc.hadoopConfiguration()
    changed = [k for k, v in settings.items() if hconf.get(k) not in (None, v)]
    for k, v in settings.items():
        hconf.set(k, v)
    if changed:
        # Hadoop caches one file system per bucket, made with the settings of its time: a
        # later step (or run in this process) with other credentials or another endpoint
        # for the bucket would silently go on with the old ones. Close it: the next use
        # makes a new one from these settings.
        jvm = spark._jvm
        jvm.org.apache.hadoop.fs.FileSystem.get(jvm.java.net.URI(f"s3a://{bucket}/"),
                                                hconf).close()


class PathCredentials(S3Connection):
    """File-like steps: credentials are only used when the path is on s3a://."""

    def location(self) -> str | None:
        return getattr(self, "path", None) or getattr(self, "table", None)

    def table_name(self) -> str | None:
        table = getattr(self, "table", None)  # a catalog table (Delta): db.name -> name
        if not getattr(self, "path", None) and table:
            return table.rsplit(".", 1)[-1]
        return super().table_name()


def prepare_path(spark: SparkSession, cfg: PathCredentials, ctx: StepContext, path: str) -> None:
    bucket = bucket_of(path)
    if bucket and (cfg.credential_path or cfg.access_key_id or cfg.endpoint or cfg.region
                   or _env_endpoint()):
        configure_s3(spark, cfg, ctx, bucket)


# ---------------------------------------------------------------- options
def options_of(cfg_options: dict[str, Scalar]) -> dict[str, str]:
    return {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in cfg_options.items()}


def with_defaults(defaults: dict[str, str], options: dict[str, str]) -> dict[str, str]:
    """Spark options: the defaults, then the user's, which win (Spark's option names are
    case-insensitive, so a user's "multiline" replaces a default "multiLine")."""
    given = {k.lower() for k in options}
    return {**{k: v for k, v in defaults.items() if k.lower() not in given}, **options}


# CSV as RFC 4180 has it, and as PostgreSQL COPY, pandas, Excel and DuckDB write it: a quote
# inside a quoted field is doubled (Spark's own default escape is a backslash, which reads
# `""` back literally), and a quoted field may hold line breaks (multiLine: each file is then
# read by one task). Local files whose quoted fields hold none are read split (csvsplit.py).
CSV_READ = {"header": "true", "escape": '"', "multiLine": "true"}
BIG_CSV = 128 << 20  # a file this big read by one task is worth a line in the log
CSV_WRITE = {"header": "true", "escape": '"'}


def csv_read_options(options: dict[str, str], ddl: str | None) -> dict[str, str]:
    return with_defaults({**CSV_READ, **({} if ddl else {"inferSchema": "true"})}, options)


def write_options(fmt: str, options: dict[str, str]) -> dict[str, str]:
    return with_defaults(CSV_WRITE, options) if fmt == "csv" else options


# ---------------------------------------------------------------- reads
class Extract(PathCredentials):
    """Extracts that read a path (credentials used only for s3a:// paths)."""

    uses_current = False


class FromFile(Extract):
    """Read files from any Hadoop path (local, s3a://, hdfs://) in any Spark format."""

    path: str = Field(description="File or directory, e.g. /data/orders or s3a://bucket/orders.")
    format: FileFormat = Field("parquet", description="parquet, csv, json, avro, orc, text or "
                                                      "delta.")
    options: dict[str, Scalar] = Field(
        default_factory=dict, description="Spark reader options, e.g. {\"header\": true}. CSV "
        "defaults (RFC 4180): header true, escape '\"' (a doubled quote is a quote), multiLine "
        "true (quoted fields may hold line breaks) except for local files found to hold none, "
        "which are read in parallel; false splits any big file. inferSchema true unless "
        "`schema` is given.")
    ddl_schema: str | None = Field(
        None, alias="schema", description="Schema as a DDL string, e.g. \"id BIGINT, name "
        "STRING\". Giving it saves the inference pass over CSV and JSON.")

    def scans_natively(self) -> bool:
        return self.format == "parquet"

    def declared_schema(self) -> str | None:
        return self.ddl_schema


def _reader(ctx: StepContext, fmt: str, options: dict[str, str], ddl: str | None,
            path: str | None = None) -> DataFrameReader:
    r = ctx.spark.read.format(fmt)
    if fmt == "csv":
        if path and "multiline" not in {k.lower() for k in options}:
            options = {**options, "multiLine": _multi_line(ctx, path, options)}
        options = csv_read_options(options, ddl)
    r = r.options(**options)
    return r.schema(ddl) if ddl else r


def _multi_line(ctx: StepContext, path: str, options: dict[str, str]) -> str:
    """multiLine unless the files are local CSV whose quoted fields hold no line break
    (csvsplit.py): those are read split, several tasks per file, to the same rows."""
    files = csvsplit.local_files(path) or []  # listed once, for both questions
    if csvsplit.splittable(path, options, files):
        return "false"
    if any(f.stat().st_size > BIG_CSV for f in files):
        ctx.log.info("%s: quoted fields hold line breaks (or the files could not be scanned), "
                     "so each file is read by one task; if no field holds one, "
                     "\"options\": {\"multiLine\": false} reads them in parallel", path)
    return "true"


def prescan_csv_inputs(steps) -> None:
    """Starts the scans `_multi_line` will ask for, of the local CSV files these loaded steps
    read, in the background (`pipeline run`: while the JVM and Dagster start)."""
    inputs = []
    for s in steps:
        cfg = s.config
        if s.method == "fromFile" and isinstance(cfg, FromFile) and cfg.format == "csv":
            options = options_of(cfg.options)
            if "multiline" not in {k.lower() for k in options}:
                inputs.append((cfg.path, options))
    csvsplit.prescan(inputs)


@step("extract", "fromFile", FromFile, asset_kind=lambda c: c.format)
def from_file(df: None, cfg: FromFile, ctx: StepContext) -> DataFrame:
    prepare_path(ctx.spark, cfg, ctx, cfg.path)
    return _reader(ctx, cfg.format, options_of(cfg.options), cfg.ddl_schema,
                   cfg.path).load(cfg.path)


@stream_reader("fromFile")
def read_file_stream(cfg: FromFile, ctx: StepContext) -> DataFrame:
    """New files in the directory; without `schema`, the files there now give it."""
    prepare_path(ctx.spark, cfg, ctx, cfg.path)
    opts = options_of(cfg.options)
    schema = cfg.ddl_schema or _reader(ctx, cfg.format, opts, None).load(cfg.path).schema
    if cfg.format == "csv":
        opts = with_defaults(CSV_READ, opts)
    return ctx.spark.readStream.format(cfg.format).options(**opts).schema(schema).load(cfg.path)


class FromAvro(Extract):
    """Read Avro files."""

    path: str = Field(description="File or directory of .avro files.")
    options: dict[str, Scalar] = Field(default_factory=dict, description="spark-avro reader "
                                       "options, e.g. {\"avroSchema\": \"...\"}.")


@step("extract", "fromAvro", FromAvro, asset_kind="avro")
def from_avro(df: None, cfg: FromAvro, ctx: StepContext) -> DataFrame:
    prepare_path(ctx.spark, cfg, ctx, cfg.path)
    return ctx.spark.read.format("avro").options(**options_of(cfg.options)).load(cfg.path)


class FromS3(S3Connection):
    """Read files from an S3 bucket (s3a), in any Spark format."""

    uses_current = False

    def location(self) -> str | None:
        return s3_path(self.bucket, self.path)

    def scans_natively(self) -> bool:
        return self.format == "parquet"

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


@step("extract", "fromS3", FromS3, asset_kind=lambda c: c.format)
def from_s3(df: None, cfg: FromS3, ctx: StepContext) -> DataFrame:
    configure_s3(ctx.spark, cfg, ctx, cfg.bucket)
    opts = {k: v for k, v in {"header": cfg.header, "inferSchema": cfg.infer_schema,
                              "delimiter": cfg.delimiter, "multiLine": cfg.multi_line}.items()
            if v is not None}
    opts = options_of({**opts, **cfg.options})
    return _reader(ctx, cfg.format, opts, cfg.ddl_schema).load(s3_path(cfg.bucket, cfg.path))


# ---------------------------------------------------------------- writes
class Load(PathCredentials):
    asset_key: AssetKeyParts | None = asset_key_field("the table")


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
        missing_columns(df, cfg.partition_by, "partitionBy")
    opts = write_options(fmt, with_defaults(extra or {}, options_of(cfg.options)))
    w = df.write.format(fmt).mode(cfg.mode).options(**opts)
    if cfg.compression:
        w = w.option("compression", cfg.compression)
    if cfg.partition_by:
        w = w.partitionBy(*cfg.partition_by)
    with _removed_if_failed(ctx, path):
        w.save(path)
    return LoadResult(path, fmt, cfg.mode)


@contextmanager
def _removed_if_failed(ctx: StepContext, path: str):
    """A write to a directory that does not exist yet: if it fails, what it left (the
    directory, an aborted job's `_temporary`) is removed, so nothing half-written stays and
    a retry (mode errorifexists) does not find the path taken by its own failed attempt.
    When the store was unreachable then (an S3 server down), the next write finds the
    directory holding only that `_temporary`, and removes it first."""
    jvm = ctx.spark._jvm
    p = jvm.org.apache.hadoop.fs.Path(path)
    fs = p.getFileSystem(ctx.spark.sparkContext._jsc.hadoopConfiguration())
    existed = fs.exists(p)
    if existed and fs.getFileStatus(p).isDirectory():
        names = [str(st.getPath().getName()) for st in fs.listStatus(p)]
        # (two writes to one new path at once are unsafe in Spark anyway: both commit
        # through the same _temporary/0, and the first to finish deletes it)
        if names and all(n == "_temporary" for n in names):
            ctx.log.warning(f"{path} holds only the _temporary of an interrupted write: "
                            "removed before this write")
            fs.delete(p, True)
            existed = False
    try:
        yield
    except BaseException:
        if not existed:
            try:
                fs.delete(p, True)
            except Exception:  # noqa: BLE001 - the store is unreachable: the error says why
                pass
        raise


# ---------------------------------------------------------------- files
class ToFile(FileSink):
    """Write files to any Hadoop path in any Spark format."""

    path: str = Field(description="Output directory, e.g. /data/out/orders or s3a://b/orders.")
    format: FileFormat = Field("parquet", description="parquet, csv, json, avro, orc, text, "
                                                      "delta.")


@step("load", "toFile", ToFile, asset_kind=lambda c: c.format)
def to_file(df: DataFrame, cfg: ToFile, ctx: StepContext) -> LoadResult:
    prepare_path(ctx.spark, cfg, ctx, cfg.path)
    return _write_files(df, cfg, ctx, cfg.format, cfg.path)


class ToAvro(FileSink):
    """Write Avro files."""

    path: str = Field(description="Output directory.")
    record_name: str | None = Field(None, description="Avro record name (default "
                                    "topLevelRecord).")
    record_namespace: str | None = Field(None, description="Avro record namespace.")


@step("load", "toAvro", ToAvro, asset_kind="avro")
def to_avro(df: DataFrame, cfg: ToAvro, ctx: StepContext) -> LoadResult:
    prepare_path(ctx.spark, cfg, ctx, cfg.path)
    return _write_files(df, cfg, ctx, "avro", cfg.path, _avro_options(cfg))


def _avro_options(cfg: ToAvro) -> dict[str, str]:
    return {k: v for k, v in {"recordName": cfg.record_name,
                              "recordNamespace": cfg.record_namespace}.items() if v}


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
    asset_key: AssetKeyParts | None = asset_key_field("the table")

    def location(self) -> str | None:
        return s3_path(self.bucket, self.path)


@step("load", "toS3", ToS3, asset_kind=lambda c: c.format)
def to_s3(df: DataFrame, cfg: ToS3, ctx: StepContext) -> LoadResult:
    configure_s3(ctx.spark, cfg, ctx, cfg.bucket)
    return _write_files(df, cfg, ctx, cfg.format, s3_path(cfg.bucket, cfg.path))


def _write_file_stream(df: DataFrame, cfg: FileSink, ctx: StepContext, sink: Sink, fmt: str,
                       extra: dict[str, str] | None = None) -> StreamingQuery:
    prepare_path(ctx.spark, cfg, ctx, cfg.path)
    w = sink.writer(df).format(fmt).options(
        **write_options(fmt, with_defaults(extra or {}, options_of(cfg.options))))
    if cfg.compression:
        w = w.option("compression", cfg.compression)
    if cfg.partition_by:
        w = w.partitionBy(*cfg.partition_by)
    return w.start(cfg.path)


@stream_writer("toFile")
def write_file_stream(df: DataFrame, cfg: ToFile, ctx: StepContext, sink: Sink
                      ) -> StreamingQuery:
    return _write_file_stream(df, cfg, ctx, sink, cfg.format)


@stream_writer("toAvro")
def write_avro_stream(df: DataFrame, cfg: ToAvro, ctx: StepContext, sink: Sink
                      ) -> StreamingQuery:
    return _write_file_stream(df, cfg, ctx, sink, "avro", _avro_options(cfg))

