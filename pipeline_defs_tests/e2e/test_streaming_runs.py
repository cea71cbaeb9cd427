"""Streaming pipelines through Dagster in-process: availableNow ends the run when the backlog
is drained; row validators per micro-batch (quarantine, warn, fail); the PostgreSQL sink
through foreachBatch, idempotent by batch id; resume from a stable checkpoint; a query that
can no longer resume from its checkpoint fails saying so; the timeout setting."""
from __future__ import annotations

import json

import dagster as dg
import pytest

from pipeline_defs.common.errors import ConfigError
from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.dagster_layer.resources.vault import VaultResource
from pipeline_defs.definitions import default_resources, definitions_for
from pipeline_defs_tests.conftest import consume_records, streams_outputs, write_json


def run(tmp_path, vault, raw: dict, registry):
    p = load_pipeline(write_json(tmp_path / f"{raw['name']}.json", raw), registry)
    res = {**default_resources(), "vault": VaultResource(
        url=vault.url, token=vault.token, audit_log=str(tmp_path / "audit"))}
    job = definitions_for([p], res).resolve_job_def(p.name.replace("-", "_"))
    instance = dg.DagsterInstance.ephemeral()
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    result.logs = [e.user_message for e in instance.all_logs(result.run_id)]
    return result


def failure(result) -> str:
    e = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    data = e.event_specific_data
    return data.user_failure_data.description if data.user_failure_data else \
        data.error.to_string()


def write_batch(d, name, records):
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text("\n".join(json.dumps(r) for r in records))


def test_available_now_validators_and_an_idempotent_postgres_sink(pg, vault, tmp_path,
                                                                  registry, spark):
    src = tmp_path / "incoming"
    write_batch(src, "a.json", [{"id": i, "amount": (i * 37) % 1200, "note": None if i % 9 == 0
                                 else "n"} for i in range(1, 201)])
    vault.put("secret", "pg", pg.secret())
    raw = {"name": "files-to-pg", "mode": "streaming",
           "streaming": {"trigger": "availableNow",
                         "checkpointRoot": str(tmp_path / "checkpoints")},
           "quarantineRoot": str(tmp_path / "quarantine"),
           "steps": [
               {"type": "extract", "method": "fromFile", "config": {
                   "path": str(src), "format": "json",
                   "schema": "id BIGINT, amount INT, note STRING"}},
               {"type": "validate", "method": "validateRanges", "config": {
                   "ranges": {"amount": {"min": 0, "max": 1000}}, "onFailure": "quarantine"}},
               {"type": "validate", "method": "validateNulls", "config": {
                   "notNullColumns": ["note"], "onFailure": "warn"}},
               {"type": "load", "method": "toPostgres", "config": {
                   "table": "amounts", "credentialPath": "secret/data/pg"}}]}
    result = run(tmp_path, vault, raw, registry)
    assert result.success, failure(result)
    good = sorted(i for i in range(1, 201) if (i * 37) % 1200 <= 1000)
    assert sorted(r[0] for r in pg.sql("SELECT id FROM amounts")) == good
    q = spark.read.format("delta").load(str(tmp_path / "quarantine/files_to_pg/s02_validateRanges"))
    assert sorted(r.id for r in q.collect()) == sorted(set(range(1, 201)) - set(good))
    assert {tuple(r._dq_rules) for r in q.collect()} == {("range(amount)",)}
    warned = [m for m in result.logs if "validation step3 warns" in m]
    assert warned and "not_null(note):" in warned[0]
    streams = streams_outputs(result)
    assert streams[0]["batches"] >= 1 and streams[0]["input_rows"] == 200
    # the sink is an asset, materialized as the query commits, then with the totals
    mats = [e.event_specific_data.materialization for e in result.all_events
            if e.event_type_value == "ASSET_MATERIALIZATION"
            and e.event_specific_data.materialization.asset_key == dg.AssetKey(["amounts"])]
    commits = [m for m in mats if "batch_id" in m.metadata]
    assert commits and sum(m.metadata["input_rows"].value for m in commits) == 200
    assert mats[-1].metadata["ended"].text == "finished"

    # new files, a second run: only they are loaded (the checkpoint resumes), once
    write_batch(src, "b.json", [{"id": i, "amount": 5, "note": "n"} for i in range(201, 251)])
    result = run(tmp_path, vault, raw, registry)
    assert result.success, failure(result)
    ids = [r[0] for r in pg.sql("SELECT id FROM amounts")]
    assert sorted(ids) == good + list(range(201, 251)) and len(ids) == len(set(ids))
    assert pg.sql("SELECT count(*) FROM _pd_stream_batches")[0][0] >= 2


