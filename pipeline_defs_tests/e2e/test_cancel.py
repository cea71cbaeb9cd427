"""Cancelling a batch run stops its Spark job at once (a Spark action ignores Dagster's
interrupt by itself): Ctrl-C / SIGTERM on `pipeline run`, and Terminate from the UI on a run
`pipeline run`, `dagster job execute` or the daemon is executing. The run ends CANCELED with
one line on the terminal, nothing of the cancelled write is committed, and the next run
succeeds."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest

from pipeline_defs_tests.conftest import REPO, write_json
from pipeline_defs_tests.e2e.test_webserver import gql, serve

PIPELINE = str(Path(sys.executable).parent / "pipeline")


def _long(tmp_path: Path) -> Path:
    """A write that takes many minutes unless cancelled (3e9 generated rows, hashed)."""
    (tmp_path / "one.csv").write_text("id\n1\n")
    return write_json(tmp_path / "long.json", {
        "name": "long-job", "params": {"n": "3000000000"}, "steps": [
            {"type": "extract", "method": "fromFile",
             "config": {"path": str(tmp_path / "one.csv"), "format": "csv",
                        "registerAs": "one"}},
            {"type": "transform", "method": "sql", "name": "big",
             "config": {"query": "SELECT r.id, sha2(cast(r.id AS string), 256) AS h "
                                 "FROM range(${n}) r CROSS JOIN one"}},
            {"type": "load", "method": "toDeltaLake", "name": "big_out",
             "config": {"path": str(tmp_path / "out"), "mode": "overwrite"}}]})


STARTED: list[subprocess.Popen] = []  # what this module's tests started, each a group


@pytest.fixture(autouse=True)
def _nothing_left_running():
    """Whatever a test started (`pipeline run`, `dagster job execute`, with their JVMs) is
    gone when it ends, also when it failed before the run ended."""
    yield
    while STARTED:
        proc = STARTED.pop()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(30)


def _start(f: Path, home: Path) -> subprocess.Popen:
    """`pipeline run` as a terminal's foreground job: a process group of its own, which
    Ctrl-C signals as a whole (the run's JVM and Dagster's log tails included)."""
    env = {**os.environ, "DAGSTER_HOME": str(home), "SPARK_MASTER": "local[2]"}
    proc = subprocess.Popen([PIPELINE, "run", str(f)], env=env, cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    STARTED.append(proc)
    return proc


def _group(pgid: int) -> list[int]:
    """The processes still in a process group."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getpgid(int(proc.name)) == pgid:
                out.append(int(proc.name))
        except OSError:
            continue
    return out


def _tasks_writing(out: Path) -> bool:
    """Spark's tasks have opened their output files (Delta writes data files into the table
    directory, and makes them part of the table only at the commit)."""
    return out.is_dir() and any(out.glob("part-*.parquet"))


def _run_ids(home: Path) -> set[str]:
    if not (home / "dagster.yaml").exists() and not (home / "storage").exists():
        return set()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return {r.run_id for r in instance.get_runs()}


