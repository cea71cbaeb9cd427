"""SQL pipeline files (the plan's language): what each clause compiles to, errors at their
line and column, and the round trip with the JSON format over every example."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline_defs.common.errors import ConfigError
from pipeline_defs.config.loader import load_pipeline, load_pipelines
from pipeline_defs.config.readers import read
from pipeline_defs.config.sqlform import to_sql
from pipeline_defs_tests.conftest import COMPAT, CONFIGS

PLAN = """CREATE OR REPLACE PIPELINE sales_aggregation AS
EXTRACT
  FROM postgres.sales
  USING vault('secret/data/postgres')
  WHERE order_date >= CURRENT_DATE - INTERVAL '7 days'
TRANSFORM
  SELECT product_id, SUM(amount) AS total_sales, COUNT(*) AS order_count
  GROUP BY product_id
  HAVING total_sales > 1000
VALIDATE
  CHECK total_sales > 0
  CHECK order_count BETWEEN 1 AND 10000
LOAD
  TO s3 's3a://bucket/aggregated/sales'
  FORMAT parquet
  PARTITION BY order_date
  MODE append;
"""


def sql_file(tmp_path: Path, text: str, name: str = "p.sql") -> Path:
    f = tmp_path / name
    f.write_text(text)
    return f


def compiled(tmp_path: Path, text: str) -> dict:
    doc = read(sql_file(tmp_path, text))
    assert not isinstance(doc, list), doc
    assert hasattr(doc, "data"), doc
    return doc.data


def problems(tmp_path: Path, text: str, registry) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_pipeline(sql_file(tmp_path, text, "orders.sql"), registry)
    return [str(p) for p in e.value.problems]


def test_the_plans_example_compiles_to_these_steps(tmp_path):
    data = compiled(tmp_path, PLAN)
    assert data == {"name": "sales_aggregation", "steps": [
        {"type": "extract", "method": "fromPostgres",
         "config": {"table": "sales", "credentialPath": "secret/data/postgres"}},
        {"type": "transform", "method": "filterRows",
         "config": {"condition": "order_date >= CURRENT_DATE - INTERVAL '7 days'"}},
        {"type": "transform", "method": "sql", "config": {"query": (
            "SELECT product_id, SUM(amount) AS total_sales, COUNT(*) AS order_count FROM "
            "__THIS__ GROUP BY product_id\n  HAVING total_sales > 1000")}},
        {"type": "validate", "method": "validateBusinessRules", "config": {
            "rules": ["total_sales > 0", "order_count BETWEEN 1 AND 10000"]}},
        {"type": "load", "method": "toS3", "config": {
            "bucket": "bucket", "path": "aggregated/sales", "format": "parquet",
            "partitionBy": ["order_date"], "mode": "append"}}]}


def test_the_plans_example_loads_with_its_sql_shown_per_step(tmp_path, registry):
    p = load_pipeline(sql_file(tmp_path, PLAN), registry)
    assert [s.label for s in p.steps] == [
        "extract.fromPostgres", "transform.filterRows", "transform.sql",
        "validate.validateBusinessRules", "load.toS3"]
    assert [s.line for s in p.steps] == [2, 2, 6, 10, 13]
    assert p.steps[2].sql.startswith("TRANSFORM\n  SELECT product_id")
    assert p.steps[4].sql.endswith("MODE append")


def test_every_source_and_sink_keyword(tmp_path):
    data = compiled(tmp_path, """
CREATE PIPELINE every_store WITH (schedule = '0 6 * * *', mode = 'batch',
                                  params = {"day": "${DATE-1}"}, retries = 2) AS
EXTRACT FROM mysql.shop.orders USING vault('secret/data/mysql') AS orders
EXTRACT FROM kafka.`user-events` OPTIONS (startingOffsets 'earliest', schema = 'id INT',
                                          `kafka.security.protocol` 'PLAINTEXT') AS events
