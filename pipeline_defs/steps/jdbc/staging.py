"""Atomic loads into PostgreSQL and MySQL: rows go to a staging table, then reach the target
in one transaction (readers see the old rows or all the new ones); a killed load's staging
table is dropped by the next load of the same target."""
from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from pipeline_defs.common import secrets
from pipeline_defs.common.errors import PipelineError
from pipeline_defs.steps.errors import spark_error_summary, transient
from pipeline_defs.steps.jdbc.bulk import bulk_load, bulk_loadable, local_infile_enabled
from pipeline_defs.steps.jdbc.connection import Connection, Endpoint, JdbcError, java_message
from pipeline_defs.steps.jdbc.swap import Swap, plan_mysql, plan_postgres


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
        swap: Swap | None = None
        if like_target and spec.mode == "overwrite":
            swap = (plan_postgres(conn, spec.table, stage, log) if ep.dialect == "postgres"
                    else plan_mysql(conn, ep, spec.table, stage, log))
        if like_target:
            conn.execute(swap.create if swap else _create_like(ep, stage, spec.table))
        try:
            t0 = time.perf_counter()
            try:
                method, rows = _fill_stage(spark, df, ep, spec, stage, like_target, log, conn)
                for sql in swap.finish if swap else ():
                    conn.execute(sql)
            except PipelineError:
                raise
            except Exception as e:  # noqa: BLE001 - the database refused rows (or Spark failed)
                # the server names the staging table: name the target the user knows
                why = re.sub(r"^ERROR:\s*", "", _refusal(e)).replace(
                    stage.rpartition(".")[2], spec.table.rpartition(".")[2])
                raise JdbcError(f"writing the rows for {spec.table} into {ep.describe()} "
                                f"failed: {why}. The target was not changed."
                                ).retriable(transient(e)) from e
            if rows is None:
                rows = int(conn.query(f"SELECT count(*) FROM {stage}")[0][0])
            if spec.mode == "upsert" and spec.key_columns:
                _refuse_duplicate_keys(conn, ep, stage, spec.key_columns)
            t1 = time.perf_counter()
            statements = swap.publish if swap else _publish(ep, spec, stage, cols, exists)
            if marker is not None:
                statements.append(f"INSERT INTO {MARKERS} (query_name, batch_id) VALUES "
                                  f"('{marker[0]}', {marker[1]})")
            conn.transaction(statements)
            t2 = time.perf_counter()
        finally:
            conn.execute(f"DROP TABLE IF EXISTS {stage}")
    return {"rows": rows, "write_path": method, "created": not exists,
            "publish": "swap" if swap else "rename" if not like_target else "insert",
            "staging_s": round(t1 - t0, 3), "publish_s": round(t2 - t1, 3)}


def _refusal(e: BaseException) -> str:
    """The database's own reason, dug out of Spark's wrapping (a BatchUpdateException or
    SQLException deep in the cause chain), else Spark's one-line summary."""
    t = getattr(e, "java_exception", None)
    seen = 0
    while t is not None and seen < 12:
        try:
            if t.getClass().getName().startswith(("java.sql.", "org.postgresql.", "com.mysql.")):
                return secrets.scrub(str(t.getMessage()).strip().splitlines()[0])
            t = t.getCause()
        except Exception:  # noqa: BLE001 - the gateway failed: use the summary
            break
        seen += 1
    # a refusal raised in a Python worker (the COPY path): the last exception line of the
    # worker's traceback, e.g. "NotNullViolation: null value in column ..."
    raised = re.findall(r"(?m)^\s*((?:\w+\.)*\w*(?:Error|Exception|Violation)\w*): (.+)$", str(e))
    if raised:
        name, text = raised[-1]
        return secrets.scrub(f"{name.rsplit('.', 1)[-1]}: {text.strip()}"[:400])
    return secrets.scrub(spark_error_summary(e)[:400])


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
                        f"{ep.describe()}: {java_message(e)}").retriable(transient(e)) from None


def _refuse_duplicate_keys(conn: Connection, ep: Endpoint, stage: str,
                           keys: tuple[str, ...]) -> None:
    k = ", ".join(ep.quote(c) for c in keys)
    dup = conn.query(f"SELECT {k}, count(*) FROM {stage} GROUP BY {k} HAVING count(*) > 1 "
                     "LIMIT 1")
    if dup:
        raise JdbcError(f"upsert input has {dup[0][-1]} rows for key "
                        f"{dict(zip(keys, dup[0][:-1], strict=True))}; each key must appear "
                        "once. Add a deduplicate step before the load. The target was not "
                        "changed.")


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
                like_target: bool, log, conn: Connection) -> tuple[str, int | None]:
    fast = spec.fast_path and bulk_loadable(df)
    if not like_target:
        # Spark creates the staging table from the schema alone. Not `df.limit(0)`: that would
        # be a second action on the load's plan, and the first action to run a plan fills its
        # row-count observations (with nothing, here), so the real write could not count.
        empty = spark.createDataFrame(spark.sparkContext.emptyRDD(), df.schema)
        empty.write.format("jdbc").mode("overwrite").options(
            **ep.spark_options(), dbtable=stage).save()
    if fast and ep.dialect == "mysql" and not local_infile_enabled(conn):
        log.warning(f"toMySQL: the server does not allow LOAD DATA LOCAL INFILE (local_infile "
                    f"is OFF); {spec.table} is written with batched INSERTs instead. "
                    "`SET GLOBAL local_infile = 1` on the server enables the fast path.")
        fast = False
    if fast:
        return bulk_load(spark, df, ep, stage, conn)
    if spec.fast_path:
        log.warning(f"{'toPostgres: COPY' if ep.dialect == 'postgres' else 'toMySQL: LOAD DATA'}"
                    f" cannot carry array/map/struct/binary columns; {spec.table} is written "
                    "with batched INSERTs instead.")
    df.write.format("jdbc").mode("append").options(
        **ep.spark_options(), dbtable=stage, batchsize=str(spec.batch_size)).save()
    return "jdbc-batch-insert", None
