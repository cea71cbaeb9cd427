"""Orchestration from the pipeline files, against the real dagster-daemon and webserver on
loopback: a schedule fires; `dependencies` start the downstream pipeline after its upstream
succeeded, whether the upstream ran from `pipeline run` (in process, no code-location
origin) or from the UI's API, never after a failed upstream, and not for an upstream run that
ended before the sensor existed (unless `catchUp`); a `timeout` gives up a wait
with its reason on the sensor's tick; `waitForCompletion: false` starts it while a long
upstream is still running; lineage-driven automation; a backfill of three
partitions through the API runs each once with its own ${DATE}, and a partitioned pipeline
depending on it runs the same three partitions; a partitioned pipeline's newFiles run is for
its latest complete partition."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from pipeline_defs_tests.conftest import REPO, write_json
from pipeline_defs_tests.e2e.test_webserver import gql, launch, run_status, serve

PIPELINE = str(Path(sys.executable).parent / "pipeline")


def _pipeline(configs: Path, name: str, src: str, out: Path, **top) -> Path:
    return write_json(configs / f"{name}.json", {
        "name": name, "params": {"src": src}, **top, "steps": [
            {"type": "extract", "method": "fromFile", "name": f"{name}_in",
             "config": {"path": "${src}", "format": "csv", "schema": "id INT, v INT"}},
            {"type": "load", "method": "toFile", "name": f"{name}_out",
             "config": {"path": str(out / name), "format": "parquet", "mode": "overwrite"}}]})


def _runs(home: Path, job: str) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return list(reversed(instance.get_runs(dg.RunsFilter(job_name=job))))


def _wait(what, timeout: float, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if got:
            return got
        time.sleep(1)
    raise AssertionError(f"timed out; daemon log:\n{log.read_text()[-4000:]}")


def _finished(home: Path, job: str, n: int):
    runs = _runs(home, job)
    done = [r for r in runs if r.status in (dg.DagsterRunStatus.SUCCESS,
                                            dg.DagsterRunStatus.FAILURE)]
    return done if len(done) >= n else None


def _ticks(home: Path, sensor: str) -> list:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        for state in instance.all_instigator_state():
            if state.instigator_name == sensor:
                return instance.get_ticks(state.instigator_origin_id, state.selector_id)
    return []


def wait_ticks(home: Path, sensor: str, n: int, log: Path, since: float | None = None) -> None:
    """Until the daemon has evaluated `sensor` n more times (ticks that began after `since`,
    by default now, and ended): what a sensor would start, it has started by then (one such
    tick is enough for that; tests ask for two)."""
    since = time.time() if since is None else since

    def done():  # ticks whose evaluation ended (not STARTED)
        return len([t for t in _ticks(home, sensor) if t.timestamp >= since and
                    t.status.value in ("SUCCESS", "SKIPPED", "FAILURE")]) >= n
    _wait(done, 240, log)


def schedule(port: int, name: str, action: str) -> None:
    """Starts or stops a schedule, as its toggle in the UI does."""
    repo = gql(port, """{ repositoriesOrError { ... on RepositoryConnection { nodes {
        name location { name } } } } }""")["repositoriesOrError"]["nodes"][0]
    selector = {"repositoryLocationName": repo["location"]["name"],
                "repositoryName": repo["name"], "scheduleName": name}
    if action == "start":
        got = gql(port, """mutation($s: ScheduleSelector!) { startSchedule(scheduleSelector:
            $s) { __typename ... on PythonError { message } } }""", {"s": selector})
        assert got["startSchedule"]["__typename"] == "ScheduleStateResult", got
        return
    state = gql(port, """query($s: ScheduleSelector!) { scheduleOrError(scheduleSelector: $s)
        { ... on Schedule { scheduleState { id } } } }""", {"s": selector})
    got = gql(port, """mutation($id: String!) { stopRunningSchedule(id: $id) { __typename
        ... on PythonError { message } } }""",
              {"id": state["scheduleOrError"]["scheduleState"]["id"]})
    assert got["stopRunningSchedule"]["__typename"] == "ScheduleStateResult", got


def test_schedule_and_dependencies_on_the_real_daemon(tmp_path):
    data, out, configs = tmp_path / "data", tmp_path / "out", tmp_path / "configs"
    data.mkdir()
    configs.mkdir()
    (data / "in.csv").write_text("id,v\n1,10\n2,20\n3,30\n")
    good = str(data / "in.csv")
    _pipeline(configs, "up", good, out)
    _pipeline(configs, "never", good, out)
    _pipeline(configs, "down", good, out, dependencies=[{"pipeline": "up"}])
    _pipeline(configs, "catching", good, out, dependencies=[{"pipeline": "up",
                                                             "catchUp": True}])
    # a long upstream (its one row sleeps 15 s in Spark), and a pipeline started by its start
    write_json(configs / "slow.json", {"name": "slow", "steps": [
        {"type": "extract", "method": "fromFile",
         "config": {"path": good, "format": "csv", "schema": "id INT, v INT"}},
        {"type": "transform", "method": "filterRows", "config": {"condition": "id = 1"}},
        {"type": "transform", "method": "enrichData", "config": {"columns": {
            "slept": "reflect('java.lang.Thread', 'sleep', 15000L)"}}},
        {"type": "load", "method": "toFile", "config": {
            "path": str(out / "slow"), "format": "parquet", "mode": "overwrite"}}]})
    _pipeline(configs, "early", good, out, dependencies=[{"pipeline": "slow",
                                                          "waitForCompletion": False}])
    _pipeline(configs, "both", good, out, dependencies=[
        {"pipeline": "up"}, {"pipeline": "never", "timeout": 2000}])
    # every minute, but stopped: the test starts it when it looks at it, then stops it
    _pipeline(configs, "ticker", good, out, schedule={"cron": "* * * * *", "timezone": "UTC",
                                                      "enabled": False})
    # reads what `up` writes; runs whenever `up` updates it (Declarative Automation)
    write_json(configs / "follower.json", {
        "name": "follower", "automation": "eager", "steps": [
            {"type": "extract", "method": "fromFile", "config": {"path": str(out / "up")}},
            {"type": "load", "method": "toFile", "name": "follower_out",
             "config": {"path": str(out / "follower"), "format": "parquet",
                        "mode": "overwrite"}}]})
    # on a cron, once what it reads was updated after the latest tick (Dagster's on_cron);
    # its upstream `cronsrc` runs only when the test says
    _pipeline(configs, "cronsrc", good, out)
    write_json(configs / "hourly.json", {
        "name": "hourly", "automation": {"onCron": "* * * * *", "timezone": "UTC"}, "steps": [
            {"type": "extract", "method": "fromFile", "config": {"path": str(out / "cronsrc")}},
            {"type": "load", "method": "toFile", "name": "hourly_out",
             "config": {"path": str(out / "hourly"), "format": "parquet",
                        "mode": "overwrite"}}]})
    # one partition per day; each run writes that day's rows to a directory named by it
    (data / "days.csv").write_text("id,day\n1,2024-01-01\n2,2024-01-02\n3,2024-01-02\n"
                                   "4,2024-01-03\n5,2024-01-04\n")
    write_json(configs / "parted.json", {
        "name": "parted", "partitions": {"type": "daily", "start": "2024-01-01",
                                         "end": "2024-01-04"},
        "steps": [
            {"type": "extract", "method": "fromFile",
             "config": {"path": str(data / "days.csv"), "format": "csv",
                        "schema": "id INT, day DATE"}},
            {"type": "transform", "method": "filterRows", "config": {"condition":
                                                                    "day = '${DATE}'"}},
            {"type": "load", "method": "toFile", "config": {
                "path": str(out / "parted" / "${DATE:yyyyMMdd}"), "format": "csv",
                "mode": "overwrite"}}]})
    # same partitions, after `parted`: each partition `parted` finished runs here once
    write_json(configs / "parted_after.json", {
        "name": "parted_after", "dependencies": [{"pipeline": "parted"}],
        "partitions": {"type": "daily", "start": "2024-01-01", "end": "2024-01-04"},
        "steps": [
            {"type": "extract", "method": "fromFile", "config": {
                "path": str(out / "parted" / "${DATE:yyyyMMdd}"), "format": "csv",
                "options": {"header": "true"}, "schema": "id INT, day DATE"}},
            {"type": "load", "method": "toFile", "config": {
                "path": str(out / "parted_after" / "${DATE}"), "format": "parquet",
                "mode": "overwrite"}}]})
    (data / "drop").mkdir()
    write_json(configs / "parted_files.json", {
        "name": "parted_files", "sensors": [{"type": "newFiles", "path": str(data / "drop"),
                                             "minimumIntervalSeconds": 1}],
        "partitions": {"type": "daily", "start": "2024-01-01", "end": "2024-01-04"},
        "steps": [
            {"type": "extract", "method": "fromFile", "config": {
                "path": "${trigger.file}", "format": "csv", "schema": "id INT"}},
            {"type": "transform", "method": "enrichData",
             "config": {"columns": {"day": "'${DATE}'"}}},
            {"type": "load", "method": "toFile", "config": {
                "path": str(out / "parted_files"), "format": "parquet", "mode": "append"}}]})
    # 0. `up` ran before any sensor existed (no daemon yet)
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "SPARK_MASTER": "local[1]",
           "PIPELINE_CONFIG_DIR": str(configs)}
    r = subprocess.run([PIPELINE, "run", str(configs / "up.json")], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    with serve(tmp_path, configs, {"PIPELINE_SENSOR_INTERVAL": "1"},
              "auto_materialize:\n  minimum_interval_seconds: 5\n") as (port, _):
        _scenario(port, tmp_path, configs, data, out, env)


def _scenario(port: int, tmp_path: Path, configs: Path, data: Path, out: Path,
              env: dict) -> None:
    home, log = tmp_path / "dagster_home", tmp_path / "daemon.log"
    (up0,) = _runs(home, "up")

    # 0. that run counts for a dependency with catchUp only (Dagster's rule for run-status
    #    sensors: only runs that end after the sensor's first tick)
    (caught,) = _wait(lambda: _finished(home, "catching", 1), 240, log)
    assert caught.status == dg.DagsterRunStatus.SUCCESS
    assert up0.run_id in caught.tags["pipeline/triggered_by"]
    wait_ticks(home, "down_after_upstreams", 2, log)
    assert not _runs(home, "down")
    first = min(_ticks(home, "down_after_upstreams"), key=lambda t: t.timestamp)
    assert first.skip_reason.startswith("Initiated: only upstream runs that end after this "
                                        "tick count"), first.skip_reason

    # 1. upstream from the command line (in process: no code-location origin)
    r = subprocess.run([PIPELINE, "run", str(configs / "up.json")], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    up1 = _runs(home, "up")[-1]
    (down1,) = _wait(lambda: _finished(home, "down", 1), 240, log)
    assert down1.status == dg.DagsterRunStatus.SUCCESS
    assert up1.run_id in down1.tags["pipeline/triggered_by"]
    assert pq.read_table(out / "down").num_rows == 3
    again = _wait(lambda: _finished(home, "catching", 2), 240, log)[1]
    assert up1.run_id in again.tags["pipeline/triggered_by"]

    # waitForCompletion false: `early` is requested while `slow` (15 s) is still running
    slow = launch(port, "slow")
    (early1,) = _wait(lambda: _finished(home, "early", 1), 240, log)
    assert slow in early1.tags["pipeline/triggered_by"]
    _wait(lambda: run_status(port, slow) in ("SUCCESS", "FAILURE"), 240, log)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        up_run = instance.get_run_record_by_id(slow)
        (queued,) = instance.all_logs(early1.run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED)
    assert up_run.dagster_run.status == dg.DagsterRunStatus.SUCCESS
    assert up_run.start_time < queued.timestamp < up_run.end_time, (
        up_run.start_time, queued.timestamp, up_run.end_time)

    # 2. a failed upstream run starts nothing
    r = subprocess.run([PIPELINE, "run", str(configs / "up.json"), "--param",
                        f"src={data / 'missing.csv'}"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    failed = _runs(home, "up")[-1]
    assert failed.status == dg.DagsterRunStatus.FAILURE

    # 3. upstream launched from the UI's API (run by the daemon's run launcher)
    up3 = launch(port, "up")
    _wait(lambda: run_status(port, up3) in ("SUCCESS", "FAILURE"), 240, log)
    assert run_status(port, up3) == "SUCCESS"
    _, down2 = _wait(lambda: _finished(home, "down", 2), 240, log)
    assert up3 in down2.tags["pipeline/triggered_by"]
    wait_ticks(home, "down_after_upstreams", 2, log)  # still one run per successful upstream
    downs = _runs(home, "down")
    assert len(downs) == 2 and not any(failed.run_id in d.tags["pipeline/triggered_by"]
                                       for d in downs)

    # 4. `both` waits for `never` too: given up after its 2 s timeout, with the reason
    reasons = _wait(lambda: [t.skip_reason for t in _ticks(home, "both_after_upstreams")
                             if (t.skip_reason or "").startswith("Gave up waiting")],
                    120, log)
    assert "up finished at" in reasons[0] and "never did not within the timeout " \
        "(2000 ms)" in reasons[0]
    assert not _runs(home, "both")

    # 5. lineage: `follower` reads the table `up` writes, and ran after it was updated
    def followed():
        with dg.DagsterInstance.from_config(str(home)) as instance:
            return instance.get_latest_materialization_event(dg.AssetKey("follower"))
    event = _wait(followed, 180, log)
    assert event.asset_materialization.metadata["dagster/row_count"].value == 3
    # `up` ran more than once, so another automation run may be overwriting the files right
    # now (a directory overwrite is not atomic): read them once they are there
    def readable():
        try:
            return pq.read_table(out / "follower")
        except (FileNotFoundError, OSError):
            return None
    assert _wait(readable, 120, log).num_rows == 3

    # (7. the schedule, every minute, started from the UI's API now: its first tick comes
    #  while the backfill below runs, instead of after it)
    schedule(port, "ticker_schedule", "start")

    # 6. a backfill of the three partitions through the UI's API: one run each
    launched = gql(port, """mutation($p: LaunchBackfillParams!) {
        launchPartitionBackfill(backfillParams: $p) { __typename
          ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
                   {"p": {"assetSelection": [{"path": ["parted"]}],
                          "partitionNames": ["2024-01-01", "2024-01-02", "2024-01-03"]}}
                   )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched

    def backfilled():
        with dg.DagsterInstance.from_config(str(home)) as instance:
            runs = instance.get_runs(dg.RunsFilter(
                tags={"dagster/backfill": launched["backfillId"]}))
            done = [r for r in runs if r.is_finished]
            return done if len(done) == 3 and len(runs) == 3 else None
    runs = _wait(backfilled, 300, log)
    assert {r.tags["dagster/partition"] for r in runs} == {
        "2024-01-01", "2024-01-02", "2024-01-03"}
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    for day, ids in (("20240101", [1]), ("20240102", [2, 3]), ("20240103", [4])):
        got = sorted(int(line.split(",")[0]) for f in (out / "parted" / day).glob("*.csv")
                     for line in f.read_text().splitlines()[1:])
        assert got == ids, (day, got)
    assert not (out / "parted" / "20240104").exists()
    # ... and `parted_after` ran each of those partitions once, reading that day's output
    after = _wait(lambda: (lambda rs: rs if len(rs) == 3 and all(r.is_finished for r in rs)
                           else None)(_runs(home, "parted_after")), 240, log)
    assert sorted(r.tags["dagster/partition"] for r in after) == [
        "2024-01-01", "2024-01-02", "2024-01-03"]
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in after)
    for day, ids in (("2024-01-01", [1]), ("2024-01-02", [2, 3]), ("2024-01-03", [4])):
        assert sorted(pq.read_table(out / "parted_after" / day)["id"].to_pylist()) == ids
    wait_ticks(home, "parted_after_after_upstreams", 2, log)
    assert len(_runs(home, "parted_after")) == 3

    # a new file runs a partitioned pipeline for its latest complete partition (the last)
    (tmp_path / "f.csv").write_text("id\n7\n")
    (tmp_path / "f.csv").rename(data / "drop" / "f.csv")
    (dropped,) = _wait(lambda: _finished(home, "parted_files", 1), 240, log)
    assert dropped.status == dg.DagsterRunStatus.SUCCESS
    assert dropped.tags["dagster/partition"] == "2024-01-03"
    assert pq.read_table(out / "parted_files").to_pylist() == [{"id": 7, "day": "2024-01-03"}]

    # 7. the schedule (every minute), started from the UI's API, fired and its run
    #    succeeded; then stopped, so it does not fire for the rest of the test
    (tick,) = _wait(lambda: _finished(home, "ticker", 1), 300, log)[:1]
    schedule(port, "ticker_schedule", "stop")
    assert tick.status == dg.DagsterRunStatus.SUCCESS
    assert tick.tags["dagster/schedule_name"] == "ticker_schedule"

    # 8. onCron: a minute's tick passed, then its upstream was updated: `hourly` runs before
    #    the next tick (the update is made early in a minute, so that it lands before it)
    def hourly_runs() -> list:  # the automation sensor's runs are of an asset job
        with dg.DagsterInstance.from_config(str(home)) as instance:
            return instance.fetch_materializations(dg.AssetKey("hourly"), limit=10).records
    assert not hourly_runs()  # it waits for its upstream to be updated after a tick
    if time.gmtime().tm_sec > 20:
        time.sleep(61 - time.gmtime().tm_sec)
    r = subprocess.run([PIPELINE, "run", str(configs / "cronsrc.json")], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]

    _wait(hourly_runs, 180, log)
    (ran,) = hourly_runs()
    assert pq.read_table(out / "hourly").num_rows == 3
    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_run_by_id(ran.run_id)
    assert run.tags.get("dagster/sensor_name") == "pipelines_automation", run.tags
