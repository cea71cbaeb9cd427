"""PostgreSQL's COPY fast path: one COPY per partition from Spark's Python workers (psycopg,
Arrow batches as CSV), each partition committing once with a marker row, so a retried task
never duplicates rows."""
from __future__ import annotations

from collections.abc import Iterator

from pyspark.sql import DataFrame

from pipeline_defs.steps.jdbc.connection import Endpoint


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
