"""On the real daemon: a `pool` of two slots lets at most two of three concurrent runs' pooled
steps run at once, and two do; with `run_retries` in dagster.yaml a failed run is retried
from the start (ALL_STEPS: the load before the failing step runs again) and succeeds."""
from __future__ import annotations

import dagster as dg
import pyarrow.parquet as pq

from pipeline_defs_tests.conftest import REPO, write_json
from pipeline_defs_tests.e2e.test_orchestration import _runs, _wait
from pipeline_defs_tests.e2e.test_webserver import launch, serve

# three pooled runs, and a run that fails and its retry beside them, at once (the instance/
# file allows two)
INSTANCE = (REPO / "instance" / "dagster.yaml").read_text().replace(
    "max_concurrent_runs: 2", "max_concurrent_runs: 5") + \
    "run_retries:\n  enabled: true\n  max_retries: 1\n"
SLEEP_MS = 20000  # how long each pooled load holds its slot (a JVM sleep: no CPU)


def _spans(home, run_id: str, op: str) -> tuple[float, float]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        times = {r.dagster_event.event_type_value: r.timestamp
                 for r in instance.all_logs(run_id)
                 if r.dagster_event and (r.step_key or "").endswith(f".{op}")
                 and r.dagster_event.event_type_value in ("STEP_START", "STEP_SUCCESS")}
    return times["STEP_START"], times["STEP_SUCCESS"]


def _most_at_once(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans],
                   key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    most = now = 0
    for _, d in edges:
        now += d
        most = max(most, now)
    return most


def test_a_pool_of_two_and_a_retried_run(tmp_path, spark):
    configs, out = tmp_path / "configs", tmp_path / "out"
    configs.mkdir()
    # the table the three runs append to exists first (as Delta asks of concurrent writers)
    spark.createDataFrame([], "id INT, slept STRING").write.format("delta").save(
        str(out / "pooled"))
    (tmp_path / "one.csv").write_text("id\n1\n")
    write_json(configs / "pooled.json", {"name": "pooled", "params": {"n": "0"}, "steps": [
        {"type": "extract", "method": "fromFile",
         "config": {"path": str(tmp_path / "one.csv"), "format": "csv"}},
        {"type": "transform", "method": "enrichData", "config": {"columns": {
            "slept": f"reflect('java.lang.Thread', 'sleep', {SLEEP_MS}L)"}}},
        # Delta: concurrent blind appends commit side by side (plain files would share
        # Spark's _temporary directory)
        {"type": "load", "method": "toDeltaLake", "name": "pooled_out", "pool": "warehouse",
         "config": {"path": str(out / "pooled"), "mode": "append"}}]})
    # fails the first time (its own first load wrote 1 row, it wants 2); a retry from the
    # start loads again (2 rows) and passes; a retry from the failure would fail again
    write_json(configs / "late.json", {"name": "late", "steps": [
        {"type": "extract", "method": "fromFile",
         "config": {"path": str(tmp_path / "one.csv"), "format": "csv"}},
        {"type": "load", "method": "toFile", "name": "landed",
         "config": {"path": str(out / "late"), "format": "parquet", "mode": "append"}},
        {"type": "extract", "method": "fromFile", "name": "landed_back",
         "config": {"path": str(out / "late"), "format": "parquet"}},
        {"type": "validate", "method": "validateRowCount", "name": "two_loads",
         "config": {"min": 2}},
        {"type": "load", "method": "toFile", "name": "late_ok",
         "config": {"path": str(out / "late_ok"), "format": "parquet", "mode": "overwrite"}}]})
    home, log = tmp_path / "dagster_home", tmp_path / "daemon.log"
    with serve(tmp_path, configs, {}, instance_text=INSTANCE) as (port, _):
        _scenario(port, tmp_path, home, log, spark)


def _scenario(port: int, tmp_path, home, log, spark) -> None:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.event_log_storage.set_concurrency_slots("warehouse", 2)
    ids = [launch(port, "pooled") for _ in range(3)]
    failed_run = launch(port, "late")  # (its pipeline uses no pool: it runs beside them)
    done = _wait(lambda: (lambda rs: rs if len(rs) == 3 else None)(
        [r for r in _runs(home, "pooled") if r.is_finished]), 600, log)
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in done), \
        [(r.run_id, r.status) for r in done]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = [instance.get_run_record_by_id(i) for i in ids]
    # their pooled loads: never more than the pool's two slots at once, and two did...
    spans = [_spans(home, i, "pooled_out") for i in ids]
    assert _most_at_once(spans) == 2, spans
    # ...and the one that started last waited for a slot: the pool held it back
    last = max(zip(spans, ids, strict=True))[1]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        said = [r.user_message or r.dagster_event.message for r in instance.all_logs(last)
                if r.dagster_event and (r.step_key or "").endswith(".pooled_out")]
    assert any(m and m.startswith("Step blocked by limit for pool warehouse") for m in said), \
        (runs, said)
    assert all(b - a >= SLEEP_MS / 1000 for a, b in spans), spans
    assert spark.read.format("delta").load(str(tmp_path / "out" / "pooled")).count() == 3

    retried = _wait(lambda: [r for r in _runs(home, "late")
                             if r.tags.get("dagster/parent_run_id") == failed_run
                             and r.is_finished], 300, log)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(failed_run).status == dg.DagsterRunStatus.FAILURE
        succeeded = {r.step_key.rsplit(".", 1)[-1] for r in instance.all_logs(retried[0].run_id)
                     if r.dagster_event and r.dagster_event.event_type_value == "STEP_SUCCESS"}
    assert retried[0].status == dg.DagsterRunStatus.SUCCESS, log.read_text()[-3000:]
    assert retried[0].tags["dagster/retry_number"] == "1"
    # from the start: the load before the failing step ran again in the retry
    assert {"landed", "landed_back", "two_loads", "late_ok"} <= succeeded, succeeded
    assert pq.read_table(tmp_path / "out" / "late").num_rows == 2
    assert pq.read_table(tmp_path / "out" / "late_ok").num_rows == 2
