"""The Kafka broker restarted mid-stream (issue 30, fault 2): the session's real broker stopped
(controlled shutdown) and started again while a Kafka -> Delta stream runs with `pipeline run`,
once under a processing-time trigger and once under availableNow. The query resumes when the
broker is back, or the run fails with one line and the next run resumes from its checkpoint;
either way the Delta table ends with every event exactly once (counted by distinct id and by
distinct (partition, offset), against what the test produced)."""
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
BATCH = 2_000  # events per micro-batch (maxOffsetsPerTrigger)


def test_a_broker_restarted_mid_stream_loses_and_doubles_nothing(kafka, topic, vault,
                                                                  tmp_path, spark):
    t = topic(partitions=3)
    delta, checkpoints = tmp_path / "events", tmp_path / "checkpoints"
    vault.put("secret", "kafka", {"bootstrap.servers": kafka})
    env = {**{k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"},
           "SPARK_MASTER": "local[2]", "DAGSTER_HOME": str(tmp_path / "home"),
           "VAULT_ADDR": vault.url, "VAULT_TOKEN": vault.token,
           "PIPELINE_AUDIT_LOG": str(tmp_path / "audit")}

    def pipeline(trigger: str) -> Path:
        return write_json(tmp_path / f"{trigger.replace(' ', '_')}.json", {
            "name": "restarted-broker", "mode": "streaming",
            "retries": {"maxRetries": 2, "delaySeconds": 2},
            "streaming": {"trigger": trigger, "checkpointRoot": str(checkpoints)},
            "steps": [
                {"type": "extract", "method": "fromKafka", "config": {
                    "topic": t, "credentialPath": "secret/data/kafka",
                    "startingOffsets": "earliest", "maxOffsetsPerTrigger": BATCH,
                    "schema": "id BIGINT, amount INT", "includeMetadata": True}},
                {"type": "load", "method": "toDeltaLake", "config": {
                    "path": str(delta), "mode": "append"}}]})

    def start(f: Path) -> subprocess.Popen:
        return subprocess.Popen([PIPELINE, "run", str(f)], env=env, cwd=REPO, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def checkpoint() -> Path:
        (found,) = checkpoints.glob("*/*/offsets")
        return found.parent

    def after_batches(n: int, proc: subprocess.Popen) -> None:
        """Until n more micro-batches have committed than when called."""
        first = checkpoint_batches(checkpoint())[1] if list(checkpoints.glob("*/*/offsets")) \
            else -1
        deadline = time.time() + 300
        while not list(checkpoints.glob("*/*/offsets")) or \
                checkpoint_batches(checkpoint())[1] < first + n:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.time() < deadline, "no progress"
            time.sleep(0.1)

    def finish(proc: subprocess.Popen, f: Path, stop) -> list[str]:
        """Waits for the run to end (`stop` ends a processing-time one once it is caught up);
        a run the restart failed says so in one line, and the next run takes over."""
        outcomes = []
        deadline = time.time() + 600
        while True:
            while proc.poll() is None and not stop():
                assert time.time() < deadline, "the stream did not catch up"
                time.sleep(0.5)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C, once caught up
            out = proc.communicate(timeout=120)[0]
            assert "Traceback" not in out and "at org.apache" not in out, out[-3000:]
            if proc.returncode in (0, 130):
                return outcomes + ["finished"]
            failed = [ln for ln in out.splitlines() if "FAILED" in ln]
            assert len(failed) == 1 and "fromKafka" in failed[0], out[-3000:]
            outcomes.append("failed with one line, rerun")
            proc = start(f)

    sent = produce(kafka, t, ({"id": i, "amount": i % 97} for i in range(6 * BATCH)),
                   key="id")

    # processing time: restarted after two micro-batches; more events arrive once it is back
    f = pipeline("1 second")
    proc = start(f)
    after_batches(2, proc)
    assert not caught_up(checkpoint(), kafka, t)  # mid-stream
    kafka.restart()
    sent += produce(kafka, t, ({"id": i, "amount": i % 97}
                               for i in range(sent, sent + 3 * BATCH)), key="id")
    first = finish(proc, f, lambda: caught_up(checkpoint(), kafka, t))

    # availableNow: the rest of the backlog in bounded batches, restarted after one
    sent += produce(kafka, t, ({"id": i, "amount": i % 97}
                               for i in range(sent, sent + 6 * BATCH)), key="id")
    f = pipeline("availableNow")
    proc = start(f)
    after_batches(1, proc)
    assert not caught_up(checkpoint(), kafka, t)  # mid-stream
    kafka.restart()
    second = finish(proc, f, lambda: False)
    assert caught_up(checkpoint(), kafka, t)  # availableNow ends only at the topic's end

    df = spark.read.format("delta").load(str(delta))
    stats = df.selectExpr("count(*) AS n", "count(DISTINCT id) AS ids", "min(id) AS lo",
                          "max(id) AS hi", "count(DISTINCT kafka_partition, kafka_offset) AS o"
                          ).first()
    assert (stats.n, stats.ids, stats.lo, stats.hi, stats.o) == (sent, sent, 0, sent - 1, sent), \
        (first, second)
    print("processing time:", first, "availableNow:", second)
