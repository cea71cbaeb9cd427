"""Original Kafka files without credentialPath: the broker list in the literal key
`bootstrap.servers` and other client properties as literal keys (issue 9.4), through Dagster
against the real KRaft broker: a batch toKafka, then the original streaming example in that
style, streamed into Delta."""
from __future__ import annotations

import json

import pytest

from pipeline_defs.common.errors import ConfigError
from pipeline_defs.config.loader import load_pipeline
from pipeline_defs_tests.conftest import COMPAT, consume_records, run_job, write_json

EVENTS = [{"user_id": i, "event_type": ("view", "purchase")[i % 2], "amount": (i * 37) % 900,
           "timestamp": 1735689600 + i} for i in range(1, 121)]


def test_original_kafka_files_with_literal_client_properties(kafka, topic, tmp_path, registry,
                                                             spark):
    src = tmp_path / "events.json"
    src.write_text("\n".join(json.dumps(e) for e in EVENTS))
    events = topic()
    produce = write_json(tmp_path / "produce.json", {"name": "produce-events", "steps": [
        {"type": "extract", "method": "fromFile", "config": {
            "path": str(src), "format": "json",
            "schema": "user_id BIGINT, event_type STRING, amount INT, timestamp BIGINT"}},
        {"type": "load", "method": "toKafka", "config": {
            "topic": events, "bootstrap.servers": kafka, "acks": "all", "linger.ms": 5,
            "client.id": "pipeline-defs-compat", "keyColumn": "user_id"}}]})
    run_job(load_pipeline(produce, registry))
    raw = [v for _, v in consume_records(kafka, events, len(EVENTS))]
    assert sorted(json.loads(v)["user_id"] for v in raw) == [e["user_id"] for e in EVENTS]

    # the original streaming example, its Kafka connection written the original's way
    example = json.loads((COMPAT / "streaming-kafka.json").read_text())
    extract, _, _, load = example["steps"]
    extract["config"] = {"topic": events, "bootstrap.servers": kafka,
                         "startingOffsets": "earliest", "client.id": "pipeline-defs-compat",
                         "schema": "user_id BIGINT, event_type STRING, amount INT, "
                                   "timestamp BIGINT"}
    out = tmp_path / "delta" / "high_value_purchases"
    load["config"] = {**load["config"], "path": str(out), "trigger": "availableNow",
                      "checkpointLocation": str(tmp_path / "checkpoints" / "purchases")}
    del load["config"]["credentialPath"]
    p = load_pipeline(write_json(tmp_path / "streaming-kafka.json", example), registry)
    assert p.steps[0].config.bootstrap_servers == kafka
    assert p.steps[0].config.properties == {"client.id": "pipeline-defs-compat"}
    run_job(p)
    got = sorted((r.user_id, r.high_value) for r in spark.read.format("delta").load(str(out))
                 .collect())
    assert got == sorted((e["user_id"], e["amount"] >= 500) for e in EVENTS
                         if e["event_type"] == "purchase" and e["amount"] > 100)


@pytest.mark.parametrize("key,value,text", [
    ("bootstrap.server", "h:1", "config.bootstrap.server: 'bootstrap.server' is no Kafka client "
                                "property. Did you mean 'bootstrap.servers'?"),
    ("auto.offset.reset", "earliest", "config.auto.offset.reset: Spark sets "
                                      "'auto.offset.reset' itself. Use \"startingOffsets\""),
    ("bootstrapServer", "h:1", "config.bootstrapServer: unknown key 'bootstrapServer'. Did you "
                               "mean 'bootstrapServers'?"),
])
def test_typos_in_kafka_keys_still_get_did_you_mean(tmp_path, registry, key, value, text):
    f = write_json(tmp_path / "k.json", {"name": "k", "steps": [
        {"type": "extract", "method": "fromKafka", "config": {"topic": "t", key: value}},
        {"type": "load", "method": "toFile", "config": {"path": "/o"}}]})
    with pytest.raises(ConfigError, match=text.replace("(", r"\(").replace(")", r"\)")):
        load_pipeline(f, registry)