def test_fail_action_stops_the_stream_with_the_rule(vault, tmp_path, registry):
    src = tmp_path / "in"
    write_batch(src, "a.json", [{"id": 1, "amount": 5}, {"id": 2, "amount": -1}])
    raw = {"name": "strict", "mode": "streaming",
           "streaming": {"trigger": "availableNow", "checkpointRoot": str(tmp_path / "cp")},
           "steps": [
               {"type": "extract", "method": "fromFile", "config": {
                   "path": str(src), "format": "json", "schema": "id BIGINT, amount INT"}},
               {"type": "validate", "method": "validateBusinessRules", "config": {
                   "rules": ["amount >= 0"]}},
               {"type": "load", "method": "toDeltaLake", "config": {
                   "path": str(tmp_path / "out"), "mode": "append"}}]}
    result = run(tmp_path, vault, raw, registry)
    assert not result.success
    msg = failure(result)
    assert "streaming query" in msg and "validateBusinessRules (step 2) failed" in msg
    assert "rule[0]" in msg


def test_dataset_validators_are_refused_before_anything_runs(vault, tmp_path, registry):
    """Refused when the file loads (the check `pipeline validate` runs too), not once Spark
    has started."""
    src = tmp_path / "in"
    write_batch(src, "a.json", [{"id": 1}])
    raw = {"name": "unique-stream", "mode": "streaming",
           "streaming": {"trigger": "availableNow", "checkpointRoot": str(tmp_path / "cp")},
           "steps": [
               {"type": "extract", "method": "fromFile", "config": {
                   "path": str(src), "format": "json", "schema": "id BIGINT"}},
               {"type": "validate", "method": "validateUnique", "config": {"columns": ["id"]}},
               {"type": "load", "method": "toDeltaLake", "config": {
                   "path": str(tmp_path / "out"), "mode": "append"}}]}
    with pytest.raises(ConfigError, match=r"step 2 \(validate.validateUnique\), method: "
                       "validateUnique checks the whole dataset, which a stream never has. "
                       "In a streaming pipeline only row rules run, per micro-batch"):
        run(tmp_path, vault, raw, registry)
    assert not (tmp_path / "out").exists() and not (tmp_path / "cp").exists()


def test_a_changed_stateful_query_does_not_resume_silently(vault, tmp_path, registry, spark):
    src = tmp_path / "in"
    write_batch(src, "a.json", [{"k": "a", "g": "x", "v": 1, "ts": "2025-01-01T10:00:00"}])

    def raw(group_by):
        return {"name": "agg-stream", "mode": "streaming",
                "streaming": {"trigger": "availableNow",
                              "checkpointRoot": str(tmp_path / "cp")},
                "steps": [
                    {"type": "extract", "method": "fromFile", "config": {
                        "path": str(src), "format": "json",
                        "schema": "k STRING, g STRING, v INT, ts TIMESTAMP"}},
                    {"type": "transform", "method": "aggregateData", "config": {
                        "groupBy": group_by, "aggregations": {"total": "sum(v)"},
                        "window": {"column": "ts", "duration": "1 minute"},
                        "watermark": {"column": "ts", "delay": "1 minute"}}},
                    {"type": "load", "method": "toDeltaLake", "config": {
                        "path": str(tmp_path / "out"), "mode": "append"}}]}
    first = run(tmp_path, vault, raw(["k"]), registry)
    assert first.success, failure(first)
    write_batch(src, "b.json", [{"k": "b", "g": "y", "v": 2, "ts": "2025-01-01T10:05:00"}])
    changed = run(tmp_path, vault, raw(["k", "g"]), registry)
    assert not changed.success
    msg = failure(changed)
    assert "cannot resume from its checkpoint" in msg and "never reset silently" in msg
    assert (tmp_path / "cp/agg_stream/s03_toDeltaLake/offsets").exists()


def test_timeout_ends_a_continuous_stream(vault, tmp_path, registry):
    src = tmp_path / "in"
    write_batch(src, "a.json", [{"id": 1}])
    raw = {"name": "timed", "mode": "streaming",
           "streaming": {"trigger": "1 second", "timeout": "6 seconds",
                         "checkpointRoot": str(tmp_path / "cp")},
           "steps": [
               {"type": "extract", "method": "fromFile", "config": {
                   "path": str(src), "format": "json", "schema": "id BIGINT"}},
               {"type": "load", "method": "toFile", "config": {
                   "path": str(tmp_path / "out"), "format": "parquet", "mode": "append"}}]}
    result = run(tmp_path, vault, raw, registry)
    assert result.success, failure(result)
    assert streams_outputs(result)[0]["ended"] == "timeout"