EXTRACT FROM delta '/lake/customers' OPTIONS (version 3) AS customers
EXTRACT FROM file '/data/in' FORMAT csv OPTIONS (header 'true', sep ';') AS raw
EXTRACT FROM s3 's3a://lake/raw/x/' FORMAT json USING vault('secret/data/s3') AS s3raw
TRANSFORM SELECT o.id, c.name FROM orders o JOIN customers c ON o.cid = c.id AS joined
LOAD TO delta '/lake/out' MODE merge KEYS (id) PARTITION BY day
LOAD TO file '/out/x' FORMAT parquet MODE overwrite OPTIONS (compression 'zstd')
LOAD TO s3 's3://b/k' FORMAT csv MODE append
LOAD TO postgres.public.totals USING vault('secret/data/pg') MODE merge KEYS (id, day)
LOAD TO mysql.totals MODE overwrite OPTIONS (batchSize 5000)
LOAD TO kafka.out_topic USING vault('secret/data/kafka')
  STEP (name = 'to_kafka', retries = {"maxRetries": 3});""")
    assert {k: v for k, v in data.items() if k != "steps"} == {
        "name": "every_store", "schedule": "0 6 * * *", "mode": "batch",
        "params": {"day": "${DATE-1}"}, "retries": 2}
    got = [(s["method"], s["config"]) for s in data["steps"]]
    assert got == [
        ("fromMySQL", {"table": "shop.orders", "credentialPath": "secret/data/mysql",
                       "registerAs": "orders"}),
        ("fromKafka", {"topic": "user-events", "startingOffsets": "earliest",
                       "schema": "id INT",
                       "properties": {"kafka.security.protocol": "PLAINTEXT"},
                       "registerAs": "events"}),
        ("fromDeltaLake", {"path": "/lake/customers", "version": 3,
                           "registerAs": "customers"}),
        ("fromFile", {"path": "/data/in", "format": "csv",
                      "options": {"header": "true", "sep": ";"}, "registerAs": "raw"}),
        ("fromS3", {"bucket": "lake", "path": "raw/x/", "format": "json",
                    "credentialPath": "secret/data/s3", "registerAs": "s3raw"}),
        ("sql", {"query": "SELECT o.id, c.name FROM orders o JOIN customers c ON o.cid = c.id",
                 "registerAs": "joined"}),
        ("toDeltaLake", {"path": "/lake/out", "partitionBy": ["day"],
                         "merge": {"keyColumns": ["id"]}}),
        ("toFile", {"path": "/out/x", "format": "parquet", "mode": "overwrite",
                    "compression": "zstd"}),
        ("toS3", {"bucket": "b", "path": "k", "format": "csv", "mode": "append"}),
        ("toPostgres", {"table": "public.totals", "credentialPath": "secret/data/pg",
                        "mode": "upsert", "keyColumns": ["id", "day"]}),
        ("toMySQL", {"table": "totals", "mode": "overwrite", "batchSize": 5000}),
        ("toKafka", {"topic": "out_topic", "credentialPath": "secret/data/kafka"})]
    assert data["steps"][-1]["name"] == "to_kafka"
    assert data["steps"][-1]["retries"] == {"maxRetries": 3}


def test_checks_group_by_action_and_any_method_is_reachable(tmp_path):
    data = compiled(tmp_path, """CREATE PIPELINE checks AS
EXTRACT METHOD fromFile WITH (path = '/d', format = 'json')
VALIDATE
  CHECK amount > 0
  CHECK status IN ('a', 'b') ON VIOLATION FAIL
  CHECK customer_id IS NOT NULL ON VIOLATION QUARANTINE '/q/orders'
  CHECK region <> '' ON VIOLATION WARN
  CHECK qty < 100 ON VIOLATION WARN
