"""The original connector examples, run through Dagster against real PostgreSQL, MariaDB and
S3 (moto) servers, credentials from OpenBao: their files unchanged but for paths
(/data/... moved under tmp_path); hosts come from the Vault secrets. Outputs are compared row
by row with the same computation done here in Python."""
from __future__ import annotations

import datetime as dt
import io
import json
import os
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.dagster_layer.resources.vault import VaultResource
from pipeline_defs.definitions import default_resources, definitions_for
from pipeline_defs_tests.conftest import COMPAT, write_json

USERS = [(i, f"user{i}", i % 4 != 0, 14 + (i * 7) % 50, 2024 + i % 2, 1 + i % 3)
         for i in range(1, 41)]  # user_id, user_name, active, age, year, month
ORDERS = [(o, 1 + (o * 5) % 40, Decimal(f"{(o * 37) % 500}.{o % 100:02d}"))
          for o in range(1, 121)]  # order_id, user_id, amount


@pytest.fixture
def world(pg, mysql, s3, vault, tmp_path, spark):
    """Servers seeded with the examples' tables, Vault holding the examples' secret paths."""
    for p in ("postgres/production", "postgres", "postgres/analytics"):
        vault.put("secret", p, pg.secret())
    vault.put("secret", "mysql", mysql.secret())
    s3_secret = s3.secret()
    for p in ("s3/production", "s3"):
        vault.put("secret", p, s3_secret)
    for b in ("data-lake", "analytics-reports", "my-data-bucket"):
        s3.client.create_bucket(Bucket=b)
    pg.sql("CREATE TABLE users (user_id int PRIMARY KEY, user_name text, active boolean, "
           "age int, year int, month int)")
    with pg.admin.cursor() as cur:
        cur.executemany("INSERT INTO users VALUES (%s, %s, %s, %s, %s, %s)", USERS)
    mysql.sql("CREATE TABLE orders (order_id int PRIMARY KEY, user_id int, "
              "amount decimal(10,2))")
    with mysql.admin.cursor() as cur:
        cur.executemany("INSERT INTO orders VALUES (%s, %s, %s)", ORDERS)
    audit = tmp_path / "audit.jsonl"
    resources = {**default_resources(),
                 "vault": VaultResource(url=vault.url, token=vault.token,
                                        audit_log=str(audit))}
    return type("World", (), dict(pg=pg, mysql=mysql, s3=s3, vault=vault, tmp=tmp_path,
                                  spark=spark, resources=resources, audit=audit))


def run_example(world, name: str):
    raw = json.loads((COMPAT / name).read_text())
    for s in raw["steps"]:
        path = s["config"].get("path")
        if isinstance(path, str) and path.startswith("/data/"):
            s["config"]["path"] = str(world.tmp) + path
    p = load_pipeline(write_json(world.tmp / name, raw), _registry())
    job = definitions_for([p], world.resources).resolve_job_def(p.name.replace("-", "_"))
    instance = dg.DagsterInstance.ephemeral()
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    result.logs = [e.user_message for e in instance.all_logs(result.run_id)]
    if not result.success:
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        pytest.fail(failure.event_specific_data.user_failure_data.description)
    return result


def _registry():
    from pipeline_defs.steps.registry import builtin_registry
    return builtin_registry()


