"""Streaming pipelines as users run them (`pipeline run`), against the KRaft broker:
the original streaming-kafka example (Kafka -> filter -> enrich -> Delta on S3), stopped by a
signal (the way a terminated run or a supervisor stops it), then resumed from its checkpoint
with the events that arrived meanwhile; each event lands exactly once."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_defs_tests.conftest import COMPAT, REPO, caught_up, write_json
from pipeline_defs_tests.servers import produce

PIPELINE = str(Path(sys.executable).parent / "pipeline")


def events(start: int, n: int) -> list[dict]:
    return [{"id": i, "event_type": ["view", "purchase"][i % 2], "amount": float(i % 700),
             "timestamp": 1_750_000_000 + i} for i in range(start, start + n)]


def expected_ids(evts) -> list[int]:
    return sorted(e["id"] for e in evts if e["event_type"] == "purchase" and e["amount"] > 100)


@pytest.fixture
def example(kafka, topic, s3, vault, tmp_path, spark):
    raw = json.loads((COMPAT / "streaming-kafka.json").read_text())
    # hosts and paths rewritten, keys not: the topic name is the example's own
    t = "user-events"
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": kafka})
    admin.delete_topics([t])
    deadline = time.time() + 60
    while True:  # the deletion is done when the broker no longer lists it and takes a create
        if t not in admin.list_topics(timeout=10).topics:
            try:
                admin.create_topics([NewTopic(t, 2, 1)])[t].result(timeout=30)
                break
            except KafkaException as e:  # still being deleted
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS or time.time() > deadline:
                    raise
        time.sleep(0.2)
    checkpoint = tmp_path / "checkpoints" / "purchases"
    raw["steps"][-1]["config"]["checkpointLocation"] = str(checkpoint)
    f = write_json(tmp_path / "streaming-kafka.json", raw)
    vault.put("secret", "kafka", {"bootstrap.servers": kafka})
    secret = s3.secret()
    vault.put("secret", "s3", secret)
    s3.client.create_bucket(Bucket="data-lake")
    hconf = spark.sparkContext._jsc.hadoopConfiguration()
    for k, v in {"access.key": secret["accessKeyId"], "secret.key": secret["secretAccessKey"],
                 "endpoint": secret["endpoint"], "path.style.access": "true",
                 "endpoint.region": "us-east-1"}.items():
        hconf.set(f"fs.s3a.bucket.data-lake.{k}", v)
    home = tmp_path / "home"
    home.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"},
           "SPARK_MASTER": "local[2]", "DAGSTER_HOME": str(home), "VAULT_ADDR": vault.url,
           "VAULT_TOKEN": vault.token, "PIPELINE_AUDIT_LOG": str(tmp_path / "audit")}
    return type("Example", (), dict(file=f, env=env, topic=t, checkpoint=checkpoint,
                                    kafka=kafka, spark=spark, home=home))


def _start(ex) -> subprocess.Popen:
    return subprocess.Popen([PIPELINE, "run", str(ex.file)], env=ex.env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait(cond, proc, timeout=300, what=""):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early waiting for {what}:\n"
                                 + proc.stdout.read()[-4000:])
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    lines = [ln for ln in out.splitlines() if "stream " in ln or "started" in ln]
    raise AssertionError(f"timed out waiting for {what}; progress lines:\n" +
                         "\n".join(lines[-30:]) + "\n...\n" + out[-3000:])


def _ids(ex) -> list[int]:
    from delta.tables import DeltaTable
    path = "s3a://data-lake/delta/high_value_purchases"
    try:
        if not DeltaTable.isDeltaTable(ex.spark, path):
            return []
    except Exception:  # noqa: BLE001 - the bucket or first commit is not there yet
        return []
    return sorted(r.id for r in ex.spark.read.format("delta").load(path).select("id").collect())


def _stop(proc) -> tuple[float, str]:
    """Ctrl-C as a terminal sends it, to the whole process group: the queries stop between
    two micro-batches and the run ends CANCELED, with one line and no traceback."""
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert " CANCELED after " in last and "SIGINT received" in last and \
        "its streaming queries were stopped between two micro-batches" in last, last
    return time.time() - t0, out


def test_streaming_example_stops_gracefully_and_resumes_exactly_once(example):
    ex = example
    # history before the run: it gives fromKafka the JSON schema (the example has none), and
    # is not read, since the example starts at the latest offsets
    produce(ex.kafka, ex.topic, events(900_001, 200), key="id")
    proc = _start(ex)
    # batch 0 committed: the query has resolved its starting offsets and runs
    _wait(lambda: (ex.checkpoint / "commits" / "0").exists(), proc, what="the first batch")
    first = events(1, 3000)
    produce(ex.kafka, ex.topic, first, key="id")
    _wait(lambda: _ids(ex) == expected_ids(first), proc, what="the first events in Delta")
    _, out = _stop(proc)  # ends, or communicate() times out
    assert "started streaming query" in out and "stream streaming_kafka_pipeline" in out
    assert "queries were stopped between two micro-batches" in out

    # while stopped, more events arrive; the next run resumes from the checkpoint
    second = events(3001, 3000)
    produce(ex.kafka, ex.topic, second, key="id")
    proc = _start(ex)
    _wait(lambda: len(_ids(ex)) >= len(expected_ids(first + second)), proc,
          what="the events sent while stopped")
    # the query has committed a batch ending at the topic's end: nothing more can come, so a
    # replayed batch would already show as a duplicate
    _wait(lambda: caught_up(ex.checkpoint, ex.kafka, ex.topic), proc,
          what="the query to commit the topic's last offsets")
    _stop(proc)
    assert _ids(ex) == expected_ids(first + second)
    rows = ex.spark.read.format("delta").load("s3a://data-lake/delta/high_value_purchases")
    r = rows.filter("id = 1001").collect()[0]
    import datetime as dt
    assert (r.high_value, str(r.event_timestamp)) == (
        1001 % 700 >= 500, dt.datetime.fromtimestamp(1_750_000_000 + 1001, dt.UTC)
        .strftime("%Y-%m-%d %H:%M:%S"))
