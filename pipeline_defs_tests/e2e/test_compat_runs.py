"""Original example files run unchanged but for their paths (the connector ones with real
servers come with their issues; these need only files)."""
from __future__ import annotations

import json

import dagster as dg

from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.definitions import definitions_for
from pipeline_defs_tests.conftest import COMPAT, op_of, rows, write_json


def rewrite_paths(name: str, dest, mapping: dict[str, str]):
    raw = json.loads((COMPAT / name).read_text())
    for s in raw["steps"]:
        if s["config"].get("path") in mapping:
            s["config"]["path"] = mapping[s["config"]["path"]]
    return write_json(dest / name, raw)


def test_avro_schema_evolution_example(spark, registry, tmp_path):
    legacy, current = tmp_path / "legacy", tmp_path / "current"
    spark.createDataFrame(
        [(1, "click", 0.0, 1700000000, 7, "old"), (2, "purchase", 99.5, 1700000100, 8, "old")],
        "id long, event_type string, amount double, timestamp long, user_id long, "
        "obsolete string").write.format("avro").save(str(legacy))
    f = rewrite_paths("avro-schema-evolution.json", tmp_path, {
        "/data/legacy/events-v1/": str(legacy), "/data/current/events-v2/": str(current)})
    p = load_pipeline(f, registry)
    result = definitions_for([p]).resolve_job_def("avro_schema_evolution_pipeline") \
        .execute_in_process(instance=dg.DagsterInstance.ephemeral())
    assert result.success
    out = spark.read.format("avro").load(str(current))
    assert out.columns == ["id", "event_type", "amount", "timestamp", "user_id", "new_field"]
    assert rows(out) == [(1, "click", 0.0, 1700000000, 7, None),
                         (2, "purchase", 99.5, 1700000100, 8, None)]
    evolve = result.output_for_node("avro_schema_evolution_pipeline_steps.s02_evolveAvroSchema")
    assert evolve.df.columns == out.columns
    meta = {op_of(e.step_key): e.event_specific_data.metadata for e in result.all_events
            if e.event_type_value == "STEP_OUTPUT"}["s02_evolveAvroSchema"]
    assert meta["added_columns"].data == ["new_field"]
    assert meta["dropped_columns"].data == ["obsolete"]


def test_schema_validation_failure_stops_the_load(spark, registry, tmp_path):
    legacy, current = tmp_path / "legacy", tmp_path / "current"
    spark.createDataFrame([(1, "click")], "id long, event_type string") \
        .write.format("avro").save(str(legacy))
    raw = json.loads((COMPAT / "avro-schema-evolution.json").read_text())
    raw["steps"].pop(1)  # no evolution: the schema check must fail
    raw["steps"][0]["config"]["path"] = str(legacy)
    raw["steps"][-1]["config"]["path"] = str(current)
    p = load_pipeline(write_json(tmp_path / "p.json", raw), registry)
    result = definitions_for([p]).resolve_job_def("avro_schema_evolution_pipeline") \
        .execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert op_of(failure.step_key) == "s02_validateSchema"
    assert "column 'amount' is missing" in failure.event_specific_data.user_failure_data \
        .description
    assert not current.exists()


def test_failure_metadata_masks_secrets_in_the_step_config(registry, tmp_path):
    raw = {"name": "secretive", "steps": [
        {"type": "extract", "method": "fromPostgres",
         "config": {"table": "t", "host": "127.0.0.1", "port": 1, "database": "d",
                    "username": "u", "password": "hunter2-very-secret"}},
        {"type": "load", "method": "toFile", "config": {"path": str(tmp_path / "o")}}]}
    p = load_pipeline(write_json(tmp_path / "p.json", raw), registry)
    result = definitions_for([p]).resolve_job_def("secretive").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    data = failure.event_specific_data.user_failure_data
    assert data.description.startswith("pipeline 'secretive', step 1 (extract.fromPostgres) "
                                       "failed:")
    assert data.metadata["config"].data["password"] == "***"
    for e in result.all_events:
        assert "hunter2-very-secret" not in str(e)