def materializations(result) -> dict[str, dict]:
    return {"/".join(e.event_specific_data.materialization.asset_key.path):
            e.event_specific_data.materialization.metadata
            for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"}


def test_simple_etl(world):
    result = run_example(world, "simple-etl.json")
    out = world.spark.read.parquet("s3a://data-lake/processed/users")
    got = sorted((r.user_id, r.user_name, r.active, r.age, r.year, r.month) for r in out.collect())
    assert got == sorted(u for u in USERS if u[2] and u[3] >= 18)
    keys = world.s3.keys("data-lake", "processed/users/")
    assert {k.split("/part-")[0] for k in keys if "/part-" in k} == {
        f"processed/users/year={y}/month={m}" for _, _, a, age, y, m in USERS if a and age >= 18}
    assert all(k.endswith(".snappy.parquet") for k in keys if "/part-" in k)
    records = [json.loads(x) for x in world.audit.read_text().splitlines()]
    assert [(r["credentialPath"], r["outcome"]) for r in records] == [
        ("secret/data/postgres/production", "success"), ("secret/data/s3/production", "success")]
    assert all(r["run_id"] == result.run_id for r in records)
    in_run = [json.loads(m.split("credential access ", 1)[1]) for m in result.logs
              if m.startswith("credential access ")]
    assert in_run == records  # the same records are events of the Dagster run


def test_multi_source_join(world):
    run_example(world, "multi-source-join.json")
    out = world.spark.read.format("delta").load("s3a://data-lake/delta/user_order_summary")
    names = {u[0]: u[1] for u in USERS}
    expected = {}
    for _, uid, amount in ORDERS:
        n, total = expected.get(uid, (0, Decimal(0)))
        expected[uid] = (n + 1, total + amount)
    got = {r.user_id: (r.user_name, r.total_orders, r.total_amount,
                       round(float(r.avg_order_value), 4)) for r in out.collect()}
    assert got == {u: (names[u], n, t, round(float(t) / n, 4)) for u, (n, t) in expected.items()}


def _transactions(world) -> str:
    """Delta table whose version 0 dates from 2024 (commit file time), version 1 from now."""
    path = str(world.tmp / "data/delta/transactions")
    cols = "transaction_id int, customer_id int, product_category string, region string, " \
           "amount double, discount double, status string"
    v0 = [(i, i % 5, ["books", "games", "tools"][i % 3], ["north", "south"][i % 2],
           float(i * 10 - 50), (i % 4) / 10, "completed" if i % 6 else "cancelled")
          for i in range(1, 61)]
    world.spark.createDataFrame(v0, cols).write.format("delta").save(path)
    commit0 = os.path.join(path, "_delta_log", "00000000000000000000.json")
    t2024 = dt.datetime(2024, 6, 1, tzinfo=dt.UTC).timestamp()
    os.utime(commit0, (t2024, t2024))
    # a table read as of 2024/2025 keeps its old files that long (Delta refuses otherwise)
    world.spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES "
                    "('delta.deletedFileRetentionDuration' = 'interval 1000 days', "
                    "'delta.logRetentionDuration' = 'interval 1000 days')")
    world.spark.createDataFrame([(999, 1, "books", "north", 1e6, 0.0, "completed")], cols) \
        .write.format("delta").mode("append").save(path)  # after 2025-01-01: not read
    return v0


def test_aggregation_pipeline(world):
    v0 = _transactions(world)
    result = run_example(world, "aggregation-pipeline.json")
    groups: dict = {}
    for _, cust, cat, region, amount, _discount, status in v0:
        if status == "completed" and amount > 0:
            groups.setdefault((cust, region), {}).setdefault(cat, []).append(amount)
    expected = {k: {cat: sum(a) for cat, a in cats.items()} for k, cats in groups.items()}
    table = world.pg.sql("SELECT customer_id, region, books, games, tools FROM "
                         "customer_sales_summary")
    cats = ("books", "games", "tools")
    got = {(c, r): {k: v for k, v in zip(cats, vals, strict=True) if v is not None}
           for c, r, *vals in table}
    assert got == expected
    s3 = world.spark.read.parquet("s3a://analytics-reports/sales-summary/")
    today = dt.datetime.now(dt.UTC).date()  # Spark's current_date(): the session is UTC
    assert sorted((r.customer_id, r.region, r.aggregation_date) for r in s3.collect()) == \
        sorted((c, r, today) for c, r in expected)
    meta = materializations(result)
    pg_meta = next(v for k, v in meta.items() if "customer_sales_summary" in k)
    assert pg_meta["dagster/row_count"].value == len(expected)


def test_avro_etl(world):
    world.pg.sql("CREATE TABLE events (id int PRIMARY KEY, event_type text, amount numeric(10,2))")
    events = [(i, ["purchase", "view"][i % 2], Decimal(i * 7 % 900)) for i in range(1, 301)]
    with world.pg.admin.cursor() as cur:
        cur.executemany("INSERT INTO events VALUES (%s, %s, %s)", events)
    run_example(world, "avro-etl.json")
    out = world.spark.read.format("avro").load("s3a://data-lake/events-avro/")
    got = sorted((r.id, r.amount, r.high_value, r.processing_date) for r in out.collect())
    today = dt.datetime.now(dt.UTC).date()  # Spark's current_date(): the session is UTC
    assert got == sorted((i, a, a > 500, today) for i, t, a in events
                         if t == "purchase" and a > 100)


