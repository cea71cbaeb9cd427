"""PostgreSQL and MySQL: connections from the driver, atomic loads through a staging table,
and PostgreSQL's COPY fast path.

Driver-side statements (bounds, staging DDL, the publishing transaction) go through the same
JDBC drivers Spark uses (PostgreSQL JDBC, MySQL Connector/J), called over Py4J. The COPY path
runs in Spark's Python workers with psycopg, one COPY per partition."""
from __future__ import annotations

import random
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from pipeline_defs import secrets
from pipeline_defs.errors import CredentialError, PipelineError


class JdbcError(PipelineError):
    """A database refused or failed a statement; the message names host, database and user."""


DIALECTS = {
    # name: (label, url scheme, default port, driver class, identifier quote)
    "postgres": ("PostgreSQL", "postgresql", 5432, "org.postgresql.Driver", '"'),
    "mysql": ("MySQL", "mysql", 3306, "com.mysql.cj.jdbc.Driver", "`"),
}

# Errors worth retrying: the server could not be reached (SQLState class 08) or is starting.
_TRANSIENT_STATES = ("08", "57P03")
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
    def label(self) -> str:
        return DIALECTS[self.dialect][0]

    @property
    def url(self) -> str:
        scheme = DIALECTS[self.dialect][1]
        return f"jdbc:{scheme}://{self.host}:{self.port}/{self.database}"

    def describe(self) -> str:
        return (f"{self.label} at {self.host}:{self.port}, database '{self.database}', user "
                f"'{self.user}' (credentials from {self.source})")

    def spark_options(self) -> dict[str, str]:
        return {"url": self.url, "user": self.user, "password": self.password,
                "driver": DIALECTS[self.dialect][3], **dict(self.properties)}

    def quote(self, name: str) -> str:
        q = DIALECTS[self.dialect][4]
        return q + name.replace(q, q + q) + q


def endpoint(dialect: str, creds: dict[str, Any], properties: dict[str, str],
             source: str) -> Endpoint:
    port = int(creds.get("port") or DIALECTS[dialect][2])
    props = dict(properties)
    if dialect == "mysql":  # stream reads by fetchSize; send INSERT batches as one statement
        props = {"useCursorFetch": "true", "rewriteBatchedStatements": "true", **props}
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
        driver_class = DIALECTS[ep.dialect][3]
        jvm.org.apache.spark.sql.execution.datasources.jdbc.DriverRegistry.register(driver_class)
        props = jvm.java.util.Properties()
        for k, v in (("user", ep.user), ("password", ep.password), *ep.properties):
            props.setProperty(k, v)
        delay = backoff_s
        for attempt in range(retries + 1):
            try:
                driver = jvm.java.sql.DriverManager.getDriver(ep.url)
                self._conn = driver.connect(ep.url, props)
                break
            except Exception as e:  # noqa: BLE001 - Py4JJavaError carries the SQLException
                state = sql_state(e)
                if attempt < retries and state.startswith(_TRANSIENT_STATES):
                    time.sleep(delay * (1 + random.random() / 4))
                    delay *= 2
                    continue
                raise connect_error(ep, e, attempt + 1) from None

    def __enter__(self) -> "Connection":
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


def connect_error(ep: Endpoint, e: BaseException, attempts: int) -> PipelineError:
    state = sql_state(e)
    why = _EXPLAIN.get(state, "the connection failed")
    tries = f" after {attempts} attempts" if attempts > 1 else ""
    fix = ("Check the user and password in the secret." if state in ("28P01", "28000")
           else "Check the database name." if state in ("3D000", "42000")
           else "Check host and port, and that the server is up.")
    cls = CredentialError if state in ("28P01", "28000") else JdbcError
    return cls(f"cannot connect to {ep.describe()}: {why}{tries} [{state or 'no SQLState'}: "
               f"{java_message(e)}]. {fix}")


# ---------------------------------------------------------------- atomic loads
@dataclass
class LoadSpec:
    table: str
    mode: str  # append | overwrite | upsert | errorifexists | ignore
    key_columns: tuple[str, ...] = ()
    recreate: bool = False
    batch_size: int = 1000
    fast_path: bool = True


def staging_name(table: str, run_id: str) -> tuple[str, str]:
    """(staging table, prefix of this target's staging tables) in the target's schema."""
    schema, _, name = table.rpartition(".")
    base = re.sub(r"\W", "_", name.strip('"`'))[:30]
    prefix = f"_pd_stage_{base}_"
    stage = f"{prefix}{re.sub(r'[^0-9a-z]', '', run_id.lower())[:8] or 'local'}" \
            f"{uuid.uuid4().hex[:6]}"
    return (f"{schema}.{stage}" if schema else stage), prefix


MARKERS = "_pd_stream_batches"


