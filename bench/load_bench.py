"""Database load benchmark: 1M rows into an existing table (primary key), mode overwrite, in
the same process and SparkSession, alternating, for PostgreSQL and MySQL (MariaDB):

  * plain - Spark's JDBC writer (`df.write.jdbc`, overwrite + truncate, batchsize 1000; for
            MySQL with rewriteBatchedStatements, as the product's own JDBC path): what a
            PySpark script does; not atomic (readers see a half-loaded table);
  * ours  - toPostgres / toMySQL with the defaults: the JVM bulk loader (COPY / LOAD DATA
            LOCAL INFILE) into a staging table that is a full copy of the target's definition,
            then swapped in by one transaction (readers see old rows or new rows).

    .venv/bin/python bench/load_bench.py [--rows 1000000] [--runs 5] [--db postgres,mysql]

Needs the PostgreSQL and MariaDB of scripts/services.sh (started here when not running)."""
from __future__ import annotations

import argparse
import logging
import os
import secrets
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from results import write_section  # noqa: E402

from pipeline_defs.spark.session import SparkSettings, session  # noqa: E402
from pipeline_defs.steps import jdbc as L  # noqa: E402
from pipeline_defs.steps.context import StepContext  # noqa: E402

PG_PORT = int(os.environ.get("PIPELINE_PG_PORT", "55432"))
MYSQL_PORT = int(os.environ.get("PIPELINE_MYSQL_PORT", "53306"))
DDL = "(id bigint PRIMARY KEY, name {text}, amount double precision, qty int, ts {ts}, flag boolean)"


