"""Kafka: the connection (brokers and client properties, from Vault or the config, in the
original's literal form too), fromKafka in batch and as a stream with value decoding
(json/avro/string/raw, an inferred schema), toKafka in batch and as a stream."""
from __future__ import annotations

import difflib
import re
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipeline_defs.common.errors import UnsupportedError
from pipeline_defs.config.model import AssetKeyParts, asset_key_field
from pipeline_defs.steps.context import LoadResult, StepContext
from pipeline_defs.steps.credentials import Credentialed, credentials
from pipeline_defs.steps.names import quoted
from pipeline_defs.steps.registry import step, stream_reader, stream_writer
from pipeline_defs.steps.streaming import Sink, StreamingSink

# ---------------------------------------------------------------- the connection
# The original format wrote Kafka client properties as literal keys of the step's config
# ("bootstrap.servers": "...", "security.protocol": "SASL_SSL"): dotted, lower case.
KAFKA_PROPERTY = re.compile(r"^[a-z][a-z0-9-]*(\.[a-z0-9-]+)+$")
_KAFKA_PLAIN = ("acks", "retries")  # client properties without a dot
_KAFKA_KNOWN = (
    "bootstrap.servers", "security.protocol", "sasl.mechanism", "sasl.jaas.config",
    "sasl.kerberos.service.name", "sasl.login.callback.handler.class",
    "sasl.client.callback.handler.class", "sasl.oauthbearer.token.endpoint.url",
    "ssl.truststore.location", "ssl.truststore.password", "ssl.truststore.type",
    "ssl.keystore.location", "ssl.keystore.password", "ssl.keystore.type", "ssl.key.password",
    "ssl.endpoint.identification.algorithm", "ssl.protocol", "client.id", "client.rack",
    "group.id", "max.poll.records", "fetch.max.bytes", "fetch.min.bytes", "fetch.max.wait.ms",
    "max.partition.fetch.bytes", "request.timeout.ms", "session.timeout.ms",
    "default.api.timeout.ms", "metadata.max.age.ms", "linger.ms", "batch.size",
    "compression.type", "max.request.size", "delivery.timeout.ms", "buffer.memory",
    "max.in.flight.requests.per.connection", "enable.idempotence", "isolation.level",
    "connections.max.idle.ms", "receive.buffer.bytes", "send.buffer.bytes",
    "reconnect.backoff.ms", "retry.backoff.ms")
# Spark's Kafka source and sink set these themselves and refuse them as options.
_KAFKA_SPARK_OWNS = {
    "auto.offset.reset": "use \"startingOffsets\" instead",
    "enable.auto.commit": "Spark tracks offsets in its checkpoint; remove it",
    "key.deserializer": "keys are bytes; set \"includeKey\" to keep them as a string",
    "value.deserializer": "use \"valueFormat\" (json, avro, string, raw)",
    "key.serializer": "Spark writes the key column as bytes; remove it",
    "value.serializer": "Spark writes the value column as bytes; remove it",
    "interceptor.classes": "Spark does not support consumer interceptors; remove it",
}