def load(spark: SparkSession, df: DataFrame, ep: Endpoint, spec: LoadSpec, run_id: str,
         log, marker: tuple[str, int] | None = None) -> dict[str, Any]:
    """Writes df to spec.table so that readers see all of it or nothing of it. With a marker
    (streaming query, batch id), the marker is recorded in the same transaction and a batch
    whose marker exists is skipped: a replayed micro-batch is never loaded twice."""
    cols = df.columns
    stage, prefix = staging_name(spec.table, run_id)
    with Connection(spark, ep) as conn:
        if marker is not None:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {MARKERS} (query_name varchar(200) NOT "
                         "NULL, batch_id bigint NOT NULL, loaded_at timestamp DEFAULT "
                         "CURRENT_TIMESTAMP, PRIMARY KEY (query_name, batch_id))")
            if conn.query(f"SELECT 1 FROM {MARKERS} WHERE query_name = '{marker[0]}' AND "
                          f"batch_id = {marker[1]}"):
                log.info(f"batch {marker[1]} of {marker[0]} was loaded before; skipped")
                return {"rows": 0, "skipped": "batch already loaded"}
        _drop_leftovers(conn, ep, spec.table, prefix, log)
        exists = conn.table_exists(spec.table)
        if exists and spec.mode in ("errorifexists", "error"):
            raise JdbcError(f"table {spec.table} already exists in {ep.describe()}, and mode is "
                            f"'{spec.mode}'. Use append, overwrite or upsert.")
        if exists and spec.mode == "ignore":
            return {"rows": 0, "skipped": "target exists (mode ignore)"}
        if spec.mode == "upsert" and exists:
            _require_columns(conn, spec.table, spec.key_columns, ep)
        like_target = exists and not spec.recreate
        if like_target:
            conn.execute(_create_like(ep, stage, spec.table))
        try:
            t0 = time.perf_counter()
            method, rows = _fill_stage(spark, df, ep, spec, stage, like_target, log)
            if rows is None:
                rows = int(conn.query(f"SELECT count(*) FROM {stage}")[0][0])
            if spec.mode == "upsert" and spec.key_columns:
                _refuse_duplicate_keys(conn, ep, stage, spec.key_columns)
            t1 = time.perf_counter()
            statements = _publish(ep, spec, stage, cols, exists)
            if marker is not None:
                statements.append(f"INSERT INTO {MARKERS} (query_name, batch_id) VALUES "
                                  f"('{marker[0]}', {marker[1]})")
            conn.transaction(statements)
            t2 = time.perf_counter()
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {stage}")
    return {"rows": rows, "write_path": method, "created": not exists,
            "staging_s": round(t1 - t0, 3), "publish_s": round(t2 - t1, 3)}


def _drop_leftovers(conn: Connection, ep: Endpoint, table: str, prefix: str, log) -> None:
    """Staging tables of loads that were killed before their clean-up (never visible to
    readers of the target) are dropped by the next load of the same target."""
    schema = table.rpartition(".")[0].strip('"`')
    where = (f"table_schema = '{schema}'" if schema else
             "table_schema = current_schema()" if ep.dialect == "postgres"
             else "table_schema = database()")
    like = prefix.replace("_", "\\_")
    for (name,) in conn.query(f"SELECT table_name FROM information_schema.tables WHERE {where} "
                              f"AND table_name LIKE '{like}%'"):
        log.warning(f"dropping {name}, the staging table of an interrupted load of {table}")
        conn.execute(f"DROP TABLE IF EXISTS {schema + '.' if schema else ''}{name}")


def _create_like(ep: Endpoint, stage: str, table: str) -> str:
    if ep.dialect == "postgres":
        # columns, types, defaults, NOT NULL; no indexes or triggers. UNLOGGED: the rows are
        # written to the WAL once, when they reach the target, not twice.
        return f"CREATE UNLOGGED TABLE {stage} (LIKE {table} INCLUDING DEFAULTS)"
    return f"CREATE TABLE {stage} AS SELECT * FROM {table} WHERE 1 = 0"


def _require_columns(conn: Connection, table: str, cols: tuple[str, ...], ep: Endpoint) -> None:
    try:
        conn.query(f"SELECT {', '.join(ep.quote(c) for c in cols)} FROM {table} WHERE 1 = 0")
    except Exception as e:  # noqa: BLE001
        raise JdbcError(f"upsert keyColumns {list(cols)} are not all columns of {table} in "
                        f"{ep.describe()}: {java_message(e)}") from None


def _refuse_duplicate_keys(conn: Connection, ep: Endpoint, stage: str,
                           keys: tuple[str, ...]) -> None:
    k = ", ".join(ep.quote(c) for c in keys)
    dup = conn.query(f"SELECT {k}, count(*) FROM {stage} GROUP BY {k} HAVING count(*) > 1 "
                     "LIMIT 1")
    if dup:
        raise JdbcError(f"upsert input has {dup[0][-1]} rows for key "
                        f"{dict(zip(keys, dup[0][:-1]))}; each key must appear once. Add a "
                        "deduplicate step before the load. The target was not changed.")


