"""The pipelines on a Spark standalone cluster (a master and a worker, each its own JVM, on
loopback, started by this test session), unchanged: `pipeline run` with SPARK_MASTER=spark://...
runs a PostgreSQL -> Delta + PostgreSQL (COPY from Python workers) + MySQL pipeline and a
streaming one on the cluster's executor (the connector jars reach it, its Python is the
project's), and their output equals the same pipelines' output in local mode."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline_defs_tests.conftest import REPO, write_json
from pipeline_defs_tests.owned import Owned, remove, session_dir, wait_for

PIPELINE = str(Path(sys.executable).parent / "pipeline")


class Cluster(str):
    """The master's URL; `.ui`: its web UI (JSON at /json/)."""
    ui: str


@pytest.fixture(scope="session")
def spark_cluster():
    """A master and one worker (1 core, 1 GB) from the pyspark distribution, on ports they
    chose themselves (read back from their logs)."""
    import pyspark
    home = Path(pyspark.__file__).parent
    root = session_dir("spark")
    env = {"SPARK_HOME": str(home), "SPARK_LOCAL_IP": "127.0.0.1", "SPARK_LOG_DIR": str(root),
           "PYSPARK_PYTHON": sys.executable}
    master, worker = Owned("master", root), Owned("worker", root)
    try:
        yield _start_cluster(home, root, env, master, worker)
    finally:  # also when it did not start: nothing of it outlives the session
        worker.stop()
        master.stop()
        remove(root)


def _start_cluster(home: Path, root: Path, env: dict, master: Owned, worker: Owned) -> Cluster:
    master.popen([str(home / "bin" / "spark-class"), "org.apache.spark.deploy.master.Master",
                  "--host", "127.0.0.1", "--port", "0", "--webui-port", "0"], env=env)

    def said(pattern: str):
        m = re.search(pattern, master.log.read_text(errors="replace"))
        return m.group(1) if m else None
    url = wait_for("the Spark master", lambda: said(r"Starting Spark master at "
                                                   r"(spark://127\.0\.0\.1:\d+)"),
                   master.proc, master.log)
    ui = "http://127.0.0.1:" + wait_for("the Spark master's UI", lambda: said(
        r"MasterWebUI.* started at http://[^:/]+:(\d+)"), master.proc, master.log)
    (root / "work").mkdir()
    worker.popen([str(home / "bin" / "spark-class"), "org.apache.spark.deploy.worker.Worker",
                  url, "--host", "127.0.0.1", "--webui-port", "0", "--cores", "1",
                  "--memory", "1g", "--work-dir", str(root / "work")], env=env)

    def alive() -> bool:
        state = json.loads(urllib.request.urlopen(f"{ui}/json/", timeout=10).read())
        return any(w["state"] == "ALIVE" for w in state["workers"])
    wait_for("the Spark worker", alive, worker.proc, worker.log)
    cluster = Cluster(url)
    cluster.ui = ui
    return cluster


def _apps(cluster: Cluster) -> list[dict]:
    state = json.loads(urllib.request.urlopen(f"{cluster.ui}/json/", timeout=10).read())
    return state["activeapps"] + state["completedapps"]


