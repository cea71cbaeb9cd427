"""Shared fixtures: one small SparkSession for the whole test session, the registry, data."""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COMPAT = REPO.parent / "shared" / "compat" / "examples"
CONFIGS = REPO / "configs"

os.environ.setdefault("SPARK_LOG_LEVEL", "ERROR")
# Every Spark driver the tests start (this session's, `pipeline run`'s, the run workers the
# daemon launches: they inherit this environment) compiles with C1 only. Test JVMs live for
# seconds on tiny data, where C2's compiling is spent and never paid back: a small `pipeline
# run` takes ~9 s instead of ~12.5 s of wall time on 2 cores. Tests only; a pipeline run
# keeps the JVM's default (C1 then C2), which the benchmarks measure.
os.environ.setdefault("SPARK_SUBMIT_OPTS", "-XX:TieredStopAtLevel=1")
pytest_plugins = ["pipeline_defs_tests.servers", "pipeline_defs_tests.databases"]
# A pytest-xdist worker's __main__ has neither a spec nor a file; pyspark.sql.connect takes
# that for its own doctests and calls sys.exit(0) when Spark Connect's packages are missing
# (MLflow imports pyspark.ml.connect to tell Connect models apart). A real process (`pipeline
# run`, Dagster's run workers) always has one; so does a worker from here on.
_main = sys.modules["__main__"]
if getattr(_main, "__spec__", None) is None and not hasattr(_main, "__file__"):
    _main.__file__ = "<pytest-xdist worker>"
# `make test` runs the files on two workers, a file at a time each (pytest-xdist, --dist
# loadfile, in collection order): the longest files (measured) go first, so that none is left
# running alone at the end while the other worker idles.
LONGEST_FIRST = (
    "e2e/test_orchestration.py", "e2e/test_new_files.py", "e2e/test_cancel.py",
    "e2e/test_pools_and_run_retries.py", "e2e/test_spark_cluster.py",
    "e2e/test_instance_postgres.py", "e2e/test_exactly_once.py", "e2e/test_webserver.py",
    "test_steps/test_apply_changes.py", "e2e/test_apply_changes_runs.py",
    "e2e/test_sql_pipelines.py",
    "test_steps/test_acceleration.py", "e2e/test_retried_load.py", "e2e/test_streaming.py",
    "e2e/test_ui_browser.py", "e2e/test_ml_runs.py", "e2e/test_redaction.py",
    "e2e/test_make_dev.py",
    "e2e/test_acceleration_runs.py", "e2e/test_spark_config.py", "e2e/test_kill_mid_load.py")


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    gone = [name for name in LONGEST_FIRST if not (here / name).is_file()]
    if gone:
        raise pytest.UsageError(f"conftest.py LONGEST_FIRST names files that are gone: {gone}")
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(
        Path(str(item.path)).relative_to(here).as_posix(), len(rank)))


@pytest.fixture(autouse=True)
def _no_defs_state_storage_of_a_closed_instance():
    """Dagster 1.13's `with DagsterInstance... as instance:` sets the current defs-state
    storage (a ContextVar) on entering and leaves it set on leaving: it is reset only when the
    instance is garbage collected, and when that happens on another thread (a Spark or Dagster
    thread ran the collection) the reset misses this one. The next Definitions built here then
    fail with "Attempted to resolve undefined DagsterInstance weakref" (seen in full runs, never
    alone). The tests open instances that way to read runs; each test starts without one and
    leaves the variable as it found it."""
    from dagster._core.storage.defs_state.base import _current_storage
    token = _current_storage.set(None)
    yield
    _current_storage.reset(token)


@pytest.fixture(scope="session", autouse=True)
def _mlflow_store_of_the_session(tmp_path_factory):
    """Models the tests train go to a local MLflow store of the test session: not the
    product's default (./mlruns, the working tree), nor a server the environment names; a
    test wanting its own sets its own."""
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ["PIPELINE_MLFLOW_DIR"] = str(tmp_path_factory.mktemp("mlruns"))
    yield


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pipeline_defs.dagster_layer.resources.spark import SparkSettings, session
    warehouse = tmp_path_factory.mktemp("warehouse")
    s = session(SparkSettings(master="local[2]", app_name="pipeline_defs_tests", conf=(
        ("spark.sql.shuffle.partitions", "2"), ("spark.ui.enabled", "false"),
        ("spark.sql.warehouse.dir", str(warehouse)),
        ("spark.driver.memory", "1g"),
        ("spark.sql.adaptive.coalescePartitions.enabled", "false"),
        # one JVM runs a worker's every in-process test: hundreds of different plans'
        # generated code outgrow the default 240 MB code cache ("Out of space in CodeCache")
        ("spark.driver.extraJavaOptions", "-XX:ReservedCodeCacheSize=512m"))))
    yield s
    s.stop()


@pytest.fixture(scope="session")
def registry():
    from pipeline_defs.steps.registry import builtin_registry
    return builtin_registry()


@pytest.fixture
def ctx(spark):
    """A StepContext factory for calling step functions directly."""
    from pipeline_defs.steps.context import StepContext

    def make(frames=None, method="test.method", read_secret=None, audit=None):
        return StepContext(spark=spark, pipeline="test", step=1, method=method,
                           frames=frames or {}, read_secret=read_secret, audit=audit)
    return make


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory):
    from pipeline_defs.sample_data import generate
    d = tmp_path_factory.mktemp("sample-data")
    generate(d)
    return d


