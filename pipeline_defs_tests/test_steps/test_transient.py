"""What a retry may cure is decided by what failed (exception types, SQLSTATEs, HTTP statuses
read from responses), never by digits or words in a message. Each error here is a real one,
raised by Spark, a JDBC driver, an HTTP client or Kafka's client against a real (or a
deliberately failing) server on loopback."""
from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.request

import pytest
from pyspark.errors import PySparkException

from pipeline_defs.common.errors import CredentialError
from pipeline_defs.steps.errors import StepDataError, transient
from pipeline_defs.steps.validate import ValidationFailed
from pipeline_defs_tests.owned import RefusedPort


@pytest.fixture
def closed_port():
    """A loopback port nothing listens on, held by this test (bound, never listening):
    connections are refused, and no other process can take it meanwhile."""
    with RefusedPort() as port:
        yield port


def _raised(fn) -> BaseException:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - the error is the subject
        return e
    raise AssertionError("it did not fail")


def test_data_errors_with_digits_in_their_text_are_not_transient(spark, tmp_path):
    df = spark.createDataFrame([(1,)], "arr_delay INT")
    missing_column = _raised(lambda: df.filter("arr_delay_504 > 503").collect())
    missing_path = _raised(lambda: spark.read.parquet(str(tmp_path / "503" / "x")).count())
    for e in (missing_column, missing_path):
        assert "503" in str(e) and isinstance(e, PySparkException)
        assert transient(e) is False, str(e)[:300]


def test_a_division_by_zero_in_ansi_mode_is_a_data_error(spark):
    e = _raised(lambda: spark.sql("SELECT 1 / 0 AS x").collect())
    assert e.getSqlState().startswith("22") and transient(e) is False


def test_a_refused_jdbc_connection_is_transient(spark, closed_port):
    url = f"jdbc:postgresql://127.0.0.1:{closed_port}/db"
    e = _raised(lambda: spark.read.format("jdbc").options(
        url=url, dbtable="t", user="u", password="p", driver="org.postgresql.Driver",
        connectTimeout="2").load())
    assert transient(e) is True


def test_database_refusals_are_not_transient(spark, pg):
    """A wrong password (28P01) and a missing table (42P01) come back from a real server."""
    opts = dict(url=f"jdbc:postgresql://127.0.0.1:{pg.port}/{pg.database}", dbtable="t",
                driver="org.postgresql.Driver", user=pg.username)
    wrong_password = _raised(lambda: spark.read.format("jdbc").options(
        **opts, password="not-it").load())
    missing_table = _raised(lambda: spark.read.format("jdbc").options(
        **opts, dbtable="no_such_table_503", password=pg.password).load())
    assert transient(wrong_password) is False
    assert transient(missing_table) is False


class _Answer(http.server.BaseHTTPRequestHandler):
    status, body = 503, b""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.send_response(self.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_HEAD = do_PUT = do_GET  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture
def answering():
    """An HTTP server on loopback answering every request with the given status and body."""
    servers = []

    def start(status: int, body: bytes = b"") -> str:
        handler = type("H", (_Answer,), {"status": status, "body": body})
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"
    yield start
    for s in servers:
        s.shutdown()


def test_http_statuses_are_read_from_the_response(answering, closed_port):
    import requests
    busy, missing = answering(503), answering(404, b"<Error>503 times not found</Error>")
    e503 = _raised(lambda: urllib.request.urlopen(busy, timeout=10))
    e404 = _raised(lambda: urllib.request.urlopen(missing, timeout=10))
    assert isinstance(e503, urllib.error.HTTPError) and transient(e503) is True
    assert transient(e404) is False  # "503" in the body is no status
    r503 = _raised(lambda: requests.get(busy, timeout=10).raise_for_status())
    assert transient(r503) is True
    refused = _raised(lambda: requests.get(f"http://127.0.0.1:{closed_port}", timeout=10))
    assert transient(refused) is True


SLOW_DOWN = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
             b"<Message>Please reduce your request rate.</Message></Error>")


def test_s3_throttling_is_transient_for_boto3_and_for_spark(answering, spark):
    import boto3
    from botocore.config import Config
    endpoint = answering(503, SLOW_DOWN)
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k",
                          aws_secret_access_key="s", region_name="us-east-1",
                          config=Config(retries={"max_attempts": 1, "mode": "standard"}))
    e = _raised(lambda: client.get_object(Bucket="b", Key="k"))
    assert transient(e) is True
    # Spark's s3a reading the same server: Hadoop's AWSServiceThrottledException, its SDK's
    # 503 under it (a bucket of its own, so that its few retries are its own settings)
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    for k, v in {"endpoint": endpoint, "access.key": "k", "secret.key": "s",
                 "path.style.access": "true", "connection.ssl.enabled": "false",
                 "retry.throttle.limit": "1", "retry.throttle.interval": "10ms",
                 "retry.limit": "1", "attempts.maximum": "1", "endpoint.region": "us-east-1"
                 }.items():
        conf.set(f"fs.s3a.bucket.throttled.{k}", v)
    e = _raised(lambda: spark.read.parquet("s3a://throttled/t").count())
    assert transient(e) is True, str(e)[:500]


def test_an_unreachable_kafka_broker_is_transient(spark, closed_port):
    e = _raised(lambda: spark.read.format("kafka").options(**{
        "kafka.bootstrap.servers": f"127.0.0.1:{closed_port}", "subscribe": "t",
        "kafka.default.api.timeout.ms": "3000", "kafka.request.timeout.ms": "2000"
    }).load().count())
    assert transient(e) is True, str(e)[:500]


def test_python_errors_and_the_product_s_own():
    assert transient(ConnectionRefusedError(111, "Connection refused")) is True
    assert transient(TimeoutError("timed out")) is True
    assert transient(StepDataError("column 'x_503' is missing: 503")) is False
    assert transient(ValidationFailed("rule[0]: 503 of 1000 rows violate `x < 503`")) is False
    assert transient(CredentialError("Vault is unavailable").retriable()) is True
    assert transient(ValueError("connection refused")) is False  # words decide nothing
    # a data error anywhere in the chain vetoes: a retry never cures it
    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError as inner:
            raise StepDataError("bad rows") from inner
    except StepDataError as e:
        assert transient(e) is False
