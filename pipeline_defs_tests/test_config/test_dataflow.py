"""Streaming files that cannot run are refused by `validate`, before Spark starts, with the
usual file / step / field / fix message (issue 9.3)."""
from __future__ import annotations

import pytest

from pipeline_defs.common.errors import ConfigError
from pipeline_defs.config.loader import load_pipeline
from pipeline_defs_tests.conftest import COMPAT, write_json

KAFKA = {"type": "extract", "method": "fromKafka",
         "config": {"topic": "events", "bootstrapServers": "127.0.0.1:9092",
                    "schema": "id BIGINT, amount DOUBLE"}}
DELTA_SINK = {"type": "load", "method": "toDeltaLake",
              "config": {"path": "/out/events", "mode": "append"}}


def streaming(*steps, **top):
    return {"name": "s", "mode": "streaming", **top, "steps": list(steps)}


def problems(tmp_path, registry, data) -> str:
    f = write_json(tmp_path / "s.json", data)
    with pytest.raises(ConfigError) as e:
        load_pipeline(f, registry)
    return str(e.value).replace(str(f), "s.json")


def test_the_original_streaming_example_is_accepted(registry):
    p = load_pipeline(COMPAT / "streaming-kafka.json", registry)
    assert p.config.mode == "streaming"


def test_dataset_level_validator(tmp_path, registry):
    msg = problems(tmp_path, registry, streaming(
        KAFKA, {"type": "validate", "method": "validateUnique", "config": {"columns": ["id"]}},
        DELTA_SINK))
    assert ("s.json, step 2 (validate.validateUnique), method: validateUnique checks the whole "
            "dataset, which a stream never has. In a streaming pipeline only row rules run, "
            "per micro-batch: validateAcceptedValues, validateBusinessRules, validateNulls, "
            "validateRanges, validateRegex, validateSchema.") in msg


def test_sink_without_a_streaming_writer(tmp_path, registry):
    msg = problems(tmp_path, registry, streaming(KAFKA, {
        "type": "load", "method": "toS3",
        "config": {"bucket": "b", "path": "events/", "mode": "append"}}))
    assert ("s.json, step 2 (load.toS3), method: toS3 has no streaming writer. Streaming "
            "sinks: applyChanges, toAvro, toDeltaLake, toFile, toKafka, toMySQL, "
            "toPostgres.") in msg


def test_timeout_and_triggers_that_are_not_durations(tmp_path, registry):
    msg = problems(tmp_path, registry, streaming(
        KAFKA, {**DELTA_SINK, "config": {**DELTA_SINK["config"], "trigger": "fast"}},
        streaming={"timeout": "ten minutes", "trigger": "every 5 seconds"}))
    assert ("s.json, streaming.timeout: 'ten minutes' is not a duration; write e.g. \"30 "
            "seconds\" or \"10 minutes\".") in msg
    assert "s.json, streaming.trigger: 'every 5 seconds' is not a trigger; write a " \
        "processing interval such as \"5 seconds\", or availableNow, or once." in msg
    assert "s.json, step 2 (load.toDeltaLake), config.trigger: 'fast' is not a trigger" in msg


@pytest.mark.parametrize("step,field,text", [
    ({"type": "load", "method": "toDeltaLake",
      "config": {"path": "/o", "merge": {"keyColumns": ["id"]}}},
     "config.merge", "merge (upsert) into Delta from a stream is not supported."),
    ({"type": "load", "method": "toPostgres", "config": {"table": "t", "mode": "overwrite",
                                                         "credentialPath": "secret/pg"}},
     "config.mode", "mode 'overwrite' has no meaning for a stream"),
])
def test_sink_settings_a_stream_cannot_have(tmp_path, registry, step, field, text):
    msg = problems(tmp_path, registry, streaming(KAFKA, step))
    assert f"s.json, step 2 ({step['type']}.{step['method']}), {field}: {text}" in msg


def test_source_settings_a_stream_cannot_have(tmp_path, registry):
    msg = problems(tmp_path, registry, streaming(
        {"type": "extract", "method": "fromDeltaLake",
         "config": {"path": "/in", "timestamp": "2025-01-01"}},
        {**KAFKA, "config": {**KAFKA["config"], "endingOffsets": "latest"}}, DELTA_SINK))
    assert ("s.json, step 1 (extract.fromDeltaLake), config.timestamp: a stream starts at a "
            "version, not a timestamp.") in msg
    assert "s.json, step 2 (extract.fromKafka), config.endingOffsets: a stream has no end " \
        "offsets." in msg


def test_a_load_that_no_stream_reaches(tmp_path, registry):
    msg = problems(tmp_path, registry, streaming(
        {"type": "extract", "method": "fromPostgres",
         "config": {"table": "users", "credentialPath": "secret/pg"}}, DELTA_SINK))
    assert ("s.json, step 2 (load.toDeltaLake): no stream reaches this load: none of the "
            "extracts before it reads a stream. Read a stream with fromDeltaLake, fromFile, "
            "fromKafka, or set \"mode\": \"batch\".") in msg


def test_a_static_table_joined_to_a_stream_is_fine(tmp_path, registry):
    f = write_json(tmp_path / "s.json", streaming(
        {**KAFKA, "config": {**KAFKA["config"], "registerAs": "events"}},
        {"type": "extract", "method": "fromDeltaLake",
         "config": {"path": "/dim", "registerAs": "users"}},
        {"type": "transform", "method": "joinDataFrames",
         "config": {"inputDataFrames": ["events", "users"], "joinColumn": "id"}},
        DELTA_SINK))
    assert len(load_pipeline(f, registry).steps) == 4


def test_batch_files_may_use_all_of_it(tmp_path, registry):
    f = write_json(tmp_path / "b.json", {"name": "b", "steps": [
        {**KAFKA, "config": {**KAFKA["config"], "endingOffsets": "latest"}},
        {"type": "validate", "method": "validateUnique", "config": {"columns": ["id"]}},
        {"type": "load", "method": "toS3", "config": {"bucket": "b", "path": "e/"}}]})
    assert len(load_pipeline(f, registry).steps) == 3


def test_deduplicate_by_order_needs_the_whole_dataset(tmp_path, registry):
    msg = problems(tmp_path, registry, streaming(
        KAFKA, {"type": "transform", "method": "deduplicate",
                "config": {"columns": ["id"], "orderBy": ["amount DESC"]}}, DELTA_SINK))
    assert "s.json, step 2 (transform.deduplicate), config.orderBy: picking a row by orderBy " \
        "needs the whole dataset, which a stream never has." in msg