def test_delta_source_to_kafka_and_mysql_sinks_once_and_first_batch(kafka, topic, mysql, vault,
                                                                    tmp_path, registry, spark):
    """A Delta table as a stream source; toKafka (rows as JSON, keyed) with trigger once;
    toMySQL through foreachBatch; awaitTermination false ends after the first micro-batch."""
    src = str(tmp_path / "src")
    spark.createDataFrame([(i, f"n{i}") for i in range(1, 31)], "id long, name string") \
        .write.format("delta").save(src)
    out = topic()
    vault.put("secret", "kafka", {"bootstrap.servers": kafka})
    vault.put("secret", "mysql", mysql.secret())
    raw = {"name": "delta-fanout", "mode": "streaming",
           "streaming": {"awaitTermination": False, "checkpointRoot": str(tmp_path / "cp")},
           "steps": [
               {"type": "extract", "method": "fromDeltaLake", "config": {"path": src}},
               {"type": "load", "method": "toKafka", "config": {
                   "topic": out, "keyColumn": "id", "credentialPath": "secret/data/kafka",
                   "trigger": "once"}},
               {"type": "load", "method": "toMySQL", "config": {
                   "table": "names", "credentialPath": "secret/data/mysql"}}]}
    result = run(tmp_path, vault, raw, registry)
    assert result.success, failure(result)
    kafka_sink, mysql_sink = streams_outputs(result)
    # the MySQL query (default trigger) never ends by itself: the run ended it after its
    # first batch; the Kafka query (trigger once) ran exactly one batch
    assert kafka_sink["ended"] == mysql_sink["ended"] == "first batch"
    assert kafka_sink["batches"] == 1 and mysql_sink["batches"] >= 1
    assert sorted(r[0] for r in mysql.sql("SELECT id FROM names")) == list(range(1, 31))
    # the records as bytes, read by another client (not the product's reader): key, JSON value
    got = consume_records(kafka, out, 30)
    assert sorted((int(k), json.loads(v)) for k, v in got) == [
        (i, {"id": i, "name": f"n{i}"}) for i in range(1, 31)]


def test_avro_values_and_complete_output_mode(kafka, topic, vault, tmp_path, registry, spark):
    """Avro-encoded Kafka values decoded with avroSchema; a windowless running aggregate
    written with outputMode complete."""
    from pyspark.sql import functions as F
    from pyspark.sql.avro.functions import to_avro
    t = topic(partitions=1)
    schema = json.dumps({"type": "record", "name": "Sale", "fields": [
        {"name": "shop", "type": "string"}, {"name": "amount", "type": "long"}]})
    sales = spark.createDataFrame([("a", 1), ("b", 2), ("a", 3)], "shop string, amount long")
    sales.select(to_avro(F.struct("shop", "amount"), schema).alias("value")).write \
        .format("kafka").option("kafka.bootstrap.servers", kafka).option("topic", t).save()
    vault.put("secret", "kafka", {"bootstrap.servers": kafka})
    raw = {"name": "avro-totals", "mode": "streaming",
           "streaming": {"trigger": "availableNow", "checkpointRoot": str(tmp_path / "cp")},
           "steps": [
               {"type": "extract", "method": "fromKafka", "config": {
                   "topic": t, "credentialPath": "secret/data/kafka",
                   "startingOffsets": "earliest", "valueFormat": "avro",
                   "avroSchema": schema}},
               {"type": "transform", "method": "aggregateData", "config": {
                   "groupBy": ["shop"], "aggregations": {"amount": "sum"}}},
               {"type": "load", "method": "toDeltaLake", "config": {
                   "path": str(tmp_path / "totals"), "mode": "append",
                   "outputMode": "complete"}}]}
    result = run(tmp_path, vault, raw, registry)
    assert result.success, failure(result)
    got = spark.read.format("delta").load(str(tmp_path / "totals")).collect()
    assert sorted((r.shop, r.amount_sum) for r in got) == [("a", 4), ("b", 2)]


def test_the_default_checkpoint_location_is_stable_and_resumed(vault, tmp_path, registry, spark,
                                                               monkeypatch):
    """No checkpointLocation, no checkpointRoot, no PIPELINE_CHECKPOINT_ROOT: the checkpoint
    goes to ./checkpoints/<pipeline>/<step> of the directory the run starts in, and the next
    run resumes from it (only new files are read)."""
    monkeypatch.delenv("PIPELINE_CHECKPOINT_ROOT", raising=False)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    src, out = tmp_path / "in", tmp_path / "out"
    write_batch(src, "a.json", [{"id": i} for i in range(1, 11)])
    raw = {"name": "default-checkpoint", "mode": "streaming",
           "streaming": {"trigger": "availableNow"},
           "steps": [
               {"type": "extract", "method": "fromFile", "config": {
                   "path": str(src), "format": "json", "schema": "id BIGINT"}},
               {"type": "load", "method": "toDeltaLake", "config": {
                   "path": str(out), "mode": "append"}}]}
    result = run(tmp_path, vault, raw, registry)
    assert result.success, failure(result)
    sink = streams_outputs(result)[0]
    assert sink["input_rows"] == 10
    checkpoints = work / "checkpoints" / "default_checkpoint"
    [step_dir] = [p for p in checkpoints.iterdir() if p.is_dir()]
    assert (step_dir / "offsets" / "0").is_file() and (step_dir / "commits" / "0").is_file()
    load_events = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"
                   and "checkpoint" in e.event_specific_data.metadata]
    assert load_events[0].event_specific_data.metadata["checkpoint"].text == str(step_dir)

    write_batch(src, "b.json", [{"id": i} for i in range(11, 16)])
    result = run(tmp_path, vault, raw, registry)
    assert result.success, failure(result)
    assert streams_outputs(result)[0]["input_rows"] == 5  # only the new file
    ids = [r.id for r in spark.read.format("delta").load(str(out)).collect()]
    assert sorted(ids) == list(range(1, 16))  # each row once
