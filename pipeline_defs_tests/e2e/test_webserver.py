"""The Dagster webserver and daemon, run for real on loopback: every pipeline shows as a job,
and a run launched through the UI's API is queued, started by the daemon and succeeds."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import sys
import time
import urllib.request
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline_defs_tests.conftest import REPO, copy_configs
from pipeline_defs_tests.owned import Owned, start_on_port

BIN = Path(sys.executable).parent


def gql(port: int, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", method="POST",
                                 data=json.dumps({"query": query,
                                                  "variables": variables or {}}).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as e:  # the server's own explanation, not just "500"
        raise AssertionError(f"GraphQL: HTTP {e.code}: {e.read().decode()[:3000]}") from None
    assert "errors" not in body, body
    return body["data"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, sample_data):
    """One webserver and daemon for this module's tests: the example pipelines over the
    sample data, and a streaming pipeline reading a directory of JSON files."""
    root = tmp_path_factory.mktemp("webserver")
    configs, src = copy_configs(root / "configs"), root / "incoming"
    src.mkdir()
    (src / "a.json").write_text("\n".join(json.dumps({"id": i}) for i in range(100)))
    (configs / "stream.json").write_text(json.dumps({
        "name": "ui-stream", "mode": "streaming",
        "streaming": {"trigger": "1 second", "checkpointRoot": str(root / "cp"),
                      "progressIntervalS": 1},
        "steps": [
            {"type": "extract", "method": "fromFile", "config": {
                "path": str(src), "format": "json", "schema": "id BIGINT"}},
            {"type": "transform", "method": "enrichData", "config": {"columns": {
                "twice": "id * 2"}}},
            {"type": "load", "method": "toDeltaLake", "config": {
                "path": str(root / "out" / "stream"), "mode": "append"}}]}))
    with serve(root, configs, {"PIPELINE_DATA_DIR": str(sample_data),
                               "PIPELINE_OUTPUT_DIR": str(root / "out")}) as (port, out):
        yield port, out, sample_data


@pytest.fixture
def webserver(served):
    return served


@contextlib.contextmanager
def serve(tmp_path, config_dir, extra_env, instance_yaml: str = "",
          instance_file: str = "dagster.yaml", instance_text: str | None = None):
    """dagster-webserver and dagster-daemon on loopback over config_dir, as (port, out);
    stopped when the block ends, also when a test in it fails (a daemon left running keeps
    firing its schedules and sensors, slowing every later test).
    `instance_file`: the instance/ file to start from; `instance_yaml`: settings added;
    `instance_text`: the whole dagster.yaml instead."""
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)  # a test may have run pipelines there before
    (home / "dagster.yaml").write_text(
        instance_text if instance_text is not None
        else (REPO / "instance" / instance_file).read_text() + instance_yaml)
    env = {**os.environ, "DAGSTER_HOME": str(home), "SPARK_MASTER": "local[2]",
           "PIPELINE_CONFIG_DIR": str(config_dir), **extra_env}
    web = Owned("web", tmp_path)

    def answers(ports) -> bool:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/server_info", timeout=2)
            return True
        except OSError:
            return False
    # a port of its own: held by this webserver, proven, before anything talks to it
    (port,) = start_on_port("dagster-webserver", web, 1, lambda ports: web.popen(
        [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(ports[0]),
         "-m", "pipeline_defs.definitions"], env=env, cwd=REPO), answers)
    try:
        DAEMONS[port] = ([_daemon(tmp_path, env)], tmp_path, env)
        yield port, tmp_path / "out"
    finally:
        # every daemon this block started, with its process group (code servers, run
        # workers and their JVMs): nothing outlives the block, also when a test failed
        for daemon in DAEMONS.pop(port, ([], None, None))[0]:
            daemon.stop()
        web.stop()


DAEMONS: dict[int, tuple] = {}  # webserver port -> (daemons started, tmp_path, env)


def _daemon(tmp_path, env) -> Owned:
    """dagster-daemon in a process group of its own (its code server and the run workers it
    launches stay in it), logging to daemon.log."""
    daemon = Owned("daemon", tmp_path)
    daemon.popen([str(BIN / "dagster-daemon"), "run", "-m", "pipeline_defs.definitions"],
                 env=env, cwd=REPO)
    return daemon


def restart_daemon(port: int) -> None:
    """Stops the daemon of serve()'s instance (SIGKILL to the daemon alone: no goodbye) and
    starts a new one; what the old one started is stopped with the block."""
    daemons, tmp_path, env = DAEMONS[port]
    os.kill(daemons[-1].proc.pid, signal.SIGKILL)
    daemons[-1].proc.wait(timeout=60)
    daemons.append(_daemon(tmp_path, env))


def launch(port: int, job: str) -> str:
    repo = gql(port, """{ repositoriesOrError { ... on RepositoryConnection { nodes {
        name location { name } } } } }""")["repositoriesOrError"]["nodes"][0]
    launched = gql(port, """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
        __typename ... on LaunchRunSuccess { run { runId } }
        ... on PythonError { message } } }""", {"p": {"selector": {
        "repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"],
        "jobName": job}, "runConfigData": {}}})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def run_status(port: int, run_id: str) -> str:
    return gql(port, """query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }""",
               {"id": run_id})["runOrError"]["status"]


def test_ui_lists_jobs_and_launches_a_run(webserver):
    port, out, _ = webserver
    data = gql(port, """{ repositoriesOrError { ... on RepositoryConnection { nodes {
        name location { name } jobs { name } } } } }""")
    repo = data["repositoriesOrError"]["nodes"][0]
    jobs = {j["name"] for j in repo["jobs"]}
    assert {"orders_enrichment", "sales_pivot", "customer_upsert"} <= jobs
    launched = gql(port, """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
        __typename ... on LaunchRunSuccess { run { runId } }
        ... on PythonError { message } } }""", {"p": {"selector": {
        "repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"],
        "jobName": "customer_upsert"}, "runConfigData": {}}})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + 240
    status = None
    while time.monotonic() < deadline:
        status = gql(port, """query($id: ID!) { runOrError(runId: $id) {
            ... on Run { status } } }""", {"id": run_id})["runOrError"]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(1)
    assert status == "SUCCESS", (webserver[1].parent / "daemon.log").read_text()[-3000:]
    assert (out / "delta" / "customers" / "_delta_log").is_dir()
    mats = gql(port, """{ assetsOrError { ... on AssetConnection { nodes { key { path }
        assetMaterializations(limit: 1) { runId } } } } }""")["assetsOrError"]["nodes"]
    written = [a for a in mats if a["key"]["path"] == ["customers"]]
    assert written and written[0]["assetMaterializations"][0]["runId"] == run_id

    # one asset of a two-load pipeline, launched by asset selection as the catalog does
    launched = gql(port, """mutation($p: ExecutionParams!) { launchRun(executionParams: $p) {
        __typename ... on LaunchRunSuccess { run { runId } }
        ... on PythonError { message } } }""", {"p": {"selector": {
        "repositoryLocationName": repo["location"]["name"], "repositoryName": repo["name"],
        "jobName": "__ASSET_JOB", "assetSelection": [{"path": ["region_by_category"]}]},
        "runConfigData": {}}})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and run_status(port, run_id) not in (
            "SUCCESS", "FAILURE", "CANCELED"):
        time.sleep(1)
    assert run_status(port, run_id) == "SUCCESS", \
        (webserver[1].parent / "daemon.log").read_text()[-3000:]
    expect: dict = {}
    for o in _orders(webserver[2]):
        if o["status"] == "completed" and o["order_date"].startswith("2024"):
            k = (o["region"], o["product_category"])
            expect[k] = expect.get(k, Decimal(0)) + o["amount"]
    got = {}
    for f in (out / "files" / "region_by_category").glob("part-*.csv"):
        with f.open(newline="") as fh:
            for r in csv.DictReader(fh):
                got.update({(r["region"], c): Decimal(r[c]) for c in r if c != "region"})
    assert got == expect
    assert not (out / "delta" / "category_ranking").exists()  # not selected, not written


def _orders(data: Path) -> list[dict]:
    return [json.loads(line, parse_float=Decimal) for f in sorted(data.glob("orders*/*.jsonl"))
            for line in f.read_text().splitlines()]


@pytest.fixture
def stream_server(served):
    return served[:2]


def test_terminating_a_streaming_run_from_the_ui_stops_it_and_a_new_run_resumes(
        stream_server, spark):
    port, out = stream_server
    src = out.parent / "incoming"
    table = out / "stream"

    def ids():
        if not (table / "_delta_log" / "00000000000000000000.json").exists():
            return []  # the log directory exists a moment before the first commit
        return sorted(r.id for r in spark.read.format("delta").load(str(table)).collect())

    def wait(cond, what, timeout=240):
        deadline = time.monotonic() + timeout
        while not cond():
            assert time.monotonic() < deadline, what
            time.sleep(0.5)

    run_id = launch(port, "ui_stream")
    wait(lambda: ids() == list(range(100)), "the first file in Delta")
    result = gql(port, """mutation($id: String!) { terminateRun(runId: $id) { __typename
        ... on TerminateRunFailure { message } ... on PythonError { message } } }""",
                 {"id": run_id})["terminateRun"]
    assert result["__typename"] == "TerminateRunSuccess", result
    wait(lambda: run_status(port, run_id) == "CANCELED", "the run to be canceled", 60)
    # the next run resumes from the checkpoint: only the new file, once
    (src / "b.json").write_text("\n".join(json.dumps({"id": i}) for i in range(100, 150)))
    second = launch(port, "ui_stream")
    wait(lambda: len(ids()) >= 150, "the second file in Delta")
    gql(port, """mutation($id: String!) { terminateRun(runId: $id) { __typename } }""",
        {"id": second})
    wait(lambda: run_status(port, second) == "CANCELED", "the second run to stop", 60)
    assert ids() == list(range(150))
