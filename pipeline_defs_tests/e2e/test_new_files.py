"""`sensors: [{"type": "newFiles", ...}]` on the real daemon: each new file, in a local
directory, under an S3 prefix (moto) and in an HDFS directory (a real NameNode and DataNode),
starts exactly one run that reads it as ${trigger.file}; when the daemon is killed just after
the sensor has started runs (while they run or wait in the queue) and restarted, none is lost
and none runs twice."""
from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq

from pipeline_defs_tests.conftest import write_json
from pipeline_defs_tests.e2e.test_orchestration import _runs, _wait, wait_ticks
from pipeline_defs_tests.e2e.test_webserver import restart_daemon, serve


def _done(home: Path, job: str, n: int):
    runs = _runs(home, job)
    done = [r for r in runs if r.is_finished]
    return done if len(done) >= n and len(runs) == len(done) else None


def test_new_files_locally_on_s3_and_hdfs_run_once_each_across_a_daemon_restart(
        tmp_path, s3, hdfs):
    landing, out, configs = tmp_path / "landing", tmp_path / "out", tmp_path / "configs"
    for d in (landing, configs):
        d.mkdir()
    s3.client.create_bucket(Bucket="landing")
    (tmp_path / "seed.csv").write_text("id\n1\n")
    write_json(configs / "local.json", {
        "name": "local", "sensors": [{"type": "newFiles", "path": str(landing),
                                      "pattern": "*.csv", "minimumIntervalSeconds": 1}],
        "steps": [
            {"type": "extract", "method": "fromFile",
             "config": {"path": "${trigger.file}", "format": "csv", "schema": "id INT"}},
            {"type": "load", "method": "toFile", "config": {
                "path": str(out / "local" / "${trigger.name}"), "format": "parquet",
                "assetKey": "local_files"}}]})
    write_json(configs / "remote.json", {
        "name": "remote", "sensors": [{"type": "newFiles", "path": "s3a://landing/orders/",
                                       "pattern": "*.csv", "minimumIntervalSeconds": 1,
                                       "endpoint": s3.endpoint}],
        "steps": [
            {"type": "extract", "method": "fromFile",
             "config": {"path": str(tmp_path / "seed.csv"), "format": "csv"}},
            {"type": "transform", "method": "enrichData",
             "config": {"columns": {"file": "'${trigger.file}'"}}},
            {"type": "load", "method": "toFile", "config": {
                "path": str(out / "remote" / "${trigger.name}"), "format": "parquet",
                "assetKey": "remote_files"}}]})
    write_json(configs / "hadoop.json", {
        "name": "hadoop", "sensors": [{"type": "newFiles", "path": f"{hdfs.uri}/landing/",
                                       "webhdfs": hdfs.web, "pattern": "*.csv",
                                       "minimumIntervalSeconds": 1}],
        "steps": [
            {"type": "extract", "method": "fromFile",  # Spark reads the file from HDFS
             "config": {"path": "${trigger.file}", "format": "csv", "schema": "id INT"}},
            {"type": "load", "method": "toFile", "config": {
                "path": str(out / "hadoop" / "${trigger.name}"), "format": "parquet",
                "assetKey": "hadoop_files"}}]})
    env = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1"}
    home, log = tmp_path / "dagster_home", tmp_path / "daemon.log"
    with serve(tmp_path, configs, env) as (port, _):
        for i in (1, 2):
            (landing / f"part{i}.csv").write_text(f"id\n{i}\n{i * 10}\n")
            (landing / f"ignored{i}.txt").write_text("not a csv")
            s3.client.put_object(Bucket="landing", Key=f"orders/o{i}.csv", Body=b"id\n1\n")
            hdfs.put(f"/landing/h{i}.csv", f"id\n{i * 100}\n".encode())
            hdfs.put(f"/landing/h{i}.txt", b"not a csv")
        s3.client.put_object(Bucket="landing", Key="other/o9.csv", Body=b"id\n1\n")
        hdfs.put("/landing/._h9.csv._COPYING_", b"id\n9\n")  # a put still in flight

        local = _wait(lambda: _done(home, "local", 2), 300, log)
        remote = _wait(lambda: _done(home, "remote", 2), 300, log)
        hadoop = _wait(lambda: _done(home, "hadoop", 2), 300, log)
        assert sorted(r.tags["pipeline/trigger_file"] for r in local) == [
            str(landing / f"part{i}.csv") for i in (1, 2)]
        assert sorted(r.tags["pipeline/trigger_file"] for r in remote) == [
            f"s3a://landing/orders/o{i}.csv" for i in (1, 2)]
        assert sorted(r.tags["pipeline/trigger_file"] for r in hadoop) == [
            f"{hdfs.uri}/landing/h{i}.csv" for i in (1, 2)]
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in local + remote + hadoop)
        for i in (1, 2):  # each run read its own file
            assert sorted(pq.read_table(out / "local" / f"part{i}.csv")["id"].to_pylist()) \
                == [i, i * 10]
            assert pq.read_table(out / "remote" / f"o{i}.csv")["file"].to_pylist() == [
                f"s3a://landing/orders/o{i}.csv"]
            assert pq.read_table(out / "hadoop" / f"h{i}.csv")["id"].to_pylist() == [i * 100]

        # three new files at once: the daemon is killed (SIGKILL, no goodbye) as soon as the
        # sensor has started their runs, while they run or wait in the queue (two at a time)
        for i in (3, 4, 5):
            (landing / f"part{i}.csv").write_text(f"id\n{i}\n")
        hdfs.put("/landing/h3.csv", b"id\n300\n")
        started = _wait(lambda: (lambda runs: runs if len(runs) == 5 else None)(
            _runs(home, "local")), 300, log)
        assert not all(r.is_finished for r in started), "the kill must land mid-flight"
        restart_daemon(port)
        killed = time.time()  # ticks after this are the new daemon's
        for job in ("local", "remote", "hadoop"):  # each sensor evaluated by the new daemon
            wait_ticks(home, f"{job}_new_files", 2, log, since=killed)
        local = _wait(lambda: _done(home, "local", 5), 300, log)
        hadoop = _wait(lambda: _done(home, "hadoop", 3), 300, log)
        # none lost, none twice: each file ran exactly once, successfully, and read its rows
        assert sorted(r.tags["pipeline/trigger_file"] for r in local) == [
            str(landing / f"part{i}.csv") for i in range(1, 6)]
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in local + hadoop), \
            [(r.tags["pipeline/trigger_file"], r.status) for r in local + hadoop]
        for i in (3, 4, 5):
            assert pq.read_table(out / "local" / f"part{i}.csv")["id"].to_pylist() == [i]
        assert sorted(r.tags["pipeline/trigger_file"] for r in hadoop) == [
            f"{hdfs.uri}/landing/h{i}.csv" for i in (1, 2, 3)]
        assert pq.read_table(out / "hadoop" / "h3.csv")["id"].to_pylist() == [300]
        assert [len(_runs(home, j)) for j in ("local", "remote", "hadoop")] == [5, 2, 3]
