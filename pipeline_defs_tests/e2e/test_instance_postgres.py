"""Dagster's instance on PostgreSQL (instance/dagster-postgres.yaml, dagster-postgres): the
webserver and the daemon, separate processes, share runs, schedules and sensor cursors
through the database. A run launched from the UI's API is started by the daemon; a newFiles
sensor's cursor lives in PostgreSQL and survives a daemon restart; nothing is written to
SQLite."""
from __future__ import annotations

import time

import dagster as dg
import yaml

from pipeline_defs_tests.conftest import REPO, write_json
from pipeline_defs_tests.e2e.test_orchestration import _runs, _wait, wait_ticks
from pipeline_defs_tests.e2e.test_webserver import launch, restart_daemon, run_status, serve


def test_the_instance_file_for_postgres_differs_from_the_default_only_by_its_storage():
    default = yaml.safe_load((REPO / "instance" / "dagster.yaml").read_text())
    pg = yaml.safe_load((REPO / "instance" / "dagster-postgres.yaml").read_text())
    assert {k: v for k, v in pg.items() if k != "storage"} == default
    assert set(pg["storage"]["postgres"]["postgres_db"]) == {
        "hostname", "port", "db_name", "username", "password", "scheme"}


def test_webserver_and_daemon_share_runs_and_sensor_cursors_in_postgres(
        tmp_path, pg, monkeypatch):
    data, drop, configs = tmp_path / "data", tmp_path / "drop", tmp_path / "configs"
    for d in (data, drop, configs):
        d.mkdir()
    (data / "in.csv").write_text("id\n1\n2\n")
    write_json(configs / "pgjob.json", {
        "name": "pgjob", "params": {"src": str(data / "in.csv")},
        "schedule": {"cron": "0 6 * * *", "timezone": "UTC"},
        "sensors": [{"type": "newFiles", "path": str(drop), "pattern": "*.csv",
                     "minimumIntervalSeconds": 1}],
        "steps": [
            {"type": "extract", "method": "fromFile",
             "config": {"path": "${src}", "format": "csv", "schema": "id INT"}},
            {"type": "load", "method": "toFile", "config": {
                "path": str(tmp_path / "out" / "${trigger.name}"), "format": "parquet",
                "mode": "overwrite"}}]})
    env = {"DAGSTER_PG_HOST": pg.host, "DAGSTER_PG_PORT": str(pg.port),
           "DAGSTER_PG_DB": pg.database, "DAGSTER_PG_USERNAME": pg.username,
           "DAGSTER_PG_PASSWORD": pg.password}
    for k, v in env.items():  # this process reads the same instance
        monkeypatch.setenv(k, v)
    home, log = tmp_path / "dagster_home", tmp_path / "daemon.log"
    with serve(tmp_path, configs, env, instance_file="dagster-postgres.yaml") as (port, _):
        # a run launched through the webserver is queued in PostgreSQL, and the daemon, a
        # separate process, dequeues and starts it
        run_id = launch(port, "pgjob")
        _wait(lambda: run_status(port, run_id) in ("SUCCESS", "FAILURE"), 240, log)
        assert run_status(port, run_id) == "SUCCESS"
        # the sensor's runs and cursor, seen from a third process (this test)
        for i in (1, 2):
            (drop / f"f{i}.csv").write_text("id\n1\n")
        _wait(lambda: len([r for r in _runs(home, "pgjob") if r.is_finished]) == 3, 240, log)
        restarted = time.time()
        restart_daemon(port)
        # the new daemon evaluated the sensor several times: the cursor came from PostgreSQL
        wait_ticks(home, "pgjob_new_files", 2, log, since=restarted)
        assert len(_runs(home, "pgjob")) == 3
        (drop / "f3.csv").write_text("id\n1\n")
        _wait(lambda: len([r for r in _runs(home, "pgjob") if r.is_finished]) == 4, 240, log)

    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in _runs(home, "pgjob"))
    # it is all in the database, not in SQLite files under DAGSTER_HOME
    assert pg.sql("SELECT count(*) FROM runs WHERE pipeline_name = 'pgjob'") == [(4,)]
    (state,) = pg.sql("SELECT instigator_body FROM instigators WHERE instigator_body LIKE "
                      "'%pgjob_new_files%'")
    assert "f3.csv" in state[0]  # the sensor's cursor of seen files
    (schedule,) = pg.sql("SELECT status FROM instigators WHERE instigator_body LIKE "
                         "'%pgjob_schedule%'")  # the daemon's scheduler state
    # a schedule running by its default status in code: Dagster records it as such
    assert schedule == ("DECLARED_IN_CODE",), schedule
    assert not list(home.rglob("*.db")), list(home.rglob("*.db"))
    # the runs' events (the steps' too) are in the database
    (events,) = pg.sql(f"SELECT count(*) FROM event_logs WHERE run_id = '{run_id}' AND "
                       "dagster_event_type = 'STEP_SUCCESS'")
    assert events == (2,), events
