"""`retries`: a step that fails on a transient error (the database dropping connections)
is retried by Dagster with the file's delay and succeeds; data and config errors fail at
once, never retried."""
from __future__ import annotations

import io
import threading
import time
import uuid

import dagster as dg
import pyarrow.parquet as pq

from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.dagster_layer.resources.vault import VaultResource
from pipeline_defs.dagster_layer.runs import step_rows
from pipeline_defs.definitions import default_resources, definitions_for
from pipeline_defs.steps.registry import builtin_registry
from pipeline_defs_tests.conftest import op_of, write_json
from pipeline_defs_tests.servers import FlakyProxy


def _events(result, kind: str) -> list:
    return [e for e in result.all_events if e.event_type_value == kind]


def test_a_transient_failure_is_retried_and_the_run_succeeds(pg, vault, tmp_path):
    pg.sql("CREATE TABLE readings (id int PRIMARY KEY, v numeric(6,2))")
    pg.sql("INSERT INTO readings SELECT g, g / 10.0 FROM generate_series(1, 40) g")
    proxy = FlakyProxy(pg.port)
    vault.put("secret", "pg", {**pg.secret(), "port": proxy.port})
    resources = {**default_resources(),
                 "vault": VaultResource(url=vault.url, token=vault.token,
                                        audit_log=str(tmp_path / "audit.jsonl"))}
    p = load_pipeline(write_json(tmp_path / "r.json", {
        "name": "readings", "retries": {"maxRetries": 2, "delaySeconds": 1},
        "steps": [
            {"type": "extract", "method": "fromPostgres", "name": "readings_in",
             "config": {"table": "readings", "credentialPath": "secret/data/pg"}},
            {"type": "load", "method": "toFile", "name": "readings_out",
             "config": {"path": str(tmp_path / "out"), "format": "parquet"}}]}),
        builtin_registry())
    job = definitions_for([p], resources).resolve_job_def("readings")
    instance, run_id, box = dg.DagsterInstance.ephemeral(), str(uuid.uuid4()), {}
    runner = threading.Thread(target=lambda: box.update(result=job.execute_in_process(
        instance=instance, run_id=run_id, raise_on_error=False)))
    runner.start()
    # the outage lasts until the first attempt has failed and Dagster scheduled a retry
    while runner.is_alive() and not any(
            r.dagster_event and r.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"
            for r in instance.all_logs(run_id)):
        time.sleep(0.2)
    proxy.heal()
    runner.join(300)
    proxy.close()
    result = box["result"]
    assert result.success
    (retry,) = _events(result, "STEP_UP_FOR_RETRY")
    assert op_of(retry.step_key) == "readings_in" and proxy.resets >= 1
    said = [r.user_message for r in instance.all_logs(run_id)
            if r.level == 30 and op_of(r.step_key) == "readings_in"]
    assert len(said) == 1 and said[0].startswith(
        "attempt 1 of step 1 (extract.fromPostgres) failed with a transient error")
    assert "could not be reached" in said[0]
    assert len(_events(result, "STEP_RESTARTED")) == 1
    assert pq.read_table(tmp_path / "out").num_rows == 40


