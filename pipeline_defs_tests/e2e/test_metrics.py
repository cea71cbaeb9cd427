"""Run, step and micro-batch metrics through every exporter at once: the run's log (a JSON
line), a JSON file per run and a real Prometheus Pushgateway (the test's own). The
exported values are the run's own: its rows equal the summary's and the data's, its bytes
equal the sizes of the files Spark read and wrote; a failed run is pushed as such; an
unreachable gateway is a warning, never a failed run."""
from __future__ import annotations

import json
import urllib.request

import dagster as dg
import pytest

from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.dagster_layer.resources import MetricsResource
from pipeline_defs.dagster_layer.runs import step_rows
from pipeline_defs.definitions import default_resources, definitions_for
from pipeline_defs_tests.conftest import write_json
from pipeline_defs_tests.owned import RefusedPort


def _run(tmp_path, raw: dict, registry, metrics: MetricsResource):
    p = load_pipeline(write_json(tmp_path / f"{raw['name']}.json", raw), registry)
    defs = definitions_for([p], {**default_resources(), "metrics": metrics})
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def(p.name.replace("-", "_")).execute_in_process(
        instance=instance, raise_on_error=False)
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    return p, result, logs


def _pushed(gateway: str, pipeline: str) -> dict[tuple, float]:
    """The Pushgateway's samples of a pipeline's group: {(name, labels...): value}."""
    from prometheus_client.parser import text_string_to_metric_families
    text = urllib.request.urlopen(f"{gateway}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("pipeline") == pipeline and s.labels.get("job") == "pipeline_defs":
                extra = tuple(sorted((k, v) for k, v in s.labels.items()
                                     if k not in ("pipeline", "job", "instance")))
                out[(s.name, *extra)] = s.value
    return out


def _files_size(d) -> int:
    return sum(f.stat().st_size for f in d.rglob("part-*") if not f.name.endswith(".crc"))


def test_a_batch_run_exports_its_own_counts_and_bytes_everywhere(tmp_path, registry,
                                                                  pushgateway):
    src = tmp_path / "in.csv"
    src.write_text("id,amount\n" + "".join(f"{i},{i * 10}\n" for i in range(1, 101)))
    name = f"metrics-{tmp_path.name[-12:]}".lower().replace("_", "-")
    raw = {"name": name, "steps": [
        {"type": "extract", "method": "fromFile", "name": "orders",
         "config": {"path": str(src), "format": "csv", "schema": "id INT, amount INT"}},
        {"type": "transform", "method": "filterRows", "name": "big",
         "config": {"condition": "amount > 300"}},
        {"type": "load", "method": "toFile", "name": "big_out",
         "config": {"path": str(tmp_path / "out"), "format": "parquet"}}]}
    metrics = MetricsResource(log=True, json_dir=str(tmp_path / "metrics"),
                              pushgateway=pushgateway)
    p, result, logs = _run(tmp_path, raw, registry, metrics)
    assert result.success
    summary = {r.op: r for r in step_rows(result.all_events, p)}
    assert summary["big"].rows == 70 and summary["big_out"].rows == 70

    # the run's log: one JSON line
    (line,) = [m for m in logs if m.startswith("metrics {")]
    logged = json.loads(line.removeprefix("metrics "))
    # the JSON file: the same record
    (path,) = (tmp_path / "metrics" / name).glob("*.json")
    assert path.name == f"{result.run_id}.json"
    filed = json.loads(path.read_text())
    assert filed == logged
    steps = {s["step"]: s for s in filed["steps"]}
    assert filed["status"] == "SUCCESS" and filed["run_id"] == result.run_id
    assert [s["step"] for s in filed["steps"]] == ["orders", "big", "big_out"]
    assert {k: s["rows"] for k, s in steps.items()} == {
        k: r.rows for k, r in summary.items()}
    assert all(s["status"] == "ok" and s["duration_seconds"] > 0 for s in steps.values())
    # Spark's own byte counts: the load's job read the whole CSV and wrote the Parquet files
    assert steps["big_out"]["bytes_read"] == src.stat().st_size
    assert steps["big_out"]["bytes_written"] == _files_size(tmp_path / "out") > 0
    assert filed["bytes_written"] == steps["big_out"]["bytes_written"]
    assert filed["duration_seconds"] >= sum(s["duration_seconds"] for s in steps.values())

    # the Pushgateway: job pipeline_defs, grouping key pipeline=<name>
    got = _pushed(pushgateway, name)
    assert got[("pipeline_run_success",)] == 1
    assert got[("pipeline_run_duration_seconds",)] == pytest.approx(filed["duration_seconds"])
    assert got[("pipeline_run_last_timestamp_seconds",)] == pytest.approx(filed["end"])
    assert got[("pipeline_step_rows", ("step", "big"))] == 70
    assert got[("pipeline_step_rows", ("step", "big_out"))] == 70
    assert ("pipeline_step_rows", ("step", "orders")) not in got  # not counted, not invented
    assert got[("pipeline_step_duration_seconds", ("step", "big_out"))] == \
        pytest.approx(steps["big_out"]["duration_seconds"])
    assert got[("pipeline_step_bytes", ("direction", "read"), ("step", "big_out"))] == \
        src.stat().st_size
    assert got[("pipeline_step_bytes", ("direction", "write"), ("step", "big_out"))] == \
        _files_size(tmp_path / "out")

    # a failing run is pushed too, as a failure, in the same group
    raw["steps"][1]["config"]["condition"] = "amont > 300"
    _, failed, logs = _run(tmp_path, raw, registry, metrics)
    assert not failed.success
    got = _pushed(pushgateway, name)
    assert got[("pipeline_run_success",)] == 0
    record = json.loads((tmp_path / "metrics" / name / f"{failed.run_id}.json").read_text())
    assert record["status"] == "FAILURE"
    assert [s["status"] for s in record["steps"]] == ["ok", "FAILED", "not run"]


def test_an_unreachable_gateway_is_a_warning_and_the_run_succeeds(tmp_path, registry):
    (tmp_path / "in.csv").write_text("id\n1\n")
    raw = {"name": "unpushed", "steps": [
        {"type": "extract", "method": "fromFile",
         "config": {"path": str(tmp_path / "in.csv"), "format": "csv"}},
        {"type": "load", "method": "toFile", "config": {"path": str(tmp_path / "out")}}]}
    with RefusedPort() as port:  # held, never listening: connections are refused
        url = f"http://127.0.0.1:{port}"
        _, result, logs = _run(tmp_path, raw, registry, MetricsResource(pushgateway=url))
    assert result.success
    (warning,) = [m for m in logs if m.startswith("metrics:")]
    assert warning.startswith(f"metrics: the Pushgateway at {url} did not take the metrics "
                              "of pipeline 'unpushed' (")
    assert warning.endswith("the run is not affected.")


def test_a_streaming_run_exports_each_micro_batch(tmp_path, registry, pushgateway):
    src = tmp_path / "incoming"
    src.mkdir()
    for k in range(3):  # three files: availableNow reads them in three micro-batches
        (src / f"f{k}.json").write_text("\n".join(json.dumps({"id": k * 10 + i})
                                                  for i in range(k + 1)))
    name = f"stream-metrics-{tmp_path.name[-8:]}".lower().replace("_", "-")
    raw = {"name": name, "mode": "streaming",
           "streaming": {"trigger": "availableNow",
                         "checkpointRoot": str(tmp_path / "checkpoints")},
           "steps": [
               {"type": "extract", "method": "fromFile", "config": {
                   "path": str(src), "format": "json", "schema": "id BIGINT",
                   "options": {"maxFilesPerTrigger": "1"}}},
               {"type": "load", "method": "toDeltaLake", "name": "sink", "config": {
                   "path": str(tmp_path / "out"), "mode": "append"}}]}
    metrics = MetricsResource(log=True, json_dir=str(tmp_path / "metrics"),
                              pushgateway=pushgateway)
    _, result, logs = _run(tmp_path, raw, registry, metrics)
    assert result.success
    records = [json.loads(m.removeprefix("metrics ")) for m in logs
               if m.startswith("metrics {")]
    batches = [r for r in records if "batch_id" in r]  # the last one is the run's
    assert "steps" in records[-1] and len(records) == len(batches) + 1
    assert [b["rows"] for b in batches] == [1, 2, 3]
    assert all(b["batch_duration_seconds"] > 0 and b["processed_rows_per_second"] > 0
               for b in batches)
    (path,) = (tmp_path / "metrics" / name).glob("*.json")
    assert json.loads(path.read_text())["micro_batches"] == batches
    got = _pushed(pushgateway, name)
    query = batches[-1]["query"]
    assert got[("pipeline_stream_batch_rows", ("query", query))] == 3
    assert got[("pipeline_stream_batch_duration_seconds", ("query", query))] == \
        pytest.approx(batches[-1]["batch_duration_seconds"])
    assert got[("pipeline_run_success",)] == 1  # the run's gauges beside the stream's
