"""Connection settings shared by extract and load methods: credentials, JDBC, S3."""
from __future__ import annotations

import difflib
import os
import re
from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr, model_validator
from pyspark.sql import SparkSession

from pipeline_defs import secrets
from pipeline_defs.config.model import FormatModel, StepModel
from pipeline_defs.errors import CredentialError
from pipeline_defs.steps.context import StepContext

FileFormat = Literal["parquet", "csv", "json", "avro", "orc", "text", "delta"]
Scalar = str | int | float | bool


class Credentialed(StepModel):
    """Steps that may read credentials from Vault."""

    credential_path: str | None = Field(
        None, description="Vault KV path of the credentials, e.g. secret/data/postgres/prod. "
                          "Without it, credentials come from this config (with a warning).")


SECRET_KEYS = ("password", "secretAccessKey", "sessionToken", "accessKeyId")


def credentials(cfg: Credentialed, ctx: StepContext, literal: dict[str, Any],
                required: tuple[str, ...], kind: str) -> dict[str, Any]:
    """The connection's credentials: from Vault when `credentialPath` is set, else from the
    config (with a warning). Every access, granted or failed, is audited (never a value)."""
    where = f"pipeline '{ctx.pipeline}', step {ctx.step} ({ctx.method})"
    record = {"pipeline": ctx.pipeline, "run_id": ctx.run_id, "step": ctx.step,
              "method": ctx.method, "credentialPath": cfg.credential_path, "type": kind,
              "source": "vault" if cfg.credential_path else "config"}
    try:
        c = _credentials(cfg, ctx, literal, required, where)
    except Exception as e:
        _audit(ctx, {**record, "outcome": "failure", "error": type(e).__name__})
        raise
    _audit(ctx, {**record, "outcome": "success", "keys": sorted(c)})
    return c


def _audit(ctx: StepContext, record: dict[str, Any]) -> None:
    if ctx.audit is not None:
        ctx.audit(record)


def _credentials(cfg: Credentialed, ctx: StepContext, literal: dict[str, Any],
                 required: tuple[str, ...], where: str) -> dict[str, Any]:
    literal = {k: (v.get_secret_value() if isinstance(v, SecretStr) else v)
               for k, v in literal.items() if v is not None}
    if cfg.credential_path:
        if ctx.read_secret is None:
            raise CredentialError(f"{where}: credentialPath '{cfg.credential_path}' needs Vault, "
                                  "and none is configured. Set VAULT_ADDR and VAULT_TOKEN.")
        secret = dict(ctx.read_secret(cfg.credential_path))
        merged = {**literal, **secret}
        source = f"Vault secret '{cfg.credential_path}'"
    else:
        merged = literal
        secrets.remember_values_of(merged)
        if any(k in merged for k in SECRET_KEYS):
            ctx.log.warning(f"{where} reads credentials from its own config; "
                            "keep them in Vault and set credentialPath.")
        source = "the step config"
    missing = [k for k in required if merged.get(k) in (None, "")]
    if missing:
        known = ", ".join(f"{k} '{merged[k]}'" for k in ("host", "port", "database", "username")
                          if merged.get(k) not in (None, ""))
        raise CredentialError(f"{where}: {source} lacks {', '.join(missing)}"
                              + (f" (it has {known})" if known else "") +
                              f". Add {'them' if len(missing) > 1 else 'it'} there.")
    return merged


# ---------------------------------------------------------------- JDBC
class JdbcConnection(Credentialed):
    host: str | None = Field(None, description="Database host (when not in Vault).")
    port: int | None = Field(None, description="Port; 5432 for PostgreSQL, 3306 for MySQL.")
    database: str | None = Field(None, description="Database name (when not in Vault).")
    username: str | None = Field(None, description="User (when not in Vault).")
    password: SecretStr | None = Field(None, description="Password; prefer credentialPath.")
    properties: dict[str, str] = Field(default_factory=dict,
                                       description="Extra JDBC driver properties.")


def jdbc_endpoint(cfg: JdbcConnection, ctx: StepContext, dialect: str):
    """Where and as whom to connect, from Vault (credentialPath) or the step config."""
    from pipeline_defs.steps.jdbc import endpoint
    c = credentials(cfg, ctx, {"host": cfg.host, "port": cfg.port, "database": cfg.database,
                               "username": cfg.username, "password": cfg.password},
                    ("host", "database", "username", "password"), "jdbc")
    source = (f"Vault secret '{cfg.credential_path}'" if cfg.credential_path
              else "the step config")
    return endpoint(dialect, c, cfg.properties, source)


# ---------------------------------------------------------------- Kafka
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


def configure_s3(spark: SparkSession, cfg: S3Connection, ctx: StepContext, bucket: str) -> None:
    """Per-bucket s3a settings, so two buckets with two sets of credentials can coexist."""
    c = credentials(cfg, ctx, {"accessKeyId": cfg.access_key_id,
                               "secretAccessKey": cfg.secret_access_key,
                               "sessionToken": cfg.session_token, "region": cfg.region,
                               "endpoint": cfg.endpoint}, (), "s3")
    hconf = spark.sparkContext._jsc.hadoopConfiguration()
    prefix = f"fs.s3a.bucket.{bucket}."
    if c.get("accessKeyId"):
        hconf.set(prefix + "access.key", str(c["accessKeyId"]))
        hconf.set(prefix + "secret.key", str(c.get("secretAccessKey", "")))
        if c.get("sessionToken"):
            hconf.set(prefix + "session.token", str(c["sessionToken"]))
            hconf.set(prefix + "aws.credentials.provider",
                      "org.apache.hadoop.fs.s3a.TemporaryAWSCredentialsProvider")
        else:
            hconf.set(prefix + "aws.credentials.provider",
                      "org.apache.hadoop.fs.s3a.SimpleAWSCredentialsProvider")
    if c.get("region"):
        hconf.set(prefix + "endpoint.region", str(c["region"]))
    endpoint = (c.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL_S3")
                or os.environ.get("AWS_ENDPOINT_URL"))
    if endpoint:
        hconf.set(prefix + "endpoint", str(endpoint))
        hconf.set(prefix + "path.style.access", "true")


class PathCredentials(S3Connection):
    """File-like steps: credentials are only used when the path is on s3a://."""


def prepare_path(spark: SparkSession, cfg: PathCredentials, ctx: StepContext, path: str) -> None:
    bucket = bucket_of(path)
    if bucket and (cfg.credential_path or cfg.access_key_id or cfg.endpoint or cfg.region):
        configure_s3(spark, cfg, ctx, bucket)


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
# read by one task; "multiLine": false splits large files whose fields hold none).
CSV_READ = {"header": "true", "escape": '"', "multiLine": "true"}
CSV_WRITE = {"header": "true", "escape": '"'}


def csv_read_options(options: dict[str, str], ddl: str | None) -> dict[str, str]:
    return with_defaults({**CSV_READ, **({} if ddl else {"inferSchema": "true"})}, options)


def write_options(fmt: str, options: dict[str, str]) -> dict[str, str]:
    return with_defaults(CSV_WRITE, options) if fmt == "csv" else options


__all__ = ["Credentialed", "FileFormat", "FormatModel", "JdbcConnection", "KafkaClient",
           "PathCredentials",
           "S3Connection", "Scalar", "configure_s3", "credentials", "csv_read_options",
           "jdbc_endpoint", "options_of", "prepare_path", "s3_path", "with_defaults",
           "write_options"]