VALIDATE METHOD validateUnique WITH (columns = ["order_id"])
TRANSFORM METHOD deduplicate WITH (columns = ["id"]) AS deduped
LOAD TO delta '/out'""")
    assert [(s["method"], s["config"]) for s in data["steps"]] == [
        ("fromFile", {"path": "/d", "format": "json"}),
        ("validateBusinessRules", {"rules": ["amount > 0", "status IN ('a', 'b')"]}),
        ("validateBusinessRules", {"rules": ["customer_id IS NOT NULL"],
                                   "onFailure": "quarantine", "quarantinePath": "/q/orders"}),
        ("validateBusinessRules", {"rules": ["region <> ''", "qty < 100"],
                                   "onFailure": "warn"}),
        ("validateUnique", {"columns": ["order_id"]}),
        ("deduplicate", {"columns": ["id"], "registerAs": "deduped"}),
        ("toDeltaLake", {"path": "/out"})]


def test_a_column_named_like_a_clause_and_extract_the_function(tmp_path):
    data = compiled(tmp_path, """CREATE PIPELINE words AS
EXTRACT FROM file '/d' FORMAT parquet
TRANSFORM SELECT load, transform, EXTRACT(YEAR FROM day) AS y WHERE load > 1
LOAD TO file '/o' FORMAT parquet""")
    assert data["steps"][1]["config"]["query"] == \
        "SELECT load, transform, EXTRACT(YEAR FROM day) AS y FROM __THIS__ WHERE load > 1"


@pytest.mark.parametrize("text, expected", [
    ("CREATE PIPELINE p AS\nEXTRACT FROM file '/d' FORMAT csv\nTRANSFORM\n  SELEC a\n",
     "orders.sql:4:3: expected SELECT, WITH, METHOD or ( after TRANSFORM, found 'SELEC'."),
    ("CREATE PIPELINE p AS\nEXTRACT FROM oracle.sales\n",
     "orders.sql:2:14: expected a source (postgres, mysql, kafka, delta, file, s3), found "
     "'oracle'."),
    ("CREATE PIPELINE p AS\nEXTRACT FROM delta '/d'\nVALIDATE CHECK amount >\n",
     "orders.sql:3:23: invalid SQL expression"),
    ("CREATE PIPELNE p AS EXTRACT FROM delta '/d'",
     "orders.sql:1:8: expected PIPELINE after CREATE, found 'PIPELNE'."),
    ("CREATE PIPELINE p AS\nEXTRACT FROM delta '/d'\nLOAD TO delta '/o' MODE merge (id)\n",
     "orders.sql:3:31: expected KEYS after MODE merge, found '('."),
    ("CREATE PIPELINE p AS\nEXTRACT FROM delta '/d'\nVALIDATE CHECK a > 0 ON VIOLATION STOP\n",
     "orders.sql:3:35: expected FAIL, WARN, DROP or QUARANTINE after ON VIOLATION, found "
     "'STOP'."),
    ("CREATE PIPELINE p AS\nEXTRACT FROM delta '/d' AS d\nTRANSFORM SELECT * FROM dd\n",
     "orders.sql:3:25: unknown name 'dd'"),
])
def test_syntax_and_name_errors_name_line_and_column(tmp_path, registry, text, expected):
    got = problems(tmp_path, text, registry)
    assert len(got) == 1 and got[0].startswith(str(tmp_path / expected.split(":")[0]) + ":" +
                                               expected.split(":", 1)[1]), got


def test_a_bad_key_in_a_step_names_its_line(tmp_path, registry):
    got = problems(tmp_path, "CREATE PIPELINE p AS\nEXTRACT FROM delta '/d'\n"
                   "LOAD TO delta '/o' OPTIONS (mergeSchem 'true')\n", registry)
    assert any(g.startswith(f"{tmp_path / 'orders.sql'}:3, step 2 (load.toDeltaLake)")
               and "mergeSchem" in g and "mergeSchema" in g for g in got), got


def test_a_hostile_parameter_in_a_sql_file_is_refused(tmp_path, registry):
    f = sql_file(tmp_path, "CREATE PIPELINE p WITH (params = {\"day\": \"2025-01-01\"}) AS\n"
                 "EXTRACT FROM delta '/d' WHERE day = '${day}'\nLOAD TO delta '/o'\n")
    load_pipeline(f, registry)  # the default is harmless
    with pytest.raises(ConfigError) as e:
        load_pipeline(f, registry, {"day": "x' OR '1'='1"})
    assert "day" in str(e.value) and "step 2" in str(e.value)


def _json_examples() -> list[Path]:
    return sorted(CONFIGS.glob("*.json")) + sorted(COMPAT.glob("*.json"))


@pytest.mark.parametrize("path", [p for p in _json_examples()
                                  if not p.name.endswith(".schema.json")],
                         ids=lambda p: p.stem)
def test_every_json_example_round_trips_through_sql(path, tmp_path, registry):
    data = json.loads(path.read_text())
    text = to_sql(data)
    back = compiled(tmp_path, text)
    assert back == data, text
    assert to_sql(back) == text
    load_pipeline(sql_file(tmp_path, text, path.stem + ".sql"), registry)


def test_sql_files_in_a_directory_load_beside_json(tmp_path, registry):
    sql_file(tmp_path, PLAN, "a.sql")
    (tmp_path / "b.json").write_text(json.dumps({"name": "b", "steps": [
        {"type": "extract", "method": "fromDeltaLake", "config": {"path": "/x"}}]}))
    assert sorted(p.name for p in load_pipelines([tmp_path], registry)) == \
        ["b", "sales_aggregation"]


# ---------------------------------------------------------------- declarative pipelines SQL
DECLARATIVE = """SET schedule = '0 6 * * *';
CREATE OR REFRESH MATERIALIZED VIEW best_day AS
  SELECT day, total FROM daily_totals ORDER BY total DESC LIMIT 1;

