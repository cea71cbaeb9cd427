"""SQL pipeline files run for real: the plan's example against PostgreSQL (credentials from
Vault) and the S3 server, a join of two EXTRACTs with HAVING, a failing CHECK that loads
nothing, every source and sink keyword, a stream from Kafka into Delta whose CHECK drops rows.
Figures are computed in Python from the rows the test wrote; targets are read back with each
store's own client."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.dagster_layer.resources.vault import VaultResource
from pipeline_defs.definitions import default_resources, definitions_for
from pipeline_defs_tests.conftest import REPO, consume_records
from pipeline_defs_tests.e2e.test_streaming_runs import failure
from pipeline_defs_tests.servers import produce
from pipeline_defs_tests.test_config.test_sql_files import PLAN

PIPELINE = str(Path(sys.executable).parent / "pipeline")


def run_sql(tmp_path: Path, vault, text: str, registry, name: str = "p.sql"):
    f = tmp_path / name
    f.write_text(text)
    p = load_pipeline(f, registry)
    res = {**default_resources(), "vault": VaultResource(
        url=vault.url, token=vault.token, audit_log=str(tmp_path / "audit"))}
    defs = definitions_for([p], res)
    job = defs.resolve_job_def(p.name.replace("-", "_"))
    instance = dg.DagsterInstance.ephemeral()
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    result.logs = [e.user_message for e in instance.all_logs(result.run_id)]
    result.defs = defs
    return result


def s3_parquet_rows(s3, bucket: str, prefix: str) -> list[dict]:
    """Rows of every Parquet file under the prefix, with the partition values of its path."""
    rows = []
    for key in s3.keys(bucket, prefix):
        if not key.endswith(".parquet"):
            continue
        parts = dict(p.split("=", 1) for p in key.split("/") if "=" in p)
        body = s3.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        for r in pq.read_table(io.BytesIO(body)).to_pylist():
            rows.append({**r, **parts})
    return rows


def sales(pg) -> list[tuple]:
    today = date.today()
    rows = [(i, 1 + i % 7, (i * 37) % 500 + 0.25, today - timedelta(days=i % 12))
            for i in range(1, 401)]
    pg.sql("CREATE TABLE sales (id int PRIMARY KEY, product_id int, amount double precision, "
           "order_date date)")
    with pg.admin.cursor() as cur:
        cur.executemany("INSERT INTO sales VALUES (%s, %s, %s, %s)", rows)
    return rows




def test_the_plans_example_against_postgres_vault_and_s3(pg, s3, vault, tmp_path):
    """The plan's text as written, run by `pipeline run` as a user would: PostgreSQL's
    credentials from Vault, S3 from the AWS environment (keys, endpoint)."""
    rows = sales(pg)
    vault.put("secret", "postgres", pg.secret())
    s3.client.create_bucket(Bucket="bucket")
    secret = s3.secret()
    env = {**{k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"},
           "SPARK_MASTER": "local[2]", "VAULT_ADDR": vault.url, "VAULT_TOKEN": vault.token,
           "AWS_ACCESS_KEY_ID": secret["accessKeyId"],
           "AWS_SECRET_ACCESS_KEY": secret["secretAccessKey"],
           "AWS_ENDPOINT_URL_S3": s3.endpoint, "AWS_REGION": "us-east-1",
           "PIPELINE_AUDIT_LOG": str(tmp_path / "audit")}

    def run(text: str, name: str) -> subprocess.CompletedProcess:
        (tmp_path / name).write_text(text)
        return subprocess.run([PIPELINE, "run", str(tmp_path / name)], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=600)
    # as written, its LOAD partitions by order_date, a column its TRANSFORM does not keep:
    # the run stops there with one line saying so, and writes nothing
    r = run(PLAN, "sales_aggregation.sql")
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    out = r.stdout + r.stderr
    assert "Traceback" not in out
    assert "partitionBy names 'order_date', which the input does not have. Columns: " \
        "product_id, total_sales, order_count" in out, out[-3000:]
    assert s3.keys("bucket") == []
    # the same with order_date kept (grouped by it): the figures, per day and product
    fixed = PLAN.replace("SELECT product_id,", "SELECT product_id, order_date,").replace(
        "GROUP BY product_id", "GROUP BY product_id, order_date").replace(
        "HAVING total_sales > 1000", "HAVING total_sales > 300")
    r = run(fixed, "fixed.sql")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    since = date.today() - timedelta(days=7)
    totals: dict = defaultdict(lambda: [0.0, 0])
    for _, product, amount, day in rows:
        if day >= since:
            totals[(product, day.isoformat())][0] += amount
            totals[(product, day.isoformat())][1] += 1
    expected = sorted((p, d, round(t, 6), n) for (p, d), (t, n) in totals.items() if t > 300)
    got = sorted((r["product_id"], r["order_date"], round(r["total_sales"], 6),
                  r["order_count"]) for r in s3_parquet_rows(s3, "bucket", "aggregated/sales"))
    assert got == expected and len(expected) > 5


def test_a_join_of_two_extracts_with_having(pg, mysql, vault, tmp_path, registry):
    rows = sales(pg)
    mysql.sql("CREATE TABLE products (id int PRIMARY KEY, category varchar(20))")
    cats = {p: "abc"[p % 3] for p in range(1, 8)}
    for p, c in cats.items():
        mysql.sql("INSERT INTO products VALUES (%s, %s)", (p, c))
    vault.put("secret", "pg", pg.secret())
    vault.put("secret", "my", mysql.secret())
    out = tmp_path / "by_category"
    result = run_sql(tmp_path, vault, f"""
