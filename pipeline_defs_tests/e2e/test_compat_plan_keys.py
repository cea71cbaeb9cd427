"""Issue 16: every key the original reads and its improvement plan adds, in files written in
the original's style (credentialPath, camelCase, "true" as a string), validated and run
through Dagster against real PostgreSQL and Delta: extract `cache` / `cacheStorageLevel`,
JDBC `hints`, `repartitionData` / `coalesceData`, `validateSchema` with `expectedSchema` (DDL
and Spark's JSON form) and allowExtraColumns / allowMissingColumns, `toDeltaLake`
`autoOptimize`, and `queryName` on a streaming load."""
from __future__ import annotations

import dagster as dg
import psycopg
import pytest

from pipeline_defs.common.errors import ConfigError
from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.config.schema import pipeline_schema
from pipeline_defs.dagster_layer.resources.vault import VaultResource
from pipeline_defs.definitions import default_resources, definitions_for
from pipeline_defs_tests.conftest import streams_outputs, write_json
from pipeline_defs_tests.e2e.test_streaming_runs import failure, write_batch

USERS = [(i, f"user{i}", i % 4 != 0, 2024 + i % 2) for i in range(1, 41)]

JSON_SCHEMA = {"type": "struct", "fields": [
    {"name": "user_id", "type": "integer", "nullable": True, "metadata": {}},
    {"name": "signup_year", "type": "integer", "nullable": True, "metadata": {}},
    {"name": "referrer", "type": "string", "nullable": True, "metadata": {}}]}


def plan_file(tmp_path, cache: bool) -> dict:
    return {
        "name": "plan-keys",
        "description": "Every key of the original and of its improvement plan.",
        "steps": [
            {"type": "extract", "method": "fromPostgres", "name": "users", "config": {
                "table": "users", "credentialPath": "secret/data/postgres/production",
                "hints": {"pushdown": False, "columnPruning": True},
                "cache": "true" if cache else "false", "cacheStorageLevel": "MEMORY_ONLY",
                "registerAs": "users"}},
            {"type": "transform", "method": "filterRows", "config": {
                "condition": "active = true"}},
            {"type": "transform", "method": "repartitionData", "config": {"numPartitions": 3}},
            {"type": "validate", "method": "validateSchema", "config": {
                "expectedSchema": "user_id INT NOT NULL, user_name STRING, active BOOLEAN",
                "mode": "lenient", "allowExtraColumns": True}},
            {"type": "validate", "method": "validateSchema", "config": {
                "expectedSchema": JSON_SCHEMA, "mode": "lenient",
                "allowMissingColumns": True}},
            {"type": "transform", "method": "coalesceData", "config": {"numPartitions": 1}},
            {"type": "load", "method": "toDeltaLake", "name": "active_users", "config": {
                "path": str(tmp_path / "lake/active_users"), "mode": "overwrite",
                "queryName": "unused_in_batch"}},
            {"type": "transform", "method": "sql", "config": {
                "query": "SELECT signup_year, count(*) AS users FROM users "
                         "GROUP BY signup_year"}},
            {"type": "transform", "method": "repartitionData", "config": {
                "numPartitions": 4, "columns": ["signup_year"]}},
            {"type": "load", "method": "toDeltaLake", "name": "by_year", "config": {
                "path": str(tmp_path / "lake/by_year"), "mode": "overwrite",
                "autoOptimize": True}}]}


@pytest.fixture
def world(pg, vault, tmp_path):
    vault.put("secret", "postgres/production", pg.secret())
    # no index: building one scans the table, counted when the admin session reports (late)
    pg.sql("CREATE TABLE users (user_id int NOT NULL, user_name text, active boolean, "
           "signup_year int)")
    with pg.admin.cursor() as cur:
        cur.executemany("INSERT INTO users VALUES (%s, %s, %s, %s)", USERS)
    return {**default_resources(), "vault": VaultResource(
        url=vault.url, token=vault.token, audit_log=str(tmp_path / "audit.jsonl"))}


def run(tmp_path, raw: dict, resources, registry):
    p = load_pipeline(write_json(tmp_path / f"{raw['name']}.json", raw), registry)
    job = definitions_for([p], resources).resolve_job_def(p.name.replace("-", "_"))
    instance = dg.DagsterInstance.ephemeral()
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    result.logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert result.success, failure(result)
    return result


def scans_of_users(pg) -> int:
    """Sequential scans PostgreSQL ran on `users`, once every connection of the pipeline's
    user has ended (a backend reports its counts as it exits)."""
    with psycopg.connect(host=pg.host, port=pg.port, user="postgres", dbname=pg.database,
                         autocommit=True) as c:
        for _ in range(600):
            busy = c.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s",
                             (pg.username,)).fetchone()[0]
            if busy == 0:
                break
            c.execute("SELECT pg_sleep(0.05)")
        else:
            pytest.fail(f"{busy} connections of the pipeline's user still open after 30 s")
        c.execute("SELECT pg_stat_clear_snapshot()")
        return c.execute("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = 'users'"
                         ).fetchone()[0]


def step_metadata(result, op_suffix: str) -> dict:
    out = next(e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"
               and e.step_key.endswith(op_suffix))
    return {k: getattr(v, "value", getattr(v, "text", v))
            for k, v in out.event_specific_data.metadata.items()}


