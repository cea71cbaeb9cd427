"""On the real daemon: a `pool` limited to one slot keeps two runs' pooled steps from
overlapping; with `run_retries` in dagster.yaml a failed run is retried from the start and
succeeds."""
from __future__ import annotations

import dagster as dg

from pipeline_defs_tests.conftest import write_json
from pipeline_defs_tests.e2e.test_orchestration import _runs, _wait
from pipeline_defs_tests.e2e.test_webserver import launch, serve

RUN_RETRIES = "run_retries:\n  enabled: true\n  max_retries: 1\n"


def _spans(home, run_id: str, op: str) -> tuple[float, float]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        times = {r.dagster_event.event_type_value: r.timestamp
                 for r in instance.all_logs(run_id)
                 if r.dagster_event and (r.step_key or "").endswith(f".{op}")
                 and r.dagster_event.event_type_value in ("STEP_START", "STEP_SUCCESS")}
    return times["STEP_START"], times["STEP_SUCCESS"]


def test_a_pool_of_one_and_a_retried_run(tmp_path):
    configs, out = tmp_path / "configs", tmp_path / "out"
    configs.mkdir()
    (tmp_path / "one.csv").write_text("id\n1\n")
    write_json(configs / "heavy.json", {"name": "heavy", "steps": [
        {"type": "extract", "method": "fromFile",
         "config": {"path": str(tmp_path / "one.csv"), "format": "csv", "registerAs": "one"}},
        {"type": "transform", "method": "sql", "name": "crunch",
         "config": {"query": "SELECT r.id, sha2(cast(r.id AS string), 256) AS h "
                             "FROM range(3000000) r CROSS JOIN one"}},
        {"type": "load", "method": "toFile", "name": "heavy_out", "pool": "warehouse",
         "config": {"path": str(out / "heavy"), "format": "parquet", "mode": "append"}}]})
    write_json(configs / "late.json", {"name": "late", "steps": [
        {"type": "extract", "method": "fromFile",
         "config": {"path": str(tmp_path / "late.csv"), "format": "csv"}},
        {"type": "load", "method": "toFile",
         "config": {"path": str(out / "late"), "format": "parquet", "mode": "overwrite"}}]})
    home, log = tmp_path / "dagster_home", tmp_path / "daemon.log"
    with serve(tmp_path, configs, {}, RUN_RETRIES) as (port, _):
        _scenario(port, tmp_path, home, log)


def _scenario(port: int, tmp_path, home, log) -> None:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.event_log_storage.set_concurrency_slots("warehouse", 1)
    first, second = launch(port, "heavy"), launch(port, "heavy")
    done = _wait(lambda: [r for r in _runs(home, "heavy") if r.is_finished]
                 if len([r for r in _runs(home, "heavy") if r.is_finished]) == 2
                 else None, 400, log)
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in done), log.read_text()[-3000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = [instance.get_run_record_by_id(i) for i in (first, second)]
    # the runs ran at the same time...
    assert runs[0].start_time < runs[1].end_time and runs[1].start_time < runs[0].end_time
    # ...but their pooled loads, one slot, one after the other
    a, b = sorted([_spans(home, first, "heavy_out"), _spans(home, second, "heavy_out")])
    assert a[1] <= b[0], (a, b)

    # the file `late` reads appears only after its first run failed
    failed_run = launch(port, "late")
    _wait(lambda: [r for r in _runs(home, "late") if r.run_id == failed_run
                   and r.status == dg.DagsterRunStatus.FAILURE], 300, log)
    (tmp_path / "late.csv").write_text("id\n7\n")
    retried = _wait(lambda: [r for r in _runs(home, "late")
                             if r.tags.get("dagster/parent_run_id") == failed_run
                             and r.is_finished], 300, log)
    assert retried[0].status == dg.DagsterRunStatus.SUCCESS
    assert retried[0].tags["dagster/retry_number"] == "1"