CREATE PIPELINE category_totals AS
EXTRACT FROM postgres.sales USING vault('secret/data/pg') AS s
EXTRACT FROM mysql.products USING vault('secret/data/my') AS p
TRANSFORM
  SELECT p.category, SUM(s.amount) AS total, COUNT(*) AS n
  FROM s JOIN p ON s.product_id = p.id
  GROUP BY p.category
  HAVING SUM(s.amount) > 28550
LOAD TO delta '{out}' MODE overwrite;
""", registry)
    assert result.success, failure(result)
    totals: dict = defaultdict(lambda: [0.0, 0])
    for _, product, amount, _ in rows:
        totals[cats[product]][0] += amount
        totals[cats[product]][1] += 1
    expected = sorted((c, round(t, 6), n) for c, (t, n) in totals.items() if t > 28550)
    from pipeline_defs_tests.test_steps.test_delta_stream_sink import commits
    files = [f for c in commits(out) for f in c["adds"]]
    got = sorted((r["category"], round(r["total"], 6), r["n"])
                 for f in files for r in pq.read_table(out / f).to_pylist())
    assert got == expected and 0 < len(expected) < 3
    # the Dagster op shows the clause as written, the table's asset its LOAD
    ops = result.defs.resolve_job_def("category_totals").all_node_defs
    described = [d.description for d in ops if "JOIN p ON" in (d.description or "")]
    assert described and "```sql\nTRANSFORM\n  SELECT p.category" in described[0]
    asset = next(a for a in result.defs.resolve_all_asset_specs()
                 if a.key.path[-1] == "by_category")
    lineage = asset.description.split("The SQL it comes from:\n\n```sql\n")[1]
    assert lineage.startswith("EXTRACT FROM postgres.sales USING vault('secret/data/pg') AS s\n"
                              "EXTRACT FROM mysql.products")
    assert "TRANSFORM\n  SELECT p.category" in lineage
    assert lineage.endswith(f"LOAD TO delta '{out}' MODE overwrite\n```")


def test_a_failing_check_halts_the_run_and_loads_nothing(vault, tmp_path, registry, spark):
    src = tmp_path / "in"
    spark.createDataFrame([(1, 5.0), (2, -3.0), (3, 7.0)], "id INT, amount DOUBLE") \
        .write.parquet(str(src))
    out = tmp_path / "out"
    result = run_sql(tmp_path, vault, f"""
CREATE PIPELINE guarded AS
EXTRACT FROM file '{src}' FORMAT parquet
VALIDATE
  CHECK amount > 0
  CHECK id IS NOT NULL
LOAD TO delta '{out}' MODE overwrite
""", registry)
    assert not result.success
    message = failure(result)
    assert "amount > 0" in message and "1" in message
    assert not out.exists()


def test_every_source_and_sink_keyword_for_real(pg, mysql, s3, kafka, topic, vault, tmp_path,
                                                registry, spark):
    pg.sql("CREATE TABLE a (id int, v text)")
    pg.sql("INSERT INTO a VALUES (1, 'pg')")
    mysql.sql("CREATE TABLE b (id int, v varchar(10))")
    mysql.sql("INSERT INTO b VALUES (2, 'my')")
    spark.createDataFrame([(3, "delta")], "id INT, v STRING").write.format("delta") \
        .save(str(tmp_path / "c"))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "d.csv").write_text("id;v\n4;file\n")
    s3.client.create_bucket(Bucket="lake")
    s3.client.put_object(Bucket="lake", Key="raw/e.json", Body=b'{"id": 5, "v": "s3"}\n')
    for name, secret in (("pg", pg.secret()), ("my", mysql.secret()), ("s3", s3.secret()),
                         ("kafka", {"bootstrap.servers": kafka})):
        vault.put("secret", name, secret)
    t = topic(partitions=1)
    result = run_sql(tmp_path, vault, f"""