def postgres_target():
    import psycopg
    db, user, pw = "bench_load", "bench_user", "bench-" + secrets.token_urlsafe(8)
    with psycopg.connect(host="127.0.0.1", port=PG_PORT, user="postgres", dbname="postgres",
                         autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        c.execute(f"DROP USER IF EXISTS {user}")
        c.execute(f"CREATE USER {user} PASSWORD '{pw}'")
        c.execute(f"CREATE DATABASE {db} OWNER {user}")
    admin = psycopg.connect(host="127.0.0.1", port=PG_PORT, user=user, password=pw, dbname=db,
                            autocommit=True)
    for t in ("plain_t", "ours_t"):
        admin.execute(f"CREATE TABLE {t} " + DDL.format(text="text", ts="timestamp"))
    url = f"jdbc:postgresql://127.0.0.1:{PG_PORT}/{db}"
    props = {"user": user, "password": pw, "driver": "org.postgresql.Driver"}
    return admin, {"host": "127.0.0.1", "port": PG_PORT, "database": db, "username": user,
                   "password": pw}, url, props


def mysql_target():
    import pymysql
    db, user, pw = "bench_load", "bench_user", "bench-" + secrets.token_urlsafe(8)
    root = pymysql.connect(host="127.0.0.1", port=MYSQL_PORT, user="pipeline_admin",
                           autocommit=True)
    with root.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {db}")
        cur.execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
        cur.execute(f"CREATE DATABASE {db}")
        cur.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{pw}'")
        cur.execute(f"GRANT ALL PRIVILEGES ON {db}.* TO '{user}'@'127.0.0.1'")
    admin = pymysql.connect(host="127.0.0.1", port=MYSQL_PORT, user="pipeline_admin",
                            database=db, autocommit=True)
    for t in ("plain_t", "ours_t"):
        admin.cursor().execute(f"CREATE TABLE {t} " + DDL.format(text="varchar(64)",
                                                                ts="datetime(6)"))
    url = f"jdbc:mysql://127.0.0.1:{MYSQL_PORT}/{db}"
    props = {"user": user, "password": pw, "driver": "com.mysql.cj.jdbc.Driver",
             "rewriteBatchedStatements": "true"}
    return admin, {"host": "127.0.0.1", "port": MYSQL_PORT, "database": db, "username": user,
                   "password": pw}, url, props


def count(admin, table) -> int:
    cur = admin.cursor()
    cur.execute(f"SELECT count(*) FROM {table}")
    return cur.fetchone()[0]


def bench(spark, df, dbname: str, rows: int, runs: int) -> dict:
    admin, secret, url, props = postgres_target() if dbname == "postgres" else mysql_target()
    ctx = StepContext(spark=spark, pipeline="bench", step=1, method=f"load.{dbname}",
                      read_secret=lambda _: secret, log=logging.getLogger("bench"))
    model, fn = (L.ToPostgres, L.to_postgres) if dbname == "postgres" else (L.ToMySQL, L.to_mysql)
    phases = []

    def plain():
        df.write.jdbc(url, "plain_t", mode="overwrite", properties={
            **props, "truncate": "true", "batchsize": "1000"})

    def ours():
        r = fn(df, model.model_validate({"table": "ours_t", "mode": "overwrite",
                                         "credentialPath": "bench"}), ctx)
        assert r.rows == rows and r.metadata["publish"] == "swap", r
        phases.append((r.metadata["staging_s"], r.metadata["publish_s"]))

    cases = {"plain": plain, "ours": ours}
    for f in cases.values():  # warm-up (JIT, connections, page cache): not counted
        f()
    phases.clear()
    times = {k: [] for k in cases}
    for i in range(runs):
        for name in (("plain", "ours") if i % 2 == 0 else ("ours", "plain")):
            t0 = time.perf_counter()
            cases[name]()
            times[name].append(time.perf_counter() - t0)
            print(f"{dbname} {name}: {times[name][-1]:.2f} s", flush=True)
    for t in ("plain_t", "ours_t"):
        assert count(admin, t) == rows, t
    admin.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"times": times, "med": med, "ratio": med["plain"] / med["ours"],
            "staging": statistics.median(p[0] for p in phases),
            "publish": statistics.median(p[1] for p in phases)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--db", default="postgres,mysql")
    args = ap.parse_args()
    subprocess.run(["bash", str(REPO / "scripts/services.sh"), "up", "postgres", "mariadb"],
                   check=True)
    spark = session(SparkSettings(master="local[2]", app_name="load_bench"))
    data = HERE / ".data" / f"load_{args.rows}"
    if not data.exists():
        spark.range(args.rows, numPartitions=4).selectExpr(
            "id", "concat('customer-', id % 9973) AS name", "id * 0.25 AS amount",
            "CAST(id % 100 AS int) AS qty",
            "timestamp'2025-01-01' + make_interval(0, 0, 0, 0, 0, 0, id % 86400) AS ts",
            "id % 2 = 0 AS flag").write.mode("overwrite").parquet(str(data))
    df = spark.read.parquet(str(data))
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    for dbname in args.db.split(","):
        r = bench(spark, df, dbname, args.rows, args.runs)
        label = {"postgres": "PostgreSQL", "mysql": "MySQL (MariaDB)"}[dbname]
        target = 3 if dbname == "postgres" else 2
        how = ("COPY (pgjdbc CopyManager)" if dbname == "postgres"
               else "LOAD DATA LOCAL INFILE (Connector/J)")
        print(f"{label}: {r['ratio']:.2f}x Spark's JDBC writer (target >= {target}x)")
        t, med = r["times"], r["med"]
        section = f"## {label} load: bulk loader vs Spark's JDBC writer"
        write_section(section, f"""{section}

`bench/load_bench.py`, measured {now}: {args.rows:,} rows (bigint, text, double, int,
timestamp, boolean) from Parquet into an existing table with a primary key, mode overwrite,
same process and SparkSession (`local[2]`, 4 partitions), alternating, {args.runs} runs each
after one untimed run of each. The server runs on the same 2 cores (tests' settings).

| | runs (s) | median (s) | rows/s | speed-up |
|---|---|---|---|---|
| Spark JDBC writer (plain PySpark, not atomic) | {', '.join(f'{x:.2f}' for x in t['plain'])} | {med['plain']:.2f} | {args.rows / med['plain']:,.0f} | 1.00 |
| **{'toPostgres' if dbname == 'postgres' else 'toMySQL'}** ({how}, table swap) | {', '.join(f'{x:.2f}' for x in t['ours'])} | {med['ours']:.2f} | {args.rows / med['ours']:,.0f} | **{r['ratio']:.2f}** |

**{r['ratio']:.2f}x Spark's JDBC writer end to end** (target >= {target}x), and atomic: readers
see the old rows until one commit. Medians of the load's phases: bulk load into the staging
table and its indexes {r['staging']:.2f} s; publishing (the swap transaction) {r['publish']:.3f} s.
""")


if __name__ == "__main__":
    main()
