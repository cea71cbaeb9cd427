"""The S3 server dies during a write (issue 30, fault 4). The session's S3 server (moto) keeps
its objects in memory, so a real kill would also erase the evidence; instead the fault proxy in
front of it dies the moment the first part file is uploaded: that upload and every request in
flight are cut, new connections refused, as when the server is killed, while what the server
had stored stays for the test to read. A Delta append and a Parquet write to a new path: the
run (its one retry too, the server still down) fails with one line naming the step and the
cause, a reader sees the table's last version (Delta) or no
dataset (Parquet), and once the server is back the next run writes exactly the source's rows."""
from __future__ import annotations

import io
import uuid

import dagster as dg
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.definitions import definitions_for
from pipeline_defs.steps.registry import builtin_registry
from pipeline_defs_tests.conftest import write_json
from pipeline_defs_tests.faults import HttpFaults

ROWS = 200_000


@pytest.mark.parametrize("fmt", ["delta", "parquet"])
def test_s3_dying_mid_write_shows_nothing_half_written_and_the_next_run_succeeds(
        s3, tmp_path, spark, fmt):
    bucket = f"dies-{fmt}"
    s3.client.create_bucket(Bucket=bucket)
    proxy = HttpFaults(int(s3.endpoint.rsplit(":", 1)[1]))
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    for k, v in {"retry.limit": "1", "attempts.maximum": "1", "retry.interval": "10ms",
                 "connection.establish.timeout": "2s", "connection.timeout": "5s"}.items():
        conf.set(f"fs.s3a.bucket.{bucket}.{k}", v)  # fail in seconds, not minutes
    source = tmp_path / "source"
    spark.range(0, ROWS, numPartitions=4).selectExpr(
        "id", "concat('event-', id) AS name", "id % 13 AS kind").write.parquet(str(source))
    secret = s3.secret()
    target = f"s3a://{bucket}/events"
    creds = {"accessKeyId": secret["accessKeyId"], "secretAccessKey": secret["secretAccessKey"],
             "endpoint": f"http://127.0.0.1:{proxy.port}"}

    def job(src, mode: str):
        load = ({"type": "load", "method": "toDeltaLake", "name": "events_out",
                 "config": {"path": target, "mode": mode, **creds}} if fmt == "delta" else
                {"type": "load", "method": "toFile", "name": "events_out",
                 "config": {"path": target, "format": "parquet", **creds}})
        p = load_pipeline(write_json(tmp_path / "w.json", {
            "name": "dies", "retries": {"maxRetries": 1, "delaySeconds": 1}, "steps": [
            {"type": "extract", "method": "fromFile", "name": "events_in",
             "config": {"path": str(src)}}, load]}), builtin_registry())
        return definitions_for([p]).resolve_job_def("dies")

    if fmt == "delta":  # the table's version 0: the rows a reader must keep seeing
        spark.range(0, 1000).selectExpr("id", "concat('old-', id) AS name",
                                        "id % 13 AS kind").write.parquet(str(tmp_path / "v0"))
        assert job(tmp_path / "v0", "overwrite").execute_in_process(
            instance=dg.DagsterInstance.ephemeral()).success
    job = job(source, "append")

    proxy.die_on("PUT", "part-", after=1)  # a part file stored, then the server dies
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                    run_id=str(uuid.uuid4()), raise_on_error=False)
    assert proxy.dead and not result.success
    # the file's one retry came while the server was still down: it failed too
    assert [e.event_type_value for e in result.all_events].count("STEP_UP_FOR_RETRY") == 1
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    # the line `pipeline run` prints (after the retries, Dagster's own error says only
    # "Exceeded max_retries", the step's description is kept)
    message = failure.step_failure_data.user_failure_data.description.strip()
    assert "\n" not in message and "at org.apache" not in message, message
    load_kind = "toDeltaLake" if fmt == "delta" else "toFile"
    assert f"pipeline 'dies', step 2 (load.{load_kind}) failed:" in message, message
    assert secret["secretAccessKey"] not in message
    assert "Connection refused" in message or "Connection reset" in message, message  # why

    proxy.revive()
    if fmt == "delta":
        logs = [k for k in s3.keys(bucket, "events/_delta_log/") if k.endswith(".json")]
        assert logs == ["events/_delta_log/00000000000000000000.json"]  # no new commit
        assert _read(s3, bucket, fmt) == (1000, 999 * 1000 // 2)
        # the dead write's part files are there, outside the log: a reader never sees them
        committed = {k for k in s3.keys(bucket, "events/") if k.endswith(".parquet")}
        assert len(committed) > len(_live(s3, bucket)), committed
    else:
        keys = s3.keys(bucket, "events/")
        assert [k for k in keys if "/_" not in k] == [], keys  # nothing outside _temporary
        assert any("/_temporary/" in k and "part-" in k for k in keys), keys  # left there

    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                    run_id=str(uuid.uuid4()), raise_on_error=False)
    assert result.success
    expected = (ROWS, ROWS * (ROWS - 1) // 2)
    if fmt == "delta":
        expected = (ROWS + 1000, expected[1] + 999 * 1000 // 2)
    assert _read(s3, bucket, fmt) == expected
    proxy.close()


def _live(s3, bucket: str) -> list[str]:
    """The keys of the files a Delta table's log adds and does not remove."""
    import json
    live: set[str] = set()
    for key in sorted(k for k in s3.keys(bucket, "events/_delta_log/") if k.endswith(".json")):
        body = s3.client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        for action in map(json.loads, body.splitlines()):
            if "add" in action:
                live.add(action["add"]["path"])
            elif "remove" in action:
                live.discard(action["remove"]["path"])
    return [f"events/{p}" for p in live]


def _read(s3, bucket: str, fmt: str) -> tuple[int, int]:
    """(rows, sum of id) as an independent reader sees the dataset: boto3 lists and fetches,
    pyarrow reads; for Delta the files its log makes live."""
    keys = _live(s3, bucket) if fmt == "delta" else [
        k for k in s3.keys(bucket, "events/") if k.endswith(".parquet") and "/_" not in k]
    tables = [pq.read_table(io.BytesIO(s3.client.get_object(Bucket=bucket, Key=k)[
        "Body"].read())) for k in keys]
    return sum(t.num_rows for t in tables), sum(int(pc.sum(t["id"]).as_py() or 0)
                                                 for t in tables)