CREATE PIPELINE every_store AS
EXTRACT FROM postgres.a USING vault('secret/data/pg') AS a
EXTRACT FROM mysql.b USING vault('secret/data/my') AS b
EXTRACT FROM delta '{tmp_path / "c"}' AS c
EXTRACT FROM file '{tmp_path / "d"}' FORMAT csv OPTIONS (sep ';', schema 'id INT, v STRING')
  AS d
EXTRACT FROM s3 's3a://lake/raw/' FORMAT json USING vault('secret/data/s3')
  OPTIONS (schema 'id INT, v STRING') AS e
TRANSFORM
  SELECT id, v FROM a UNION ALL SELECT id, v FROM b UNION ALL SELECT id, v FROM c
  UNION ALL SELECT id, v FROM d UNION ALL SELECT id, v FROM e
LOAD TO delta '{tmp_path / "out_delta"}' MODE overwrite
LOAD TO file '{tmp_path / "out_file"}' FORMAT json MODE overwrite
LOAD TO s3 's3a://lake/out/' FORMAT parquet MODE overwrite USING vault('secret/data/s3')
LOAD TO postgres.all_rows USING vault('secret/data/pg') MODE overwrite
LOAD TO mysql.all_rows USING vault('secret/data/my') MODE merge KEYS (id)
  OPTIONS (assetKey = 'all_rows_mysql')
LOAD TO kafka.`{t}` USING vault('secret/data/kafka')
""", registry)
    assert result.success, failure(result)
    want = [(1, "pg"), (2, "my"), (3, "delta"), (4, "file"), (5, "s3")]
    assert sorted(pg.sql("SELECT id, v FROM all_rows")) == want
    assert sorted(mysql.sql("SELECT id, v FROM all_rows")) == want
    assert sorted((r["id"], r["v"]) for r in s3_parquet_rows(s3, "lake", "out/")) == want
    lines = [json.loads(line) for f in (tmp_path / "out_file").glob("*.json")
             for line in f.read_text().splitlines()]
    assert sorted((r["id"], r["v"]) for r in lines) == want
    from pipeline_defs_tests.test_steps.test_delta_stream_sink import commits
    out = tmp_path / "out_delta"
    assert sorted((r["id"], r["v"]) for c in commits(out) for f in c["adds"]
                  for r in pq.read_table(out / f).to_pylist()) == want
    records = consume_records(kafka, t, 5)
    assert sorted((json.loads(v)["id"], json.loads(v)["v"]) for _, v in records) == want


def amounts_topic(kafka, topic, vault) -> str:
    """A topic of 300 events, amount = id % 50 - 10 (some not positive); Kafka in Vault."""
    t = topic(partitions=2)
    produce(kafka, t, ({"id": i, "amount": i % 50 - 10} for i in range(300)), key="id")
    vault.put("secret", "kafka", {"bootstrap.servers": kafka})
    return t


def test_a_stream_from_kafka_into_delta_whose_check_drops_rows(kafka, topic, vault, tmp_path,
                                                              registry):
    t, out = amounts_topic(kafka, topic, vault), tmp_path / "positive"
    result = run_sql(tmp_path, vault, f"""
CREATE PIPELINE positive_amounts
WITH (mode = 'streaming',
      streaming = {{"trigger": "availableNow", "checkpointRoot": "{tmp_path / 'cp'}"}}) AS
EXTRACT FROM kafka.`{t}` USING vault('secret/data/kafka')
  OPTIONS (startingOffsets 'earliest', schema 'id BIGINT, amount INT')