CREATE MATERIALIZED VIEW daily_totals (
  CONSTRAINT positive_total EXPECT (total > 0) ON VIOLATION DROP ROW,
  CONSTRAINT has_day EXPECT (day IS NOT NULL) ON VIOLATION FAIL UPDATE,
  CONSTRAINT few EXPECT (n < 1000)
)
COMMENT 'Sales per day'
PARTITIONED BY (day)
LOCATION '/lake/daily_totals'
AS SELECT day, SUM(amount) AS total, COUNT(*) AS n FROM clean_sales GROUP BY day;

CREATE TEMPORARY VIEW clean_sales AS
  SELECT CAST(day AS DATE) AS day, amount
  FROM read_files('/in/sales', format => 'csv', header => 'true',
                  schema => 'day STRING, amount DOUBLE')
  WHERE amount IS NOT NULL;
"""


def test_declarative_datasets_compile_in_dependency_order(tmp_path):
    data = compiled(tmp_path, DECLARATIVE)
    assert data["name"] == "p" and data["schedule"] == "0 6 * * *" and "mode" not in data
    got = [(s.get("name"), s["method"], s["config"]) for s in data["steps"]]
    assert got == [
        ("read_clean_sales", "fromFile", {"path": "/in/sales", "format": "csv",
                                          "options": {"header": "true"},
                                          "schema": "day STRING, amount DOUBLE",
                                          "registerAs": "__clean_sales_src1"}),
        ("clean_sales", "sql", {"query": "SELECT CAST(day AS DATE) AS day, amount\n  FROM "
                                         "__clean_sales_src1\n  WHERE amount IS NOT NULL",
                                "registerAs": "clean_sales"}),
        ("daily_totals", "sql", {"query": "SELECT day, SUM(amount) AS total, COUNT(*) AS n "
                                          "FROM clean_sales GROUP BY day"}),
        ("positive_total", "validateBusinessRules", {"rules": ["total > 0"],
                                                     "onFailure": "drop"}),
        ("has_day", "validateBusinessRules", {"rules": ["day IS NOT NULL"]}),
        ("few", "validateBusinessRules", {"rules": ["n < 1000"], "onFailure": "warn",
                                          "registerAs": "daily_totals"}),
        ("write_daily_totals", "toDeltaLake", {"path": "/lake/daily_totals",
                                               "mode": "overwrite", "partitionBy": ["day"]}),
        ("best_day", "sql", {"query": "SELECT day, total FROM daily_totals ORDER BY total DESC "
                                      "LIMIT 1", "registerAs": "best_day"}),
        ("write_best_day", "toDeltaLake", {
            "path": "${env:PIPELINE_WAREHOUSE:-spark-warehouse}/best_day",
            "mode": "overwrite"})]
    assert data["steps"][6]["description"] == "Sales per day"


def test_a_declarative_file_loads_and_its_expectations_are_named_steps(tmp_path, registry):
    p = load_pipeline(sql_file(tmp_path, DECLARATIVE, "sales.sql"), registry)
    assert [s.name for s in p.steps if s.kind == "validate"] == \
        ["positive_total", "has_day", "few"]
    assert p.steps[2].sql.startswith("CREATE MATERIALIZED VIEW daily_totals (")
    assert p.steps[2].line == 5


def test_streaming_tables_flows_and_stream_sources(tmp_path, registry):
    text = """SET streaming = {"trigger": "availableNow"};