def _writing(home: Path, proc: subprocess.Popen, out: Path | None,
             known: set[str] = frozenset()) -> dg.DagsterRun:
    """The run, once its load step (the long Spark job) is writing (with `out` None: as soon
    as the step has started, maybe before its job is submitted)."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            for run in instance.get_runs():  # a run this test started (`known`: those
                # the shared home held before it)
                if run.run_id in known:
                    continue
                starts = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
                if not run.is_finished and any(
                        r.step_key and r.step_key.endswith(".big_out") for r in starts) \
                        and (out is None or _tasks_writing(out)):
                    return run
        time.sleep(0.5)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"the load never started: {proc.communicate(timeout=60)}")


def _ended(proc: subprocess.Popen, since: float) -> tuple[str, float]:
    """What the process printed (stdout, then stderr) and how long it took to end."""
    out, err = proc.communicate(timeout=300)
    return out + err, time.monotonic() - since


def _after(spark, tmp_path: Path, home: Path, f: Path, run_id: str, err: str, why: str
           ) -> None:
    last = err.strip().splitlines()[-1]
    assert last.startswith("pipeline long-job: CANCELED after ") and why in last, last
    for trace in ("Traceback", "Stack Trace", 'File "', "at org.apache", "Py4J"):
        assert trace not in err, err[-3000:]  # the terminal gets lines, not stacks
    assert "nothing it was writing was committed" in last and run_id in last
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.CANCELED
    assert not list((tmp_path / "out" / "_delta_log").glob("*.json"))  # no Delta commit
    env = {**os.environ, "DAGSTER_HOME": str(home), "SPARK_MASTER": "local[2]"}
    r = subprocess.run([PIPELINE, "run", str(f), "--param", "n=1000"], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert spark.read.format("delta").load(str(tmp_path / "out")).count() == 1000


@pytest.mark.parametrize("sig, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_a_signal_cancels_the_spark_job_of_pipeline_run(tmp_path, sig, to_group, spark):
    """Ctrl-C at a terminal signals the whole foreground process group; a supervisor's
    SIGTERM the process. Either way: one CANCELED line, no traceback from any process."""
    home = tmp_path / "home"
    home.mkdir()
    f = _long(tmp_path)
    proc = _start(f, home)
    run = _writing(home, proc, tmp_path / "out")
    assert len(_group(proc.pid)) >= 4  # the Python process, its JVM, Dagster's log tails
    sent = time.monotonic()
    if to_group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    err, took = _ended(proc, sent)
    assert proc.returncode == 130, err[-3000:]  # cancelled: CANCELED, nothing committed (below)
    print(f"{sig.name}: cancelled in {took:.1f}s")
    _after(spark, tmp_path, home, f, run.run_id, err,
           f"{sig.name} received, during step big_out")


def test_a_second_ctrl_c_quits_at_once(tmp_path, spark):
    """The first Ctrl-C starts the cancel; a second one, before it is done, ends the process
    at once with one line, the run marked CANCELED and nothing committed."""
    home = tmp_path / "home"
    home.mkdir()
    f = _long(tmp_path)
    proc = _start(f, home)
    run = _writing(home, proc, tmp_path / "out")
    os.killpg(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + 60
    while True:  # until the first one has landed: the run is CANCELING
        with dg.DagsterInstance.from_config(str(home)) as instance:
            if instance.get_run_by_id(run.run_id).status != dg.DagsterRunStatus.STARTED:
                break
        assert time.monotonic() < deadline, "the first SIGINT did not ask for a termination"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("pipeline long-job: CANCELED (SIGINT again): quit at once"), err
    assert run.run_id in last
    assert "Traceback" not in err + out
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.CANCELED
    deadline = time.monotonic() + 30  # its JVM ends with it (its stdin closed)
    while _group(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group(proc.pid)
    assert not list((tmp_path / "out" / "_delta_log").glob("*.json"))


@dataclass
class Served:
    """One webserver and daemon for the module's UI tests, over a directory holding the long
    pipeline; each test starts from an empty output directory."""
    port: int
    root: Path
    home: Path
    file: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("cancel_ui")
    configs = root / "configs"
    configs.mkdir()
    f = _long(root).rename(configs / "long.json")
    with serve(root, configs, {}) as (port, _):
        yield Served(port, root, root / "dagster_home", f)


@pytest.fixture
def ui(served):
    shutil.rmtree(served.root / "out", ignore_errors=True)
    return served


def test_terminate_from_the_ui_cancels_a_run_of_pipeline_run(ui, spark):
    known = _run_ids(ui.home)
    proc = _start(ui.file, ui.home)
    run = _writing(ui.home, proc, ui.root / "out", known)
    sent = time.monotonic()
    result = gql(ui.port, """mutation($id: String!) { terminateRun(runId: $id) {
        __typename } }""", {"id": run.run_id})["terminateRun"]
    err, took = _ended(proc, sent)
    assert proc.returncode == 130, (result, err[-3000:])
    print(f"UI terminate: cancelled in {took:.1f}s")
    _after(spark, ui.root, ui.home, ui.file, run.run_id, err, "terminated from Dagster")


def test_terminate_from_the_ui_cancels_a_run_of_dagster_job_execute(ui, spark):
    """Dagster's own CLI executes in process too: the Spark resource's watcher cancels the
    job, and the run ends CANCELED (not FAILURE), whichever way the UI terminates it."""
    env = {**os.environ, "DAGSTER_HOME": str(ui.home), "SPARK_MASTER": "local[2]",
           "PIPELINE_CONFIG_DIR": str(ui.file.parent)}
    # the second termination lands as the load step starts, before or while it submits
    # its Spark job: a job submitted after the termination is cancelled too
    for policy, out in (("SAFE_TERMINATE", ui.root / "out"),
                        ("MARK_AS_CANCELED_IMMEDIATELY", None)):
        shutil.rmtree(ui.root / "out", ignore_errors=True)
        known = _run_ids(ui.home)
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster"), "job", "execute", "-m",
             "pipeline_defs.definitions", "-j", "long_job"], env=env, cwd=REPO,
            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        STARTED.append(proc)
        run = _writing(ui.home, proc, out, known)
        sent = time.monotonic()
        gql(ui.port, """mutation($id: String!, $p: TerminateRunPolicy) {
            terminateRun(runId: $id, terminatePolicy: $p) { __typename } }""",
            {"id": run.run_id, "p": policy})
        output, took = _ended(proc, sent)
        assert proc.returncode == 1, output[-3000:]  # Dagster's CLI: the run did not succeed
        print(f"UI terminate ({policy}) of dagster job execute: ended in {took:.1f}s")
        with dg.DagsterInstance.from_config(str(ui.home)) as instance:
            assert instance.get_run_by_id(run.run_id).status == \
                dg.DagsterRunStatus.CANCELED, policy
        assert not list((ui.root / "out" / "_delta_log").glob("*.json"))


def test_terminate_from_the_ui_cancels_a_run_the_daemon_launched(ui, spark):
    from pipeline_defs_tests.e2e.test_webserver import launch, run_status
    run_id = launch(ui.port, "long_job")
    deadline = time.monotonic() + 240
    while True:  # until the long write is under way
        with dg.DagsterInstance.from_config(str(ui.home)) as instance:
            if any((r.step_key or "").endswith(".big_out") for r in instance.all_logs(
                    run_id, of_type=dg.DagsterEventType.STEP_START)) \
                    and _tasks_writing(ui.root / "out"):
                break
        assert time.monotonic() < deadline, run_status(ui.port, run_id)  # never started
        time.sleep(0.5)
    sent = time.monotonic()
    result = gql(ui.port, """mutation($id: String!) { terminateRun(runId: $id) {
        __typename } }""", {"id": run_id})["terminateRun"]
    assert result["__typename"] == "TerminateRunSuccess", result
    while run_status(ui.port, run_id) not in ("CANCELED", "FAILURE", "SUCCESS") and \
            time.monotonic() - sent < 120:
        time.sleep(0.2)
    took = time.monotonic() - sent
    assert run_status(ui.port, run_id) == "CANCELED", took
    print(f"UI terminate of a daemon-launched run: CANCELED in {took:.1f}s")
    # ...and its run worker, Spark JVM included, is gone (not writing on in the dark)
    while _workers(run_id) and time.monotonic() - sent < 60:
        time.sleep(0.5)
    assert not _workers(run_id), _workers(run_id)
    print(f"  run worker gone after {time.monotonic() - sent:.1f}s")
    assert not list((ui.root / "out" / "_delta_log").glob("*.json"))


def _workers(run_id: str) -> list[int]:
    """Processes whose command line names the run (Dagster's run worker and its JVM)."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and run_id.encode() in (proc / "cmdline").read_bytes():
                out.append(int(proc.name))
        except OSError:
            continue
    return out