def _publish(ep: Endpoint, spec: LoadSpec, stage: str, cols: list[str],
             exists: bool) -> list[str]:
    """The statements of the one transaction that makes the new rows visible."""
    target = spec.table
    if not exists or spec.recreate:
        if ep.dialect == "mysql":
            if not exists:
                return [f"RENAME TABLE {stage} TO {target}"]
            old, _ = staging_name(target, "old")
            # one atomic RENAME swaps both names; the old table is dropped after it
            return [f"RENAME TABLE {target} TO {old}, {stage} TO {target}",
                    f"DROP TABLE {old}"]
        name = target.rpartition(".")[2]
        return ([f"DROP TABLE IF EXISTS {target}"] if exists else []) + \
               [f"ALTER TABLE {stage} RENAME TO {name}"]
    c = ", ".join(ep.quote(x) for x in cols)
    insert = f"INSERT INTO {target} ({c}) SELECT {c} FROM {stage}"
    if spec.mode == "append":
        return [insert]
    if spec.mode == "overwrite":
        # TRUNCATE is transactional in PostgreSQL; in MySQL it commits, so DELETE there
        return [f"TRUNCATE TABLE {target}" if ep.dialect == "postgres"
                else f"DELETE FROM {target}", insert]
    if spec.mode == "upsert":
        on = " AND ".join(f"t.{k} = s.{k}" for k in map(ep.quote, spec.key_columns))
        delete = (f"DELETE FROM {target} t USING {stage} s WHERE {on}"
                  if ep.dialect == "postgres"
                  else f"DELETE t FROM {target} t JOIN {stage} s ON {on}")
        return [delete, insert]
    raise JdbcError(f"unknown mode '{spec.mode}'")


def _fill_stage(spark: SparkSession, df: DataFrame, ep: Endpoint, spec: LoadSpec, stage: str,
                like_target: bool, log) -> tuple[str, int | None]:
    copyable = spec.fast_path and ep.dialect == "postgres" and _copyable(df)
    if not like_target:
        # Spark creates the staging table from the schema alone. Not `df.limit(0)`: that would
        # be a second action on the load's plan, and the first action to run a plan fills its
        # row-count observations (with nothing, here), so the real write could not count.
        empty = spark.createDataFrame(spark.sparkContext.emptyRDD(), df.schema)
        empty.write.format("jdbc").mode("overwrite").options(
            **ep.spark_options(), dbtable=stage).save()
    if copyable:
        return "copy", copy_into(df, ep, stage)
    if spec.fast_path and ep.dialect == "postgres":
        log.warning(f"toPostgres: COPY cannot carry array/map/struct/binary columns; "
                    f"{spec.table} is written with batched INSERTs instead.")
    df.write.format("jdbc").mode("append").options(
        **ep.spark_options(), dbtable=stage, batchsize=str(spec.batch_size)).save()
    return "jdbc-batch-insert", None


def _copyable(df: DataFrame) -> bool:
    from pyspark.sql.types import ArrayType, BinaryType, MapType, StructType
    return not any(isinstance(f.dataType, (ArrayType, MapType, StructType, BinaryType))
                   for f in df.schema.fields)


# ---------------------------------------------------------------- PostgreSQL COPY
def copy_into(df: DataFrame, ep: Endpoint, table: str) -> int:
    """COPY each partition into `table` (in the Python workers, Arrow batches as CSV).

    Each partition commits once, together with a row in `<table>_parts`; a retried task
    finds its row and copies nothing, so Spark's task retries never duplicate rows."""
    conninfo = {"host": ep.host, "port": ep.port, "dbname": ep.database, "user": ep.user,
                "password": ep.password, **{k: v for k, v in ep.properties
                                            if k in ("sslmode", "sslrootcert", "options")}}
    cols = ", ".join(ep.quote(c) for c in df.columns)
    parts = f"{table}_parts"
    import psycopg
    with psycopg.connect(**conninfo, autocommit=True) as c:
        c.execute(f"CREATE TABLE IF NOT EXISTS {parts} (part int PRIMARY KEY, n bigint)")
    copy_sql = f"COPY {table} ({cols}) FROM STDIN (FORMAT csv)"

    def write_partition(batches: Iterator) -> Iterator:
        import io

        import psycopg
        import pyarrow as pa
        import pyarrow.csv as pcsv
        from pyspark import TaskContext
        part = TaskContext.get().partitionId()
        n = 0
        with psycopg.connect(**conninfo) as conn:
            with conn.transaction():
                done = conn.execute(f"SELECT n FROM {parts} WHERE part = %s", (part,)).fetchone()
                if done:
                    n = done[0]
                    for _ in batches:
                        pass
                else:
                    with conn.cursor().copy(copy_sql) as cp:
                        for batch in batches:
                            if batch.num_rows:
                                buf = io.BytesIO()
                                pcsv.write_csv(batch, buf, pcsv.WriteOptions(
                                    include_header=False))
                                cp.write(buf.getvalue())
                                n += batch.num_rows
                    conn.execute(f"INSERT INTO {parts} VALUES (%s, %s)", (part, n))
        yield pa.RecordBatch.from_pydict({"n": [n]})

    try:
        out = df.mapInArrow(write_partition, "n long").groupBy().sum("n").collect()
        return int(out[0][0] or 0)
    finally:
        with psycopg.connect(**conninfo, autocommit=True) as c:
            c.execute(f"DROP TABLE IF EXISTS {parts}")