CREATE STREAMING TABLE events;
CREATE FLOW from_kafka AS INSERT INTO events BY NAME
  SELECT id, amount FROM STREAM(read_kafka(subscribe => 'orders', startingOffsets => 'earliest',
                                           credentialPath => 'secret/data/kafka',
                                           schema => 'id BIGINT, amount INT',
                                           `security.protocol` => 'PLAINTEXT'));
CREATE FLOW from_files AS INSERT INTO events BY NAME
  SELECT id, amount FROM STREAM read_files('/in/events', format => 'json',
                                           schema => 'id BIGINT, amount INT');
CREATE STREAMING TABLE positive (CONSTRAINT positive EXPECT (amount > 0) ON VIOLATION DROP ROW)
LOCATION '/lake/positive'
AS SELECT * FROM STREAM(events);
"""
    data = compiled(tmp_path, text)
    assert data["mode"] == "streaming" and data["streaming"] == {"trigger": "availableNow"}
    got = [(s.get("name"), s["method"], s["config"]) for s in data["steps"]]
    kafka = {"topic": "orders", "startingOffsets": "earliest",
             "credentialPath": "secret/data/kafka", "schema": "id BIGINT, amount INT",
             "properties": {"security.protocol": "PLAINTEXT"},
             "registerAs": "__from_kafka_src1"}
    events = "${env:PIPELINE_WAREHOUSE:-spark-warehouse}/events"
    assert got[:3] == [
        ("read_from_kafka", "fromKafka", kafka),
        ("from_kafka", "sql", {"query": "SELECT id, amount FROM __from_kafka_src1"}),
        ("write_from_kafka", "toDeltaLake", {"path": events, "mode": "append",
                                             "queryName": "from_kafka", "assetKey": "events"})]
    assert got[3][1:] == ("fromFile", {"path": "/in/events", "format": "json",
                                       "schema": "id BIGINT, amount INT",
                                       "registerAs": "__from_files_src2"})
    # events, which only flows fill, is read from its table as a stream
    assert got[-4] == ("read_events_in_positive", "fromDeltaLake", {
        "path": events, "registerAs": "events"})
    # the constraint shares the dataset's name: it becomes <dataset>_<constraint>
    assert got[-3:] == [
        ("positive", "sql", {"query": "SELECT * FROM events"}),
        ("positive_positive", "validateBusinessRules", {
            "rules": ["amount > 0"], "onFailure": "drop", "registerAs": "positive"}),
        ("write_positive", "toDeltaLake", {"path": "/lake/positive", "mode": "append"})]
    load_pipeline(sql_file(tmp_path, text, "events.sql"), registry)


@pytest.mark.parametrize("text, expected", [
    ("CREATE MATERIALIZED VIEW a AS SELECT * FROM b;\nCREATE MATERIALIZED VIEW b AS "
     "SELECT * FROM a;", "orders.sql:1:1: 'a' and b read each other (a cycle)."),
    ("CREATE STREAMING TABLE s AS SELECT * FROM STREAM read_files('/x', format => 'json');\n"
     "CREATE MATERIALIZED VIEW m AS SELECT * FROM s;",
     "orders.sql:2:1: materialized view 'm' in a file with streaming tables"),
    ("CREATE FLOW f AS INSERT INTO nowhere BY NAME SELECT 1 AS x;",
     "orders.sql:1:1: flow 'f' inserts into 'nowhere', which the file does not define."),
    ("CREATE MATERIALIZED VIEW m (x INT) AS SELECT 1 AS x;",
     "orders.sql:1:29: expected CONSTRAINT, found 'x'."),
    ("CREATE MATERIALIZED VIEW m (\n  CONSTRAINT c EXPECT (x > 0) ON VIOLATION SKIP\n) AS "
     "SELECT 1 AS x;", "orders.sql:2:44: expected DROP ROW, FAIL UPDATE or QUARANTINE"),
    ("CREATE MATERIALIZED VIEW m AS\n  SELECT x FRM t;", "orders.sql:2:"),
])
def test_declarative_errors_name_line_and_column(tmp_path, registry, text, expected):
    got = problems(tmp_path, text, registry)
    assert len(got) == 1 and got[0].startswith(str(tmp_path / expected.split(":")[0]) + ":" +
                                               expected.split(":", 1)[1]), got


def test_auto_cdc_flows_compile_to_apply_changes(tmp_path, registry):
    f = tmp_path / "cdc.sql"
    f.write_text("""
