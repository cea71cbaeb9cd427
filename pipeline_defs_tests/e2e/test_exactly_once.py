"""Exactly once, proven the hard way: 120,000 keyed events, a Kafka -> filter/enrich -> Delta
pipeline run with `pipeline run`, the whole process group SIGKILLed twice mid-stream (Dagster,
the Spark JVM, its Python workers), restarted each time; the Delta table ends up holding every
expected key exactly once. Also: a second run of a streaming pipeline is refused while one is
live, but a killed run's leftover record does not block the restart."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline_defs_tests.conftest import REPO, caught_up, checkpoint_batches, write_json
from pipeline_defs_tests.servers import produce

PIPELINE = str(Path(sys.executable).parent / "pipeline")
N = 120_000


def test_sigkill_twice_mid_stream_then_every_key_exactly_once(kafka, topic, vault, tmp_path,
                                                              spark):
    t = topic(partitions=3)
    produce(kafka, t, ({"id": i, "kind": "test" if i % 10 == 0 else "order",
                        "amount": i % 1000} for i in range(N)), key="id")
    expected = N - N // 10  # kind = 'test' is filtered out
    delta = tmp_path / "orders"
    vault.put("secret", "kafka", {"bootstrap.servers": kafka})
    f = write_json(tmp_path / "eo.json", {
        "name": "exactly-once", "mode": "streaming",
        "streaming": {"trigger": "1 second", "checkpointRoot": str(tmp_path / "checkpoints"),
                      "progressIntervalS": 2},
        "steps": [
            {"type": "extract", "method": "fromKafka", "config": {
                "topic": t, "credentialPath": "secret/data/kafka",
                "startingOffsets": "earliest", "maxOffsetsPerTrigger": 9000,
                "schema": "id BIGINT, kind STRING, amount INT", "includeMetadata": True}},
            {"type": "transform", "method": "filterRows", "config": {"condition":
                                                                     "kind <> 'test'"}},
            {"type": "transform", "method": "enrichData", "config": {"columns": {
                "amount_cents": "amount * 100", "loaded_at": "current_timestamp()"}}},
            {"type": "load", "method": "toDeltaLake", "config": {
                "path": str(delta), "mode": "append"}}]})
    home = tmp_path / "home"
    home.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"},
           "SPARK_MASTER": "local[2]", "DAGSTER_HOME": str(home), "VAULT_ADDR": vault.url,
           "VAULT_TOKEN": vault.token, "PIPELINE_AUDIT_LOG": str(tmp_path / "audit")}

    def start():
        return subprocess.Popen([PIPELINE, "run", str(f)], env=env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)

    def versions() -> int:
        log = delta / "_delta_log"
        return len(list(log.glob("*.json"))) if log.exists() else 0

    def wait_versions(n: int, proc) -> None:
        deadline = time.time() + 300
        while versions() < n:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() < deadline, "no progress"
            time.sleep(0.2)

    def checkpoint() -> Path:
        found = list((tmp_path / "checkpoints").glob("*/*/offsets"))
        return found[0].parent if found else tmp_path / "checkpoints" / "none"

    def wait_mid_batch(proc) -> None:
        """Until a micro-batch has started (its offsets written) and not yet committed."""
        deadline = time.time() + 300
        while True:
            planned, committed = checkpoint_batches(checkpoint())
            if planned > committed:
                return
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() < deadline, "no micro-batch started"
            time.sleep(0.02)

    for kill in (1, 2):
        proc = start()
        wait_versions(versions() + 2, proc)  # two more micro-batches committed, then kill
        wait_mid_batch(proc)  # inside a batch, not between two
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        count = spark.read.format("delta").load(str(delta)).count()
        assert 0 < count < expected, f"kill {kill} did not land mid-stream ({count} rows)"

    proc = start()
    # while it runs, a second run of the same streaming pipeline is refused
    wait_versions(versions() + 1, proc)
    second = subprocess.run([PIPELINE, "run", str(f)], env=env, cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 1
    assert "at most one run of a streaming pipeline runs at a time" in second.stdout
    deadline = time.time() + 600
    while spark.read.format("delta").load(str(delta)).count() < expected:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(1)
    # a committed batch ends at the topic's end: nothing more can come, a replayed batch
    # would already be in the table
    while not caught_up(checkpoint(), kafka, t):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, as a terminal sends it
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130 and "Traceback" not in out, out[-3000:]

    df = spark.read.format("delta").load(str(delta))
    stats = df.selectExpr("count(*) AS n", "count(DISTINCT id) AS ids",
                          "count(DISTINCT kafka_partition, kafka_offset) AS offsets",
                          "sum(CASE WHEN kind = 'test' THEN 1 ELSE 0 END) AS tests").first()
    assert (stats.n, stats.ids, stats.offsets, stats.tests) == (expected, expected, expected, 0)
    assert df.filter("amount_cents <> amount * 100").count() == 0