class KafkaClient(Credentialed):
    """Kafka's connection: brokers and client properties, from Vault (credentialPath) or the
    config. Literal client properties in the config (the original's form, e.g.
    "bootstrap.servers": "broker:9092", "security.protocol": "SASL_SSL") are accepted and
    mapped onto bootstrapServers and properties."""

    model_config = {"json_schema_extra": {"patternProperties": {
        pattern: {"type": ["string", "number", "boolean"], "description": "A Kafka client "
                  "property, as the original format wrote it (e.g. \"security.protocol\")."}
        for pattern in (KAFKA_PROPERTY.pattern, f"^({'|'.join(_KAFKA_PLAIN)})$")}}}

    bootstrap_servers: str | None = Field(None, description="host:port list, when not in the "
                                                            "credential secret.")
    properties: dict[str, str] = Field(default_factory=dict, description="Kafka client "
                                       "properties (without the kafka. prefix), e.g. "
                                       "{\"security.protocol\": \"SASL_SSL\"}.")
    client_kind: ClassVar[str] = "client"

    @model_validator(mode="before")
    @classmethod
    def _literal_properties(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        literal = {k: v for k, v in data.items() if isinstance(k, str) and
                   (KAFKA_PROPERTY.match(k) or k in _KAFKA_PLAIN)}
        if not literal:
            return data
        rest = {k: v for k, v in data.items() if k not in literal}
        props = dict(rest.get("properties") or {})
        brokers = literal.pop("bootstrap.servers", None)
        if brokers is not None and "bootstrapServers" not in rest:
            rest["bootstrapServers"] = brokers
        props.update({k: str(v).lower() if isinstance(v, bool) else str(v)
                      for k, v in literal.items()})
        rest["properties"] = props
        return rest

    def problems(self):
        out = []
        for key in self.properties:
            if key in _KAFKA_SPARK_OWNS:
                out.append((key, f"Spark sets '{key}' itself.",
                            _KAFKA_SPARK_OWNS[key][0].upper() + _KAFKA_SPARK_OWNS[key][1:]
                            + "."))
            elif key == "bootstrap.servers":
                out.append((key, "the brokers go in bootstrapServers.",
                            "Move it to \"bootstrapServers\"."))
            elif key not in _KAFKA_KNOWN and key not in _KAFKA_PLAIN:
                guess = difflib.get_close_matches(key, _KAFKA_KNOWN, n=1, cutoff=0.85)
                if guess:
                    out.append((key, f"'{key}' is no Kafka client property.",
                                f"Did you mean '{guess[0]}'?"))
        return out


def kafka_options(cfg: KafkaClient, ctx: StepContext) -> dict[str, str]:
    props = credentials(cfg, ctx, {"bootstrap.servers": cfg.bootstrap_servers,
                                   **cfg.properties}, ("bootstrap.servers",), "kafka")
    return {f"kafka.{k}": str(v) for k, v in props.items()}


# ---------------------------------------------------------------- fromKafka
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

    def table_name(self) -> str | None:
        return self.topic.split(",")[0].strip()

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
    ddl = ", ".join(f"{quoted(f.name)} {f.dataType.simpleString()}" for f in schema.fields)
    ctx.metadata["inferred_schema"] = ddl
    ctx.log.warning(f"fromKafka: the values of '{topic}' are decoded as JSON with the schema "
                    f"inferred from {len(values)} messages: {ddl}. Pin it with \"schema\".")
    return ddl


def decode_kafka(raw: DataFrame, cfg: FromKafka, ddl: str | None) -> DataFrame:
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


def _read_options(cfg: FromKafka, ctx: StepContext, starting: str) -> dict[str, str]:
    opts = {**kafka_options(cfg, ctx), "subscribe": cfg.topic,
            "failOnDataLoss": str(cfg.fail_on_data_loss).lower(),
            "startingOffsets": cfg.starting_offsets or starting}
    if cfg.min_partitions:
        opts["minPartitions"] = str(cfg.min_partitions)
    return opts


def _value_schema(cfg: FromKafka, ctx: StepContext, opts: dict[str, str]) -> str | None:
    ddl = cfg.ddl_schema
    if ddl is None and cfg.value_format in ("auto", "json"):
        ddl = _infer_json_schema(ctx, opts, cfg.topic)
        if ddl is None and cfg.value_format == "json":
            raise UnsupportedError(f"fromKafka: valueFormat json needs \"schema\" (the topic "
                                   f"'{cfg.topic}' has no JSON sample to infer it from).")
    return ddl


@step("extract", "fromKafka", FromKafka, asset_kind="kafka")
def from_kafka(df: None, cfg: FromKafka, ctx: StepContext) -> DataFrame:
    """Earliest (or startingOffsets) to latest (or endingOffsets), decoded."""
    opts = _read_options(cfg, ctx, "earliest")
    ddl = _value_schema(cfg, ctx, opts)
    opts["endingOffsets"] = cfg.ending_offsets or "latest"
    return decode_kafka(ctx.spark.read.format("kafka").options(**opts).load(), cfg, ddl)


@stream_reader("fromKafka")
def read_kafka_stream(cfg: FromKafka, ctx: StepContext) -> DataFrame:
    """From latest (or startingOffsets), at most maxOffsetsPerTrigger per micro-batch."""
    opts = _read_options(cfg, ctx, "latest")
    ddl = _value_schema(cfg, ctx, opts)
    if cfg.max_offsets_per_trigger:
        opts["maxOffsetsPerTrigger"] = str(cfg.max_offsets_per_trigger)
    return decode_kafka(ctx.spark.readStream.format("kafka").options(**opts).load(), cfg, ddl)


# ---------------------------------------------------------------- toKafka
class ToKafka(KafkaClient, StreamingSink):
    """Write rows to a Kafka topic: key/value columns, or each whole row as JSON."""
    sql_fields: ClassVar[frozenset[str]] = frozenset({"keyColumn", "valueColumn"})  # SQL

    topic: str = Field(description="Topic name.")
    key_column: str | None = Field(None, description="Column (or SQL expression) for the key.")
    value_column: str | None = Field(None, description="Column (or SQL expression) for the "
                                     "value; default: the whole row as JSON.")
    asset_key: AssetKeyParts | None = asset_key_field("the topic")

    def location(self) -> str | None:
        return f"kafka://{self.topic}"

    def table_name(self) -> str | None:
        return self.topic

    def catalog_name(self) -> str | None:
        return self.topic


def kafka_frame(df: DataFrame, cfg: ToKafka) -> DataFrame:
    """key/value columns for Kafka: the given columns, or the whole row as JSON."""
    value = (F.expr(cfg.value_column).cast("string") if cfg.value_column
             else F.to_json(F.struct(*[F.col(c) for c in df.columns])))
    cols = [value.alias("value")]
    if cfg.key_column:
        cols.append(F.expr(cfg.key_column).cast("string").alias("key"))
    return df.select(*cols)


@step("load", "toKafka", ToKafka, asset_kind="kafka")
def to_kafka(df: DataFrame, cfg: ToKafka, ctx: StepContext) -> LoadResult:
    opts = {**kafka_options(cfg, ctx), "topic": cfg.topic}
    kafka_frame(df, cfg).write.format("kafka").options(**opts).save()
    return LoadResult(f"kafka://{cfg.topic}", "kafka", "append")


@stream_writer("toKafka")
def write_kafka_stream(df: DataFrame, cfg: ToKafka, ctx: StepContext, sink: Sink
                       ) -> StreamingQuery:
    return sink.writer(kafka_frame(df, cfg), default_trigger={"processingTime": "0 seconds"}) \
        .format("kafka").options(**kafka_options(cfg, ctx), topic=cfg.topic).start()