def _run(f: Path, master: str, vault, out: Path, *params: str) -> str:
    env = {**os.environ, "SPARK_MASTER": master, "VAULT_ADDR": vault.url,
           "VAULT_TOKEN": vault.token, "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop("DAGSTER_HOME", None)
    args = [a for p in (f"out={out}", *params) for a in ("--param", p)]
    r = subprocess.run([PIPELINE, "run", str(f), *args], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r.stdout


def _rows(spark, path: Path) -> list[tuple]:
    return sorted(tuple(r) for r in spark.read.format("delta").load(str(path)).collect())


def test_delta_jdbc_and_streaming_pipelines_run_unchanged_on_a_standalone_cluster(
        spark_cluster, pg, mysql, vault, tmp_path, spark):
    vault.put("secret", "pg", pg.secret())
    vault.put("secret", "mysql", mysql.secret())
    pg.sql("CREATE TABLE trips (trip_id int PRIMARY KEY, region text, distance numeric(8,2))")
    with pg.admin.cursor() as cur:
        cur.executemany("INSERT INTO trips VALUES (%s, %s, %s)",
                        [(i, ("north", "south", "east")[i % 3], Decimal(f"{i % 50}.{i % 10}5"))
                         for i in range(1, 2001)])
    batch = write_json(tmp_path / "trips.json", {"name": "trips",
                                                 "params": {"out": "x", "table": "x"},
                                                 "steps": [
        {"type": "extract", "method": "fromPostgres",
         "config": {"table": "trips", "credentialPath": "secret/data/pg",
                    "partitionColumn": "trip_id", "numPartitions": 2}},
        {"type": "transform", "method": "enrichData",
         "config": {"columns": {"km": "distance * 1.609"}}},
        {"type": "load", "method": "toDeltaLake", "name": "trips_delta",
         "config": {"path": "${out}/delta", "mode": "overwrite"}},
        # PostgreSQL loads COPY from Spark's Python workers: the executor runs the project's
        # Python (with psycopg)
        {"type": "load", "method": "toPostgres", "name": "trips_pg",
         "config": {"table": "${table}_km", "mode": "overwrite",
                    "credentialPath": "secret/data/pg"}},
        {"type": "transform", "method": "aggregateData", "config": {
            "groupBy": ["region"],
            "aggregations": {"n": "count(*)", "km": "sum(km)"}}},
        {"type": "load", "method": "toMySQL", "name": "by_region",
         "config": {"table": "${table}", "mode": "overwrite",
                    "credentialPath": "secret/data/mysql"}}]})
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for k in range(3):
        (incoming / f"f{k}.json").write_text("\n".join(
            json.dumps({"id": k * 100 + i, "v": i * k}) for i in range(50)))
    stream = write_json(tmp_path / "stream.json", {
        "name": "files-stream", "mode": "streaming", "params": {"out": "x"},
        "streaming": {"trigger": "availableNow", "checkpointRoot": "${out}/checkpoints"},
        "steps": [
            {"type": "extract", "method": "fromFile", "config": {
                "path": str(incoming), "format": "json", "schema": "id BIGINT, v BIGINT"}},
            {"type": "transform", "method": "filterRows", "config": {"condition": "v % 2 = 0"}},
            {"type": "load", "method": "toDeltaLake", "name": "stream_out",
             "config": {"path": "${out}/stream", "mode": "append"}}]})

    results = {}
    unpacked = set(Path(tempfile.gettempdir()).glob("comet-native-*"))
    for where, master in (("cluster", spark_cluster), ("local", "local[1]")):
        out = tmp_path / where
        before = {a["id"] for a in _apps(spark_cluster)}
        summary = _run(batch, master, vault, out, f"table=by_region_{where}")
        assert "pipeline trips: SUCCESS" in summary
        _run(stream, master, vault, out)
        new = [a for a in _apps(spark_cluster) if a["id"] not in before]
        # the cluster ran both runs (an application each, with an executor's cores); local
        # mode none
        assert len(new) == (2 if where == "cluster" else 0), new
        results[where] = (
            _rows(spark, out / "delta"),
            sorted(mysql.sql(f"SELECT region, n, km FROM by_region_{where}")),
            sorted(pg.sql(f"SELECT trip_id, km FROM by_region_{where}_km")),
            _rows(spark, out / "stream"))
    cluster, local = results["cluster"], results["local"]
    # the executor found Comet's library where the driver did (its library path), instead of
    # copying 145 MB to /tmp at its start
    assert set(Path(tempfile.gettempdir()).glob("comet-native-*")) == unpacked
    assert [len(x) for x in cluster] == [2000, 3, 2000, 125]
    assert cluster == local