def test_incremental_load_pipeline(world):
    pg = world.pg
    pg.sql("CREATE TABLE orders (id int PRIMARY KEY, order_date date, updated_at timestamp, "
           "amount numeric(10,2))")
    pg.sql("INSERT INTO orders SELECT g, date '2025-03-01' + g % 20, "
           "timestamp '2025-03-01' + g * interval '1 hour', g FROM generate_series(1, 200) g")
    pg.sql("CREATE TABLE checkpoint (last_processed_timestamp timestamp)")
    pg.sql("INSERT INTO checkpoint VALUES (timestamp '2025-03-05 00:00')")  # after order 96
    # the Delta checkpoint the example reads and overwrites: the previous batch (empty here)
    world.spark.createDataFrame([], "id int, order_date date, updated_at timestamp, "
                                "amount decimal(10,2), processing_timestamp timestamp, "
                                "load_date date, year int, month int, day int") \
        .write.format("delta").save(str(world.tmp / "data/delta/checkpoint"))
    run_example(world, "incremental-load-pipeline.json")
    out = world.spark.read.format("delta").load(str(world.tmp / "data/delta/orders"))
    expected = [(i, dt.date(2025, 3, 1) + dt.timedelta(days=i % 20)) for i in range(97, 201)]
    got = sorted((r.id, r.order_date) for r in out.collect())
    assert got == expected
    assert all((r.year, r.month, r.day) == (r.order_date.year, r.order_date.month,
                                             r.order_date.day) for r in out.collect())
    assert (world.tmp / "data/delta/orders/year=2025/month=3/day=1").is_dir()
    ck = world.spark.read.format("delta").load(str(world.tmp / "data/delta/checkpoint"))
    assert ck.count() == len(expected)


def test_batch_with_metrics(world):
    users = pa.table({
        "id": list(range(1, 31)), "name": [f"n{i}" for i in range(1, 31)],
        "age": [10 + i * 2 for i in range(1, 31)],
        "status": ["active" if i % 3 else "inactive" for i in range(1, 31)],
        "created_at": [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(1, 31)]})
    buf = io.BytesIO()
    pq.write_table(users, buf)
    world.s3.client.put_object(Bucket="my-data-bucket", Key="input/users.parquet",
                               Body=buf.getvalue())
    result = run_example(world, "batch-with-metrics.json")
    out = world.spark.read.format("delta").load("s3a://data-lake/delta/users_processed")
    today = dt.datetime.now(dt.UTC).date()  # Spark's current_date(): the session is UTC
    expected = sorted((r["id"], r["age"] >= 18, (today - r["created_at"]).days,
                       "HIGH" if r["age"] < 25 else "MEDIUM" if r["age"] < 40 else "LOW")
                      for r in users.to_pylist() if r["age"] >= 18 and r["status"] == "active")
    assert sorted((r.id, r.is_adult, r.account_age_days, r.risk_score)
                  for r in out.collect()) == expected
    meta = materializations(result)
    assert next(iter(meta.values()))["dagster/row_count"].value == len(expected)


def test_data_quality_pipeline(world):
    """The original's data-quality example, run: transactions from S3 pass its schema, null,
    range and business-rule checks and the completed ones land in Delta by date; a later file
    with a row breaking a rule fails the run, naming the rule, and writes nothing."""
    days = [dt.date(2025, 3, d) for d in (1, 2, 3)]
    statuses = ["pending", "completed", "failed", "refunded"]
    txs = [(i, 1 + i % 7, round(5 + i * 1.25, 2), days[i % 3], statuses[i % 4])
           for i in range(1, 81)]

    def put(key, rows):
        table = pa.table({
            "transaction_id": pa.array([r[0] for r in rows], pa.int64()),
            "customer_id": pa.array([r[1] for r in rows], pa.int64()),
            "amount": pa.array([r[2] for r in rows], pa.float64()),
            "transaction_date": pa.array([r[3] for r in rows], pa.date32()),
            "status": pa.array([r[4] for r in rows], pa.string())})
        buf = io.BytesIO()
        pq.write_table(table, buf)
        world.s3.client.put_object(Bucket="data-lake", Key=key, Body=buf.getvalue())

    put("raw/transactions/part-0.parquet", txs)
    result = run_example(world, "data-quality-pipeline.json")
    out = str(world.tmp / "data/delta/validated_transactions")
    got = sorted((r.transaction_id, r.customer_id, r.amount, r.transaction_date, r.status)
                 for r in world.spark.read.format("delta").load(out).collect())
    assert got == sorted(t for t in txs if t[4] == "completed") and len(got) == 20
    assert {p.name for p in Path(out).iterdir() if p.is_dir() and "=" in p.name} == {
        f"transaction_date={d}" for d in days}
    checks = [e.event_specific_data for e in result.all_events
              if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert len(checks) == 4 and all(c.passed for c in checks)

    put("raw/transactions/part-1.parquet", [(999, 3, 12.5, days[0], "lost")])
    with pytest.raises(pytest.fail.Exception, match="status IN"):
        run_example(world, "data-quality-pipeline.json")
    again = world.spark.read.format("delta").load(out)
    assert again.count() == 20  # the failed run appended nothing
