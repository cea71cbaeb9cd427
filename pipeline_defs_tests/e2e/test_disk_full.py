"""The disk fills up during a Delta write (issue 30, fault 5): the table lives on a 16 MiB
filesystem made for the test (a tmpfs), an append of ~60 MB of incompressible rows runs out of
space mid-write. The run fails with one line (not retried, though the file asks for retries:
a retry cannot cure a full disk) naming the table's path and the cause; the table's
last version stays intact and readable (its rows, its log holding no new commit), and once
space is freed the same append succeeds."""
from __future__ import annotations

import os
import subprocess
import uuid

import dagster as dg
import pytest

from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.definitions import definitions_for
from pipeline_defs.steps.registry import builtin_registry
from pipeline_defs_tests.conftest import write_json

ROWS = 450_000  # x 128 hex characters, unique: ~60 MB of Parquet


@pytest.fixture
def small_fs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("making a small filesystem (mount -t tmpfs) needs root")
    d = tmp_path / "small"
    d.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(d)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {made.stderr.strip()}")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def test_a_full_disk_fails_one_line_and_keeps_the_last_version(small_fs, tmp_path, spark):
    table = small_fs / "events"
    spark.range(0, 1000).selectExpr("id", "sha2(concat('old-', id), 512) AS payload").write \
        .format("delta").save(str(table))
    source = tmp_path / "source"
    spark.range(0, ROWS, numPartitions=4).selectExpr(
        "id", "sha2(cast(id AS STRING), 512) AS payload").write.parquet(str(source))
    p = load_pipeline(write_json(tmp_path / "append.json", {
        "name": "full", "retries": {"maxRetries": 2, "delaySeconds": 1}, "steps": [
        {"type": "extract", "method": "fromFile", "name": "events_in",
         "config": {"path": str(source)}},
        {"type": "load", "method": "toDeltaLake", "name": "events_out",
         "config": {"path": str(table), "mode": "append"}}]}), builtin_registry())
    job = definitions_for([p]).resolve_job_def("full")

    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                    run_id=str(uuid.uuid4()), raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message.strip()
    assert "\n" not in message and "\tat " not in message, message
    assert "pipeline 'full', step 2 (load.toDeltaLake) failed:" in message, message
    assert str(table) in message and "No space left on device" in message, message
    # a retry cannot cure a full disk: the file's retries are not spent on it
    assert failure.step_failure_data.user_failure_data.metadata["transient"].value is False
    assert "STEP_UP_FOR_RETRY" not in [e.event_type_value for e in result.all_events]

    # the last version, as a reader sees it: Delta's own log and the rows of version 0
    log = sorted(f.name for f in (table / "_delta_log").glob("*.json"))
    assert log == ["00000000000000000000.json"], log
    spark.catalog.clearCache()
    row = spark.read.format("delta").load(str(table)).selectExpr(
        "count(*) AS n", "sum(id) AS s").first()
    assert (row.n, row.s) == (1000, 999 * 1000 // 2)

    # space freed (the orphaned part files of the failed write removed), the append succeeds
    for f in table.glob("part-*.parquet"):
        if f.stat().st_mtime > (table / "_delta_log" / log[0]).stat().st_mtime:
            f.unlink()
    subprocess.run(["mount", "-o", "remount,size=256m", str(small_fs)], check=True)
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                    run_id=str(uuid.uuid4()), raise_on_error=False)
    assert result.success
    row = spark.read.format("delta").load(str(table)).selectExpr(
        "count(*) AS n", "sum(id) AS s").first()
    assert (row.n, row.s) == (1000 + ROWS, 999 * 1000 // 2 + ROWS * (ROWS - 1) // 2)