CREATE OR REFRESH STREAMING TABLE customers COMMENT 'every version' LOCATION '/lake/c';
CREATE FLOW customers_cdc AS AUTO CDC INTO customers
FROM STREAM(read_kafka(bootstrapServers => 'k:9092', subscribe => 'cdc',
                       schema => 'id INT, region STRING, name STRING, op STRING, ts BIGINT'))
KEYS (id, region)
IGNORE NULL UPDATES
APPLY AS DELETE WHEN op = 'D'
APPLY AS TRUNCATE WHEN op = 'T'
SEQUENCE BY struct(ts, id)
COLUMNS * EXCEPT (op, ts)
STORED AS SCD TYPE 2
TRACK HISTORY ON * EXCEPT (name);
CREATE STREAMING TABLE orders;
APPLY CHANGES INTO orders FROM STREAM(read_kafka(bootstrapServers => 'k:9092',
  subscribe => 'orders', schema => 'id INT, total INT, seq INT'))
KEYS (id) SEQUENCE BY seq COLUMNS id, total;
""")
    p = load_pipeline(f, registry)
    assert p.config.mode == "streaming"
    loads = [s for s in p.steps if s.kind == "load"]
    assert [s.method for s in loads] == ["applyChanges", "applyChanges"]
    c = loads[0].config
    assert (c.path, c.keys, c.sequence_by, c.apply_as_deletes, c.apply_as_truncates) == (
        "/lake/c", ["id", "region"], "struct(ts, id)", "op = 'D'", "op = 'T'")
    assert (c.except_column_list, c.stored_as, c.track_history_except_column_list,
            c.ignore_null_updates, c.query_name) == (
        ["op", "ts"], "scd2", ["name"], True, "customers_cdc")
    assert loads[0].description == "every version"
    o = loads[1].config
    assert (o.keys, o.sequence_by, o.column_list, o.stored_as) == (
        ["id"], "seq", ["id", "total"], "scd1")
    assert o.path.endswith("/orders") and loads[1].name == "write_orders"
    assert "AUTO CDC INTO customers" in loads[0].sql


@pytest.mark.parametrize("text,where,message", [
    ("AUTO CDC INTO t FROM s KEYS (id) STORED AS SCD TYPE 2;", "2:", "needs SEQUENCE BY"),
    ("AUTO CDC INTO t FROM s KEYS (id) SEQUENCE BY seq STORED AS SCD TYPE 3;", "2:",
     "expected 1 or 2 after STORED AS SCD TYPE"),
    ("AUTO CDC INTO t FROM s KEYS (id) APPLY AS DELETE WHEN op = = 'D' SEQUENCE BY s;", "2:",
     ""),
])
def test_auto_cdc_mistakes_name_the_line(tmp_path, registry, text, where, message):
    f = tmp_path / "bad.sql"
    f.write_text(f"CREATE STREAMING TABLE t;\n{text}\n")
    with pytest.raises(ConfigError) as e:
        load_pipeline(f, registry)
    assert f"bad.sql:{where}" in str(e.value) and message in str(e.value), str(e.value)
