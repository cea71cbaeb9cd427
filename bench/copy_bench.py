"""PostgreSQL load benchmark: 1M rows into an existing table, in the same process and
session, alternating:

  * plain   - Spark's JDBC writer (`df.write.jdbc`, mode overwrite + truncate, batchsize 1000),
              what a PySpark script does; not atomic (readers see a half-loaded table);
  * copy    - toPostgres (COPY per partition into a staging table, then one transaction);
  * staged  - toPostgres with fastPath false (Spark's JDBC writer into the staging table, then
              the same transaction): the cost of atomicity alone.

    .venv/bin/python bench/copy_bench.py [--rows 1000000] [--runs 3]

Needs the PostgreSQL of scripts/services.sh (started here when it is not running)."""
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

from pipeline_defs.resources.spark import SparkSettings, session  # noqa: E402
from pipeline_defs.steps import jdbc as L  # noqa: E402
from pipeline_defs.steps.context import StepContext  # noqa: E402

PG_PORT = int(os.environ.get("PIPELINE_PG_PORT", "55432"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    subprocess.run(["bash", str(REPO / "scripts/services.sh"), "up", "postgres"], check=True)
    import psycopg
    db, user, pw = "bench_copy", "bench_user", "bench-" + secrets.token_urlsafe(8)
    with psycopg.connect(host="127.0.0.1", port=PG_PORT, user="postgres", dbname="postgres",
                         autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        c.execute(f"DROP USER IF EXISTS {user}")
        c.execute(f"CREATE USER {user} PASSWORD '{pw}'")
        c.execute(f"CREATE DATABASE {db} OWNER {user}")
    admin = psycopg.connect(host="127.0.0.1", port=PG_PORT, user=user, password=pw, dbname=db,
                            autocommit=True)
    for t in ("plain_t", "copy_t", "staged_t"):
        admin.execute(f"CREATE TABLE {t} (id bigint PRIMARY KEY, name text, amount double "
                      "precision, qty int, ts timestamp, flag boolean)")

    spark = session(SparkSettings(master="local[2]", app_name="copy_bench"))
    data = HERE / ".data" / f"copy_{args.rows}"
    if not data.exists():
        spark.range(args.rows, numPartitions=4).selectExpr(
            "id", "concat('customer-', id % 9973) AS name", "id * 0.25 AS amount",
            "CAST(id % 100 AS int) AS qty",
            "timestamp'2025-01-01' + make_interval(0, 0, 0, 0, 0, 0, id % 86400) AS ts",
            "id % 2 = 0 AS flag").write.mode("overwrite").parquet(str(data))
    df = spark.read.parquet(str(data))
    secret = {"host": "127.0.0.1", "port": PG_PORT, "database": db, "username": user,
              "password": pw}
    ctx = StepContext(spark=spark, pipeline="bench", step=1, method="load.toPostgres",
                      read_secret=lambda _: secret, log=logging.getLogger("bench"))
    url = f"jdbc:postgresql://127.0.0.1:{PG_PORT}/{db}"

    def plain():
        df.write.jdbc(url, "plain_t", mode="overwrite", properties={
            "user": user, "password": pw, "driver": "org.postgresql.Driver",
            "truncate": "true", "batchsize": "1000"})

    phases = {"copy": [], "staged": []}

    def ours(table, fast, name):
        def go():
            r = L.to_postgres(df, L.ToPostgres.model_validate(
                {"table": table, "mode": "overwrite", "credentialPath": "bench",
                 "fastPath": fast}), ctx)
            assert r.rows == args.rows, r
            phases[name].append((r.metadata["staging_s"], r.metadata["publish_s"]))
        return go

    cases = {"plain": plain, "copy": ours("copy_t", True, "copy"),
             "staged": ours("staged_t", False, "staged")}
    times = {k: [] for k in cases}
    for fn in cases.values():  # warm-up (JIT, connection pools, page cache): not counted
        fn()
    phases = {"copy": [], "staged": []}
    for _ in range(args.runs):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
            extra = (f" (staging {phases[name][-1][0]:.2f} s, publish {phases[name][-1][1]:.2f} s)"
                     if name in phases else "")
            print(f"{name}: {times[name][-1]:.2f} s{extra}", flush=True)
    for t in ("plain_t", "copy_t", "staged_t"):
        n = admin.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        assert n == args.rows, (t, n)
    admin.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["plain"] / med["copy"]
    stage_med = {k: statistics.median(x[0] for x in v) for k, v in phases.items()}
    pub_med = {k: statistics.median(x[1] for x in v) for k, v in phases.items()}
    print(f"COPY path is {ratio:.2f}x faster than Spark's JDBC writer")
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    rows = "\n".join(
        f"| {label} | {', '.join(f'{x:.2f}' for x in times[k])} | {med[k]:.2f} | "
        f"{args.rows / med[k]:,.0f} | {med['plain'] / med[k]:.2f} |"
        for k, label in (("plain", "Spark JDBC writer (plain PySpark, not atomic)"),
                         ("staged", "toPostgres fastPath=false (staging + 1 transaction)"),
                         ("copy", "**toPostgres COPY** (staging + 1 transaction)")))
    write_section("## PostgreSQL load: COPY path vs Spark's JDBC writer", f"""\
## PostgreSQL load: COPY path vs Spark's JDBC writer

`bench/copy_bench.py`, measured {now}: {args.rows:,} rows (bigint, text, double, int,
timestamp, boolean) from Parquet into an existing PostgreSQL 15 table (primary key), mode
overwrite, same process and SparkSession (`local[2]`), alternating, {args.runs} runs each.
PostgreSQL runs on the same 2 cores (fsync off, as in the tests).

| | runs (s) | median (s) | rows/s | speed-up vs plain |
|---|---|---|---|---|
{rows}

**COPY path / Spark JDBC writer: {ratio:.2f}x faster end to end** (target >= 3x: not met),
and atomic: readers see the old rows until one commit, which the plain writer does not give.

Where the time goes (medians): the COPY into the staging table takes
{stage_med['copy']:.2f} s ({med['plain'] / stage_med['copy']:.2f}x faster than the whole plain
write; batched INSERTs into the same staging table take {stage_med['staged']:.2f} s), and
publishing - `TRUNCATE` + `INSERT INTO target SELECT FROM staging` in one transaction, i.e.
PostgreSQL writing the rows, the WAL and the primary-key index a second time - takes
{pub_med['copy']:.2f} s. The plain writer writes once and is not atomic; the atomic design
writes twice, and on this machine PostgreSQL shares the same 2 cores as Spark. The COPY step
itself is bounded by moving Arrow batches to the Python workers and encoding CSV there
(measured: 1.3 s and 0.9 s for these 1M rows).
""")


if __name__ == "__main__":
    main()
