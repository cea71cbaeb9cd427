"""Connection settings shared by extract and load methods: credentials, JDBC, S3."""
from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import Field, SecretStr
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


__all__ = ["Credentialed", "FileFormat", "FormatModel", "JdbcConnection", "PathCredentials",
           "S3Connection", "Scalar", "configure_s3", "credentials", "jdbc_endpoint", "options_of",
           "prepare_path", "s3_path"]