def test_the_delay_and_backoff_of_the_file_space_the_attempts(pg, tmp_path):
    """`retries: {maxRetries: 2, delaySeconds: 1, backoff: exponential}`: Dagster waits 1 s
    before the second attempt and 3 s before the third (its exponential backoff: (2^n - 1)
    x delay), each restart at least that long after the failure; then the run fails with
    the step's one line."""
    proxy = FlakyProxy(pg.port)  # never healed: every attempt meets a reset connection
    p = load_pipeline(write_json(tmp_path / "r.json", {
        "name": "spaced", "retries": {"maxRetries": 2, "delaySeconds": 1,
                                      "backoff": "exponential"},
        "steps": [
            {"type": "extract", "method": "fromPostgres", "name": "readings_in",
             "config": {"table": "readings", "host": "127.0.0.1", "port": proxy.port,
                        "database": pg.database, "username": pg.username,
                        "password": pg.password}},
            {"type": "load", "method": "toFile",
             "config": {"path": str(tmp_path / "out"), "format": "parquet"}}]}),
        builtin_registry())
    instance = dg.DagsterInstance.ephemeral()
    try:
        result = definitions_for([p]).resolve_job_def("spaced").execute_in_process(
            instance=instance, raise_on_error=False)
    finally:
        proxy.close()
    assert not result.success and proxy.resets >= 3
    logs = [r for r in instance.all_logs(result.run_id) if r.dagster_event]
    retries = [r for r in logs if r.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"]
    restarts = [r for r in logs if r.dagster_event.event_type_value == "STEP_RESTARTED"]
    waits = [r.dagster_event.event_specific_data.seconds_to_wait for r in retries]
    assert waits == [1, 3] and len(restarts) == 2
    for retry, restart, wait in zip(retries, restarts, waits, strict=True):
        assert restart.timestamp - retry.timestamp >= wait
    (failure,) = _events(result, "STEP_FAILURE")
    assert failure.event_specific_data.user_failure_data.description.startswith(
        "pipeline 'spaced', step 1 (extract.fromPostgres) failed: ")
    assert not (tmp_path / "out").exists()


def test_data_and_config_errors_are_not_retried(tmp_path):
    """Also when their text holds the digits of an HTTP status (a column `arr_delay_504`, a
    directory `503`): what failed decides, not the words of the message."""
    (tmp_path / "in.csv").write_text("id,v\n1,5\n1,6\n")
    src = {"type": "extract", "method": "fromFile",
           "config": {"path": str(tmp_path / "in.csv"), "format": "csv"}}
    cases = {
        "duplicates": [src, {"type": "validate", "method": "validateUnique",
                             "config": {"columns": ["id"]}}],
        "missing_column": [src, {"type": "transform", "method": "filterRows",
                                 "config": {"condition": "no_such_column > 0"}}],
        "missing_column_504": [src, {"type": "transform", "method": "filterRows",
                                     "config": {"condition": "arr_delay_504 > 503"}}],
        "missing_path_503": [{"type": "extract", "method": "fromFile", "config": {
            "path": str(tmp_path / "503" / "in.csv"), "format": "csv"}}],
    }
    for name, steps in cases.items():
        p = load_pipeline(write_json(tmp_path / f"{name}.json", {
            "name": name, "retries": {"maxRetries": 2, "delaySeconds": 0},
            "steps": [*steps, {"type": "load", "method": "toFile",
                               "config": {"path": str(tmp_path / name)}}]}),
            builtin_registry())
        result = definitions_for([p]).resolve_job_def(name).execute_in_process(
            instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
        assert not result.success, name
        (failure,) = _events(result, "STEP_FAILURE")
        assert failure.event_specific_data.user_failure_data.metadata["transient"].value is False
        assert not _events(result, "STEP_UP_FOR_RETRY"), name
        assert not _events(result, "STEP_RESTARTED"), name


SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


def test_a_retried_write_counts_the_rows_of_the_attempt_that_succeeded(s3, tmp_path, spark):
    """The first attempt's write to S3 fails in its tasks: a proxy in front of the S3 server
    answers the part files' uploads with 503 SlowDown until the retry is scheduled; the
    second attempt succeeds. Spark fills a row count once, also from a failed action (with
    what it had seen by then); the run's counts are those of the attempt that succeeded,
    checked against what pyarrow reads back."""
    from pipeline_defs_tests.faults import HttpFaults
    s3.client.create_bucket(Bucket="retried")
    spark.range(0, 5000, numPartitions=2).selectExpr("id", "id % 7 AS k").write.parquet(
        str(tmp_path / "in"))
    proxy = HttpFaults(int(s3.endpoint.rsplit(":", 1)[1]))
    proxy.answer("PUT", "part-", 503, SLOW_DOWN)
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    for k, v in {"retry.limit": "0", "attempts.maximum": "1", "retry.interval": "10ms",
                 "retry.throttle.limit": "0", "retry.throttle.interval": "10ms"}.items():
        conf.set(f"fs.s3a.bucket.retried.{k}", v)  # the SDK's own retries: none
    secret = s3.secret()
    (tmp_path / "names.csv").write_text("k,name\n" + "".join(f"{k},n{k}\n" for k in range(7)))
    p = load_pipeline(write_json(tmp_path / "w.json", {
        "name": "written", "retries": {"maxRetries": 2, "delaySeconds": 1},
        # every step counted, the Parquet extract too (with native execution only the loads
        # count rows that come from Parquet: docs/acceleration.md)
        "rowCounts": "all", "steps": [
            # counted in its own op; the join with a small table (broadcast) puts that count
            # in the stage that writes, whose failed tasks leave it short
            {"type": "extract", "method": "fromFile", "name": "ids_in",
             "config": {"path": str(tmp_path / "in"), "registerAs": "ids"}},
            {"type": "extract", "method": "fromFile", "name": "names_in",
             "config": {"path": str(tmp_path / "names.csv"), "format": "csv",
                        "schema": "k BIGINT, name STRING", "registerAs": "names"}},
            {"type": "transform", "method": "joinDataFrames", "name": "named",
             "config": {"inputDataFrames": ["ids", "names"], "joinColumn": "k"}},
            {"type": "load", "method": "toFile", "name": "ids_out",
             "config": {"path": "s3a://retried/ids", "format": "parquet",
                        "accessKeyId": secret["accessKeyId"],
                        "secretAccessKey": secret["secretAccessKey"],
                        "endpoint": f"http://127.0.0.1:{proxy.port}"}}]}),
        builtin_registry())
    job = definitions_for([p]).resolve_job_def("written")
    instance, run_id, box = dg.DagsterInstance.ephemeral(), str(uuid.uuid4()), {}
    runner = threading.Thread(target=lambda: box.update(result=job.execute_in_process(
        instance=instance, run_id=run_id, raise_on_error=False)))
    runner.start()
    while runner.is_alive() and not any(
            r.dagster_event and r.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"
            for r in instance.all_logs(run_id)):
        time.sleep(0.2)
    hits = proxy.rules[0].hits
    proxy.lift()
    runner.join(300)
    proxy.close()
    result = box["result"]
    assert result.success and hits >= 1
    (retry,) = _events(result, "STEP_UP_FOR_RETRY")
    assert op_of(retry.step_key) == "ids_out"
    keys = [k for k in s3.keys("retried", "ids/") if k.endswith(".parquet")]
    written = sum(pq.read_table(io.BytesIO(s3.client.get_object(
        Bucket="retried", Key=k)["Body"].read())).num_rows for k in keys)
    counted = {r.op: r.rows for r in step_rows(result.all_events, p)}
    assert written == 5000 and counted == {"ids_in": 5000, "names_in": 7, "named": 5000,
                                           "ids_out": 5000}, counted
