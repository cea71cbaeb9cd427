"""PostgreSQL and MySQL connections: dialects, endpoints from Vault or the config, and a
driver-side JDBC connection (the drivers Spark uses, over Py4J) for bounds, DDL and the
publishing transaction. Errors name host, database and user, never the password."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field, SecretStr
from pyspark.sql import SparkSession

from pipeline_defs.common import secrets
from pipeline_defs.common.errors import CredentialError, PipelineError
from pipeline_defs.common.retry import GaveUp, with_backoff
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.credentials import Credentialed, credentials
from pipeline_defs.steps.errors import transient


class JdbcError(PipelineError):
    """A database refused or failed a statement; the message names host, database and user."""


@dataclass(frozen=True)
class Dialect:
    """What differs between the databases this package speaks to."""

    label: str  # as a person names it
    scheme: str  # of the JDBC URL
    default_port: int
    driver: str  # JDBC driver class
    quote_char: str  # identifier quote
    properties: tuple[tuple[str, str], ...] = ()  # driver properties it always gets


DIALECTS = {
    "postgres": Dialect("PostgreSQL", "postgresql", 5432, "org.postgresql.Driver", '"'),
    # stream reads by fetchSize; send INSERT batches as one statement
    "mysql": Dialect("MySQL", "mysql", 3306, "com.mysql.cj.jdbc.Driver", "`",
                     (("useCursorFetch", "true"), ("rewriteBatchedStatements", "true"))),
}

_EXPLAIN = {
    "28P01": "the password was rejected", "28000": "the login was rejected",
    "3D000": "the database does not exist", "42000": "access denied or unknown database",
    "08001": "the server could not be reached", "08S01": "the server could not be reached",
    "08004": "the server refused the connection", "08006": "the connection failed",
}


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to connect. `password` never appears in repr, str or messages."""

    dialect: str
    host: str
    port: int
    database: str
    user: str
    password: str
    properties: tuple[tuple[str, str], ...] = ()
    source: str = "the step config"

    def __repr__(self) -> str:
        return f"Endpoint({self.describe()})"

    @property
    def kind(self) -> Dialect:
        return DIALECTS[self.dialect]

    @property
    def label(self) -> str:
        return self.kind.label

    @property
    def url(self) -> str:
        return f"jdbc:{self.kind.scheme}://{self.host}:{self.port}/{self.database}"

    def describe(self) -> str:
        return (f"{self.label} at {self.host}:{self.port}, database '{self.database}', user "
                f"'{self.user}' (credentials from {self.source})")

    def spark_options(self) -> dict[str, str]:
        return {"url": self.url, "user": self.user, "password": self.password,
                "driver": self.kind.driver, **dict(self.properties)}

    def quote(self, name: str) -> str:
        q = self.kind.quote_char
        return q + name.replace(q, q + q) + q


def endpoint(dialect: str, creds: dict[str, Any], properties: dict[str, str],
             source: str) -> Endpoint:
    port = int(creds.get("port") or DIALECTS[dialect].default_port)
    props = {**dict(DIALECTS[dialect].properties), **properties}
    return Endpoint(dialect, str(creds["host"]), port, str(creds["database"]),
                    str(creds["username"]), str(creds["password"]),
                    tuple(sorted(props.items())), source)


# ---------------------------------------------------------------- driver-side connection
class Connection:
    """One JDBC connection in the driver JVM, used for a few statements."""

    def __init__(self, spark: SparkSession, ep: Endpoint, retries: int = 3,
                 backoff_s: float = 0.5):
        self.ep = ep
        jvm = spark._jvm
        jvm.org.apache.spark.sql.execution.datasources.jdbc.DriverRegistry.register(
            ep.kind.driver)
        props = jvm.java.util.Properties()
        for k, v in (("user", ep.user), ("password", ep.password), *ep.properties):
            props.setProperty(k, v)

        def connect():
            return jvm.java.sql.DriverManager.getDriver(ep.url).connect(ep.url, props)
        try:
            self._conn = with_backoff(connect, lambda e: transient(e) and not tls_failure(e),
                                      retries, backoff_s)
        except GaveUp as e:
            raise connect_error(ep, e.last, e.attempts) from None
        except Exception as e:  # noqa: BLE001 - Py4JJavaError carries the SQLException
            raise connect_error(ep, e, 1) from None

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._conn.close()
        except Exception:  # noqa: BLE001
            pass

    def execute(self, sql: str) -> int:
        st = self._conn.createStatement()
        try:
            st.execute(sql)
            return st.getUpdateCount()
        finally:
            st.close()

    def query(self, sql: str) -> list[tuple]:
        """Rows as tuples of strings (None for NULL)."""
        st = self._conn.createStatement()
        try:
            rs = st.executeQuery(sql)
            n = rs.getMetaData().getColumnCount()
            out = []
            while rs.next():
                out.append(tuple(rs.getString(i) for i in range(1, n + 1)))
            return out
        finally:
            st.close()

    def transaction(self, statements: list[str]) -> None:
        """All statements or none: readers see the old table until the commit."""
        self._conn.setAutoCommit(False)
        try:
            for sql in statements:
                self.execute(sql)
            self._conn.commit()
        except Exception:
            self._conn.rollback()
            raise
        finally:
            self._conn.setAutoCommit(True)

    def table_exists(self, table: str) -> bool:
        try:
            self.query(f"SELECT 1 FROM {table} WHERE 1 = 0")
            return True
        except Exception:  # noqa: BLE001
            return False


def sql_state(e: BaseException) -> str:
    je = getattr(e, "java_exception", None)
    try:
        return str(je.getSQLState() or "") if je is not None else ""
    except Exception:  # noqa: BLE001 - not an SQLException
        return ""


def java_message(e: BaseException) -> str:
    je = getattr(e, "java_exception", None)
    try:
        text = str(je.getMessage()) if je is not None else str(e)
    except Exception:  # noqa: BLE001
        text = str(e)
    return secrets.scrub(text.strip().splitlines()[0] if text.strip() else type(e).__name__)


def tls_failure(e: BaseException) -> bool:
    """The server's certificate was refused, or TLS was required and not offered: never
    worth retrying. (A login refusal that mentions SSL, like PostgreSQL's "no pg_hba.conf
    entry ... no encryption", is a login refusal.)"""
    return not sql_state(e).startswith("28") and any(
        w in java_message(e).lower() for w in ("ssl", "certificate", "pkix"))


def connect_error(ep: Endpoint, e: BaseException, attempts: int) -> PipelineError:
    state, tls = sql_state(e), tls_failure(e)
    why = "the TLS handshake failed" if tls else _EXPLAIN.get(state, "the connection failed")
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    fix = ("Check the user and password in the secret." if state in ("28P01", "28000")
           else "Check sslmode and sslrootcert (the CA that signed the server's certificate) "
                "in the step's properties." if tls
           else "Check the database name." if state in ("3D000", "42000")
           else "Check host and port, and that the server is up.")
    cls = CredentialError if state in ("28P01", "28000") else JdbcError
    return cls(f"cannot connect to {ep.describe()}: {why}{tries} [{state or 'no SQLState'}: "
               f"{java_message(e)}]. {fix}").retriable(not tls and transient(e))


# ---------------------------------------------------------------- the step config's part
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
    c = credentials(cfg, ctx, {"host": cfg.host, "port": cfg.port, "database": cfg.database,
                               "username": cfg.username, "password": cfg.password},
                    ("host", "database", "username", "password"), "jdbc")
    source = (f"Vault secret '{cfg.credential_path}'" if cfg.credential_path
              else "the step config")
    return endpoint(dialect, c, cfg.properties, source)