VALIDATE CHECK amount > 0 ON VIOLATION DROP
LOAD TO delta '{out}' MODE append;
""", registry)
    assert result.success, failure(result)
    from pipeline_defs_tests.test_steps.test_delta_stream_sink import live_ids
    assert live_ids(out) == [i for i in range(300) if i % 50 - 10 > 0]


def test_declarative_materialized_views_one_reading_the_other(vault, tmp_path, registry,
                                                              spark, monkeypatch):
    """Lakeflow-style SQL on the product's SparkSession: a temporary view over a CSV
    (read_files), a materialized view with expectations (one drops rows) reading it, a second
    reading the first (defined before it in the file), its table in the warehouse."""
    monkeypatch.setenv("PIPELINE_WAREHOUSE", str(tmp_path / "warehouse"))
    orders = [(i, f"c{i % 6}", (i * 53) % 400 - 60) for i in range(1, 301)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "orders.csv").write_text(
        "id,customer,amount\n" + "".join(f"{i},{c},{a}\n" for i, c, a in orders))
    totals: dict = defaultdict(lambda: [0, 0])
    for _, c, a in orders:
        if a > 0:
            totals[c][0] += a
            totals[c][1] += 1
    cut = sorted(t for t, _ in totals.values())[len(totals) // 2]  # about half are bigger
    result = run_sql(tmp_path, vault, f"""
CREATE MATERIALIZED VIEW big_customers AS
  SELECT customer, total FROM customer_totals WHERE total > {cut};

CREATE OR REFRESH MATERIALIZED VIEW customer_totals (
  CONSTRAINT positive_amounts EXPECT (total > 0) ON VIOLATION DROP ROW,
  CONSTRAINT named EXPECT (customer IS NOT NULL) ON VIOLATION FAIL UPDATE
)
COMMENT 'Spend per customer, positive orders only'
LOCATION '{tmp_path / "lake" / "customer_totals"}'
TBLPROPERTIES ('delta.logRetentionDuration' = 'interval 9 days', 'quality' = 'gold')
AS SELECT customer, SUM(amount) AS total, COUNT(*) AS n FROM positive_orders
   GROUP BY customer;

CREATE TEMPORARY VIEW positive_orders AS
  SELECT * FROM read_files('{tmp_path / "in"}', format => 'csv', header => 'true',
                           schema => 'id INT, customer STRING, amount INT')
  WHERE amount > 0;
""", registry, "customers.sql")
    assert result.success, failure(result)
    from pipeline_defs_tests.test_steps.test_delta_stream_sink import commits

    def table(path):
        live = set()
        for c in commits(path):
            live = (live - c["removes"]) | set(c["adds"])
        return [r for f in live for r in pq.read_table(path / f).to_pylist()]
    got = sorted((r["customer"], r["total"], r["n"])
                 for r in table(tmp_path / "lake" / "customer_totals"))
    assert got == sorted((c, t, n) for c, (t, n) in totals.items())
    big = sorted((r["customer"], r["total"]) for r in table(tmp_path / "warehouse" /
                                                             "big_customers"))
    assert big == sorted((c, t) for c, (t, _) in totals.items() if t > cut)
    assert 0 < len(big) < len(totals)
    conf = [json.loads(line)["metaData"]["configuration"] for f in sorted(
        (tmp_path / "lake" / "customer_totals" / "_delta_log").glob("*.json"))
        for line in f.read_text().splitlines() if line.startswith('{"metaData"')][-1]
    assert conf == {"delta.logRetentionDuration": "interval 9 days", "quality": "gold"}
    # the expectations are asset checks on the table, named after the constraints
    checks = {e.event_specific_data.check_name for e in result.all_events
              if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert {"positive_amounts", "named"} <= checks


def test_declarative_streaming_table_from_kafka_drops_rows(kafka, topic, vault, tmp_path,
                                                           registry):
    t, out = amounts_topic(kafka, topic, vault), tmp_path / "positive"
    result = run_sql(tmp_path, vault, f"""
SET streaming = {{"trigger": "availableNow", "checkpointRoot": "{tmp_path / 'cp'}"}};
CREATE STREAMING TABLE positive_amounts (
  CONSTRAINT positive EXPECT (amount > 0) ON VIOLATION DROP ROW
)
LOCATION '{out}'
AS SELECT id, amount FROM STREAM read_kafka(
  subscribe => '{t}', credentialPath => 'secret/data/kafka',
  startingOffsets => 'earliest', schema => 'id BIGINT, amount INT');
""", registry, "amounts.sql")
    assert result.success, failure(result)
    from pipeline_defs_tests.test_steps.test_delta_stream_sink import live_ids
    assert live_ids(out) == [i for i in range(300) if i % 50 - 10 > 0]