def rows(df, order_by=None):
    """A DataFrame's rows as sorted tuples, for exact comparisons."""
    cols = df.columns
    data = [tuple(r[c] for c in cols) for r in df.collect()]
    return sorted(data, key=lambda t: tuple((x is None, str(type(x)), x) for x in t))


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data, indent=2))
    return path


def background_run(f: Path, tmp_path: Path, vault, timeout: float = 900):
    """`pipeline run f` in a process group of its own, with this test's DAGSTER_HOME, Vault
    and audit log: (process, reader thread, box); box["out"] = (stdout, stderr) once the
    reader has joined."""
    import subprocess
    import sys
    import threading
    env = {**{k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"},
           "SPARK_MASTER": "local[2]", "DAGSTER_HOME": str(tmp_path / "home"),
           "VAULT_ADDR": vault.url, "VAULT_TOKEN": vault.token,
           "PIPELINE_AUDIT_LOG": str(tmp_path / "audit")}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "pipeline"), "run", str(f)],
                            env=env, cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    box: dict = {}
    reader = threading.Thread(target=lambda: box.update(out=proc.communicate(timeout=timeout)))
    reader.start()
    return proc, reader, box


def copy_configs(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(CONFIGS.glob("*.json")) + sorted(CONFIGS.glob("*.sql")):
        if not f.name.endswith(".schema.json"):
            shutil.copy(f, dest / f.name)
    return dest


@pytest.fixture
def counted_reads(spark):
    """(udf, accumulator): a column passed through the udf counts, in the accumulator, how
    often each row is computed, i.e. how many passes read the data."""
    from pyspark.sql import functions as F
    reads = spark.sparkContext.accumulator(0)

    def touch(x):
        reads.add(1)
        return x

    return F.udf(touch, "long").asNondeterministic(), reads


def step_failures(result) -> list[str]:
    """The one-line failure descriptions of a run's failed steps."""
    return [e.event_specific_data.user_failure_data.description
            for e in result.all_events if e.event_type_value == "STEP_FAILURE"]


def run_job(pipeline, resources=None, registry=None, expect_success: bool = True):
    """Runs a loaded pipeline's job in process on an ephemeral instance."""
    import dagster as dg

    from pipeline_defs.definitions import default_resources, definitions_for
    defs = definitions_for([pipeline], resources or default_resources(), registry)
    job = defs.resolve_job_def(pipeline.name.replace("-", "_"))
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                    raise_on_error=False)
    if expect_success:
        assert result.success, step_failures(result)
    return result


def op_of(step_key: str | None) -> str:
    """The op of a step key: steps are nodes of the pipeline's graph, `<graph>.<op>`."""
    return (step_key or "").rsplit(".", 1)[-1]


def streams_outputs(result) -> list[dict]:
    """Each sink's totals (batches, input_rows, ended, ...) from the `streams` op's outputs,
    in step order."""
    out = [e for e in result.all_events
           if e.event_type_value == "STEP_OUTPUT" and op_of(e.step_key) == "streams"]
    return [{k: getattr(v, "value", getattr(v, "text", v))
             for k, v in e.event_specific_data.metadata.items()} for e in out]


def consume_records(bootstrap: str, topic: str, n: int) -> list[tuple[bytes, bytes]]:
    """Up to n records of a topic as (key, value) bytes, read from the start by another
    client than the product's (confluent-kafka); gives up after 120 s of polling."""
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"check-{topic}",
                  "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    out: list[tuple[bytes, bytes]] = []
    try:
        for _ in range(240):
            if len(out) >= n:
                break
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                out.append((m.key(), m.value()))
    finally:
        c.close()
    return out


def checkpoint_batches(checkpoint: Path) -> tuple[int, int]:
    """(latest batch planned, latest batch committed) of a Structured Streaming checkpoint;
    -1 for none. A batch is planned (offsets/N written) when it starts and committed
    (commits/N) when its output is: between the two, it is running."""
    def latest(d: Path) -> int:
        ids = [int(p.name) for p in d.glob("[0-9]*")] if d.is_dir() else []
        return max(ids, default=-1)
    return latest(checkpoint / "offsets"), latest(checkpoint / "commits")


def caught_up(checkpoint: Path, bootstrap: str, topic: str) -> bool:
    """Has the query committed a batch that ends at the topic's current end offsets (every
    record sent so far is read and its output committed; nothing more can come until more
    records are sent)?"""
    from confluent_kafka import Consumer, TopicPartition
    planned, committed = checkpoint_batches(checkpoint)
    if committed < 0 or committed != planned:
        return False
    lines = (checkpoint / "offsets" / str(committed)).read_text().splitlines()
    offsets = {}
    for line in lines[2:]:  # version, metadata, then one line per source
        if line.strip().startswith("{"):
            offsets.update(json.loads(line).get(topic, {}))
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"caught-up-{topic}"})
    try:
        parts = c.list_topics(topic, timeout=30).topics[topic].partitions
        ends = {str(p): c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
                for p in parts}
    finally:
        c.close()
    return bool(ends) and all(int(offsets.get(p, -1)) >= end for p, end in ends.items())
