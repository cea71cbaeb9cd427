"""applyChanges run as users run it. A Debezium-shaped Kafka topic (before/after/op/source.lsn,
produced out of order) streamed into an SCD2 table with `pipeline run`, the whole process group
SIGKILLed mid-batch, restarted: the table equals the history computed in Python from all events
sorted by sequence, and every change is in the change log once. Snapshots over three days
through Dagster: the table's asset gets the run's counts and the history check."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from pipeline_defs.steps.cdc import END, START
from pipeline_defs_tests.conftest import REPO, checkpoint_batches, write_json
from pipeline_defs_tests.servers import produce
from pipeline_defs_tests.test_steps.test_apply_changes import scd2, snapshot_events

PIPELINE = str(Path(sys.executable).parent / "pipeline")
ROW = "STRUCT<id: INT, name: STRING, tier: STRING>"


def debezium_feed(n_keys: int, seed: int = 3) -> tuple[list[dict], list[tuple]]:
    """Debezium envelopes (c/u/d, re-inserts after deletes) and the same changes as
    (id, lsn, op, name, tier) for the reference."""
    rnd = random.Random(seed)
    msgs, changes, lsn = [], [], 1000
    for k in range(n_keys):
        state = None
        for _ in range(rnd.randint(1, 8)):
            lsn += rnd.randint(1, 5)
            if state is not None and rnd.random() < 0.2:
                op, after = "d", None
            else:
                op = "c" if state is None else "u"
                after = {"id": k, "name": f"n{rnd.randint(0, 3)}", "tier": rnd.choice("ab")}
            msgs.append({"before": state, "after": after, "op": op, "ts_ms": lsn,
                         "source": {"lsn": lsn, "table": "customers"}})
            changes.append((k, lsn, "D" if op == "d" else "U",
                            after and after["name"], after and after["tier"]))
            state = after
    rnd.shuffle(msgs)  # partitions, retries and replays deliver out of order
    return msgs, changes


def test_a_debezium_stream_killed_mid_batch_gives_the_history_exactly_once(
        kafka, topic, tmp_path, spark):
    t = topic(partitions=3)
    msgs, changes = debezium_feed(200)
    produce(kafka, t, msgs)
    table = tmp_path / "customers"
    f = write_json(tmp_path / "cdc.json", {
        "name": "customers-cdc", "mode": "streaming",
        "streaming": {"trigger": "availableNow", "checkpointRoot": str(tmp_path / "cp"),
                      "progressIntervalS": 2},
        "steps": [
            {"type": "extract", "method": "fromKafka", "config": {
                "topic": t, "bootstrapServers": kafka, "startingOffsets": "earliest",
                "maxOffsetsPerTrigger": 250, "schema": f"before {ROW}, after {ROW}, op STRING, "
                "ts_ms BIGINT, source STRUCT<lsn: BIGINT, table: STRING>"}},
            {"type": "transform", "method": "sql", "config": {"query":
                "SELECT coalesce(after.id, before.id) AS id, after.name, after.tier, op, "
                "source.lsn AS lsn FROM __THIS__"}},
            {"type": "load", "method": "applyChanges", "config": {
                "path": str(table), "keys": ["id"], "sequenceBy": "lsn",
                "applyAsDeletes": "op = 'd'", "exceptColumnList": ["op", "lsn"],
                "storedAs": "scd2"}}]})
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "SPARK_MASTER": "local[2]", "DAGSTER_HOME": str(home)}

    def start():
        return subprocess.Popen([PIPELINE, "run", str(f)], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    def checkpoint() -> Path:
        found = list((tmp_path / "cp").glob("*/*/offsets"))
        return found[0].parent if found else tmp_path / "cp" / "none"

    proc = start()
    deadline = time.time() + 300
    while True:  # inside the third micro-batch: two committed, the third planned
        planned, committed = checkpoint_batches(checkpoint())
        if committed >= 1 and planned > committed:
            break
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "no micro-batch started"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    log = tmp_path / "customers_changes"
    logged = spark.read.format("delta").load(str(log)).count()
    assert 0 < logged < len(changes), "the kill did not land mid-stream"

    out = subprocess.run([PIPELINE, "run", str(f)], env=env, cwd=REPO, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    got = sorted(((r["id"], r["name"], r["tier"], r[START], r[END]) for r in
                  spark.read.format("delta").load(str(table)).collect()),
                 key=lambda r: (r[0], r[3]))
    expected = scd2(changes)
    assert got == expected and len(expected) > 400
    stats = spark.read.format("delta").load(str(log)).selectExpr(
        "count(*) AS n", "count(DISTINCT id, __seq) AS distinct_changes").first()
    assert stats.n == stats.distinct_changes == len(changes)
    assert "Traceback" not in out.stdout + out.stderr


def test_snapshots_over_three_days_through_dagster(tmp_path, spark):
    from pipeline_defs.definitions import build_definitions
    days = {"2024-01-01": [(1, "ann", "a"), (2, "bob", "a"), (3, "cy", "b")],
            "2024-01-02": [(1, "ann", "b"), (3, "cy", "b"), (4, "dee", "a")],
            "2024-01-03": [(1, "ann", "b"), (2, "bob", "c"), (4, "dee", "a")]}
    for day, rows in days.items():
        (tmp_path / f"{day}.csv").write_text("id,name,tier\n" + "".join(
            f"{i},{n},{t}\n" for i, n, t in rows))
    configs = tmp_path / "configs"
    configs.mkdir()
    write_json(configs / "snap.json", {"name": "customers-snapshots", "steps": [
        {"type": "extract", "method": "fromFile", "config": {
            "path": str(tmp_path / "${day}.csv"), "format": "csv",
            "schema": "id INT, name STRING, tier STRING"}},
        {"type": "load", "method": "applyChanges", "name": "customers", "config": {
            "path": str(tmp_path / "customers"), "keys": ["id"], "source": "snapshot",
            "sequenceBy": "'${day}'", "storedAs": "scd2"}}]})
    instance = dg.DagsterInstance.ephemeral()
    key = dg.AssetKey(["customers"])
    for day in sorted(days):
        defs = build_definitions(configs, params={"day": day})
        spec = {s.key: s for s in defs.resolve_all_asset_specs()}[key]
        assert "delta" in spec.kinds
        result = defs.resolve_job_def("customers_snapshots").execute_in_process(
            instance=instance)
        assert result.success
        (check,) = [e.event_specific_data for e in result.all_events
                    if e.event_type_value == "ASSET_CHECK_EVALUATION"]
        assert check.check_name == "customers_history" and check.passed
    meta = instance.get_latest_materialization_event(key).asset_materialization.metadata
    # day 3: 2 comes back with a new tier (insert), 3 is gone (closed), 1 and 4 unchanged
    assert meta["rows_inserted"].value == 1 and meta["versions_closed"].value == 1
    assert meta["changes_new"].value == 2 and meta["late_changes"].value == 0
    assert check.metadata["current_versions"].value == 3
    assert meta["table_rows"].value == 6 and meta["dagster/row_count"].value == 3  # read
    assert [c.name for c in meta["dagster/column_schema"].schema.columns] == [
        "id", "name", "tier", START, END]
    got = sorted(((r["id"], r["name"], r["tier"], r[START], r[END]) for r in spark.read.format(
        "delta").load(str(tmp_path / "customers")).collect()), key=lambda r: (r[0], r[3]))
    assert got == scd2(snapshot_events(days))


def test_auto_cdc_in_a_sql_file_from_kafka(kafka, topic, vault, tmp_path, registry, spark):
    from pipeline_defs_tests.e2e.test_sql_pipelines import failure, run_sql
    from pipeline_defs_tests.test_steps.test_apply_changes import scd1
    _, changes = debezium_feed(120, seed=9)
    t = topic(partitions=2)
    produce(kafka, t, ({"id": c[0], "lsn": c[1], "op": c[2], "name": c[3], "tier": c[4]}
                       for c in reversed(changes)))  # the latest first
    vault.put("secret", "kafka", {"bootstrap.servers": kafka})
    out = tmp_path / "customers"
    result = run_sql(tmp_path, vault, f"""
SET streaming = {{"trigger": "availableNow", "checkpointRoot": "{tmp_path / 'cp'}"}};
CREATE OR REFRESH STREAMING TABLE customers LOCATION '{out}';
CREATE FLOW customers_cdc AS AUTO CDC INTO customers
FROM STREAM read_kafka(subscribe => '{t}', credentialPath => 'secret/data/kafka',
  startingOffsets => 'earliest', maxOffsetsPerTrigger => 200,
  schema => 'id INT, lsn BIGINT, op STRING, name STRING, tier STRING')
KEYS (id)
APPLY AS DELETE WHEN op = 'D'
SEQUENCE BY lsn
COLUMNS * EXCEPT (op, lsn)
STORED AS SCD TYPE 1;
""", registry, "customers.sql")
    assert result.success, failure(result)
    got = sorted((r["id"], r["name"], r["tier"]) for r in
                 spark.read.format("delta").load(str(out)).collect())
    assert got == scd1(changes) and len(got) > 50