def test_a_file_with_every_plan_key_validates_and_runs(world, pg, tmp_path, registry, spark):
    raw = plan_file(tmp_path, cache=True)
    before = scans_of_users(pg)
    result = run(tmp_path, raw, world, registry)
    active = sorted((u, n, a) for u, n, a, _ in USERS if a)
    got = spark.read.format("delta").load(str(tmp_path / "lake/active_users"))
    assert sorted((r.user_id, r.user_name, r.active) for r in got.collect()) == active
    # expectedSchema (JSON form) named signup_year, which is there, and referrer, which is
    # not: allowMissingColumns let it pass; the DDL form allowed the extra columns
    years = {y: sum(1 for *_, yy in USERS if yy == y) for y in (2024, 2025)}
    by_year = spark.read.format("delta").load(str(tmp_path / "lake/by_year"))
    assert {r.signup_year: r.users for r in by_year.collect()} == years

    # cache: two loads read `users`, PostgreSQL was scanned once
    assert scans_of_users(pg) - before == 1
    meta = step_metadata(result, "users")
    assert meta["cached"] == "MEMORY_ONLY" and meta["pushdown"] == "off"
    # autoOptimize: 4 partitions written as one file (optimized write)
    assert step_metadata(result, "by_year")["delta_numFiles"] == 1

    # the same file without cache scans PostgreSQL once per load: the count above can fail
    before = scans_of_users(pg)
    run(tmp_path, plan_file(tmp_path, cache=False), world, registry)
    assert scans_of_users(pg) - before == 2


def test_plan_keys_refused_with_the_fix(tmp_path, registry):
    raw = plan_file(tmp_path, cache=True)
    raw["steps"][0]["config"]["hints"]["columnPruning"] = False
    raw["steps"][3]["config"]["expectedSchema"] = "user_id INT, user_name"
    raw["steps"][6]["config"]["cache"] = True
    raw["steps"][4]["config"]["expectedColumns"] = [{"name": "user_id", "type": "int"}]
    with pytest.raises(ConfigError) as e:
        load_pipeline(write_json(tmp_path / "bad.json", raw), registry)
    msg = str(e.value)
    assert "step 1 (extract.fromPostgres), config.hints.columnPruning: Spark's JDBC" in msg
    assert "step 4 (validate.validateSchema), config.expectedSchema: 'user_name' is not " \
           "\"name TYPE\"" in msg
    assert "step 5 (validate.validateSchema), config.expectedColumns: give exactly one of " \
           "expectedColumns and expectedSchema" in msg
    assert "step 7 (load.toDeltaLake), config.cache: a load's output is a table" in msg


def test_query_name_names_the_streaming_query(vault, tmp_path, registry, spark):
    src = tmp_path / "incoming"
    write_batch(src, "a.json", [{"id": i, "amount": i * 10} for i in range(1, 51)])
    raw = {"name": "named-stream", "mode": "streaming",
           "streaming": {"trigger": "availableNow", "checkpointRoot": str(tmp_path / "cp")},
           "steps": [
               {"type": "extract", "method": "fromFile", "config": {
                   "path": str(src), "format": "json", "schema": "id BIGINT, amount INT"}},
               {"type": "load", "method": "toDeltaLake", "config": {
                   "path": str(tmp_path / "lake"), "mode": "append",
                   "queryName": "amounts_to_lake", "autoOptimize": True}}]}
    res = {**default_resources(), "vault": VaultResource(
        url=vault.url, token=vault.token, audit_log=str(tmp_path / "audit"))}
    result = run(tmp_path, raw, res, registry)
    streams = streams_outputs(result)
    assert streams[0]["query"] == "amounts_to_lake" and streams[0]["input_rows"] == 50
    assert any("started streaming query amounts_to_lake" in m for m in result.logs)
    assert spark.read.format("delta").load(str(tmp_path / "lake")).count() == 50

    # a stream cannot be cached, and two loads cannot share a query name
    raw["steps"][0]["config"]["cache"] = True
    raw["steps"].append({"type": "load", "method": "toDeltaLake", "config": {
        "path": str(tmp_path / "lake2"), "queryName": "amounts_to_lake"}})
    with pytest.raises(ConfigError) as e:
        load_pipeline(write_json(tmp_path / "bad.json", raw), registry)
    assert "config.cache: a stream cannot be cached" in str(e.value)
    assert "queryName 'amounts_to_lake' is also step 2's" in str(e.value)


def test_aliases_are_one_method(registry):
    assert registry.get("transform", "repartitionData") is registry.get("transform",
                                                                          "repartition")
    assert registry.get("transform", "coalesceData").method == "coalesce"
    methods = set(registry.methods())
    assert {("transform", "repartitionData"), ("transform", "coalesceData")} <= methods
    assert [d.method for d in registry.all()].count("repartition") == 1
    # the JSON Schema accepts both names, with the same keys
    steps = pipeline_schema(registry)["properties"]["steps"]["items"]["oneOf"]
    branches = {b["title"]: b for b in steps}
    assert branches["transform.repartitionData"]["properties"]["config"] == \
        branches["transform.repartition"]["properties"]["config"]
