"""Fixtures for the real servers (started by scripts/services.sh, which `make test` runs; a
plain `pytest` starts them too) and the Vault double. Each test gets its own database, user
and password, created here and dropped afterwards."""
from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline_defs_tests.conftest import REPO
from pipeline_defs_tests.vault_double import VaultDouble

PG_PORT = int(os.environ.get("PIPELINE_PG_PORT", "55432"))
MYSQL_PORT = int(os.environ.get("PIPELINE_MYSQL_PORT", "53306"))
S3_PORT = int(os.environ.get("PIPELINE_S3_PORT", "55900"))
S3_ENDPOINT = f"http://127.0.0.1:{S3_PORT}"
SERVICES_DIR = Path(os.environ.get("PIPELINE_SERVICES_DIR", "/tmp/pipeline_defs-services"))
PG_CA = SERVICES_DIR / "postgres-ca.crt"  # the test server's self-signed TLS certificate
PUSHGATEWAY = f"http://127.0.0.1:{os.environ.get('PIPELINE_PUSHGATEWAY_PORT', '29091')}"


def start(script: str) -> None:
    """Runs scripts/<script> up (idempotent: a no-op for what already runs)."""
    r = subprocess.run(["bash", str(REPO / "scripts" / script), "up"], capture_output=True,
                       text=True)
    assert r.returncode == 0, f"scripts/{script} up failed:\n{r.stdout}{r.stderr}"


@pytest.fixture(scope="session")
def services():
    """PostgreSQL, MariaDB and the S3 server."""
    start("services.sh")


@dataclass
class Database:
    dialect: str
    host: str
    port: int
    database: str
    username: str
    password: str
    admin: object = field(repr=False, default=None)

    def secret(self) -> dict:
        """The JDBC secret shape of the original format."""
        return {"host": self.host, "port": self.port, "database": self.database,
                "username": self.username, "password": self.password}

    def sql(self, statement: str, params=None) -> list[tuple]:
        """Runs one statement as the admin; returns its rows (empty for DDL/DML)."""
        with self.admin.cursor() as cur:
            cur.execute(statement, params)
            try:
                return [tuple(r) for r in cur.fetchall()]
            except Exception:  # noqa: BLE001 - statement without a result set
                return []


def _name(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


@pytest.fixture
def pg(services):
    """A fresh PostgreSQL database owned by a fresh user with a random password."""
    import psycopg
    db, user, pw = _name("t"), _name("u"), "pg-" + secrets.token_urlsafe(12)
    with psycopg.connect(host="127.0.0.1", port=PG_PORT, user="postgres", dbname="postgres",
                         autocommit=True) as c:
        c.execute(f"CREATE USER {user} PASSWORD '{pw}' CREATEROLE")
        c.execute(f"CREATE DATABASE {db} OWNER {user}")
    admin = psycopg.connect(host="127.0.0.1", port=PG_PORT, user="postgres", dbname=db,
                            autocommit=True)
    admin.execute(f"ALTER SCHEMA public OWNER TO {user}")
    admin.execute(f"SET ROLE {user}")  # objects the test creates belong to the pipeline's user
    yield Database("postgres", "127.0.0.1", PG_PORT, db, user, pw, admin)
    admin.close()
    with psycopg.connect(host="127.0.0.1", port=PG_PORT, user="postgres", dbname="postgres",
                         autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        c.execute(f"DROP ROLE IF EXISTS reader_{db}")
        c.execute(f"DROP USER IF EXISTS {user}")


@pytest.fixture
def mysql(services):
    """A fresh MariaDB database with a user (and random password) allowed only on it."""
    import pymysql
    db, user, pw = _name("t"), _name("u"), "my-" + secrets.token_urlsafe(12)
    root = pymysql.connect(host="127.0.0.1", port=MYSQL_PORT, user="pipeline_admin",
                           autocommit=True)
    with root.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
        cur.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{pw}'")
        cur.execute(f"GRANT ALL PRIVILEGES ON {db}.* TO '{user}'@'127.0.0.1'")
    admin = pymysql.connect(host="127.0.0.1", port=MYSQL_PORT, user="pipeline_admin",
                            database=db, autocommit=True)
    yield Database("mysql", "127.0.0.1", MYSQL_PORT, db, user, pw, admin)
    admin.close()
    with root.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {db}")
        cur.execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
    root.close()


@dataclass
class S3:
    endpoint: str
    client: object

    def secret(self) -> dict:
        """The IAM secret shape, plus the endpoint of this S3-compatible server."""
        return {"accessKeyId": "AKIA" + secrets.token_hex(8).upper(),
                "secretAccessKey": "s3-" + secrets.token_urlsafe(24),
                "region": "us-east-1", "endpoint": self.endpoint}

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                           Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out


@pytest.fixture
def s3(services):
    """moto's S3 server, emptied before each test."""
    import boto3
    import requests
    requests.post(f"{S3_ENDPOINT}/moto-api/reset", timeout=10)
    client = boto3.client("s3", endpoint_url=S3_ENDPOINT, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    return S3(S3_ENDPOINT, client)


@pytest.fixture
def pushgateway(services):
    """The Prometheus Pushgateway of scripts/services.sh."""
    return PUSHGATEWAY


@pytest.fixture
def vault():
    v = VaultDouble().start()
    yield v
    v.stop()


@pytest.fixture
def vault_resource(vault, tmp_path):
    from pipeline_defs.resources.vault import VaultResource
    return VaultResource(url=vault.url, token=vault.root_token,
                         audit_log=str(tmp_path / "audit.jsonl"), backoff_s=0.05)


KAFKA_PORT = int(os.environ.get("PIPELINE_KAFKA_PORT", "29092"))
KAFKA = f"127.0.0.1:{KAFKA_PORT}"
# scripts/kafka.sh's SASL_PLAINTEXT listener (mechanism PLAIN) and its development user
KAFKA_SASL = f"127.0.0.1:{KAFKA_PORT + 2}"
KAFKA_SASL_USER = ("etl", "etl-dev-secret")


@pytest.fixture(scope="session")
def kafka():
    """The KRaft broker of scripts/kafka.sh."""
    start("kafka.sh")
    return KAFKA


@dataclass
class Hdfs:
    uri: str  # hdfs://127.0.0.1:<rpc port>
    web: str  # http://127.0.0.1:<NameNode web port> (WebHDFS)

    def put(self, path: str, data: bytes) -> None:
        """Writes a file the way WebHDFS clients do: CREATE at the NameNode, which redirects
        to the DataNode that takes the bytes."""
        import urllib.request
        url = f"{self.web}/webhdfs/v1/{path.strip('/')}?op=CREATE&overwrite=true"
        first = urllib.request.Request(url, method="PUT")
        try:
            urllib.request.urlopen(first, timeout=30)
            raise AssertionError("the NameNode did not redirect the CREATE")
        except urllib.error.HTTPError as e:
            assert e.code == 307, e.read()
            location = e.headers["Location"]
        urllib.request.urlopen(urllib.request.Request(location, data=data, method="PUT"),
                               timeout=30).read()


@pytest.fixture(scope="session")
def hdfs(tmp_path_factory):
    """A real HDFS (MiniDFSCluster: NameNode + DataNode, one JVM) from .cache/hdfs-jars."""
    import time
    jars = REPO / ".cache" / "hdfs-jars"
    assert jars.is_dir(), "run make setup first (it resolves jvm/hdfs/pom.xml)"
    data = tmp_path_factory.mktemp("hdfs")
    log = open(data / "hdfs.log", "w+")
    proc = subprocess.Popen(
        ["java", "-Xmx384m", "-Dlog4j2.level=WARN", "-cp", f"{jars}/*",
         str(REPO / "pipeline_defs_tests" / "MiniHdfs.java"), str(data / "cluster")],
        stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
    deadline, line = time.time() + 180, ""
    while time.time() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        if line.startswith("hdfs "):
            break
    if not line.startswith("hdfs "):
        proc.kill()
        log.seek(0)
        pytest.fail(f"HDFS did not start: {log.read()[-3000:]}")
    _, uri, web = line.split()
    yield Hdfs(uri, web)
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture
def topic(kafka):
    """A fresh topic (3 partitions), created with the admin client; a factory for more."""
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": kafka})

    def make(partitions: int = 3) -> str:
        name = _name("topic")
        for f in admin.create_topics([NewTopic(name, partitions, 1)]).values():
            f.result(timeout=30)
        return name
    make.default = make()
    return make


def produce(bootstrap: str, topic: str, records, key=None) -> int:
    """Sends dicts as JSON values (key from the field `key` names); returns how many."""
    import json as _json

    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all",
                  "enable.idempotence": True, "queue.buffering.max.messages": 500_000})
    n = 0
    for r in records:
        value, k = _json.dumps(r).encode(), str(r[key]).encode() if key else None
        while True:
            try:
                p.produce(topic, value, key=k)
                break
            except BufferError:  # the local queue is full: let the broker catch up
                p.poll(0.5)
        n += 1
        if n % 10000 == 0:
            p.poll(0)
    assert p.flush(60) == 0
    return n


class FlakyProxy:
    """A TCP proxy on loopback in front of a real server that resets every connection until
    `heal()` is called, then forwards: a network outage a retry can outlast."""

    def __init__(self, target_port: int):
        import socket
        import threading
        self.target_port, self.resets = target_port, 0
        self._healed, self._stop = threading.Event(), threading.Event()
        self._srv = socket.create_server(("127.0.0.1", 0))
        self._srv.settimeout(0.2)
        self.port = self._srv.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def heal(self) -> None:
        self._healed.set()

    def close(self) -> None:
        self._stop.set()
        self._srv.close()

    def _serve(self) -> None:
        import socket
        import struct
        import threading
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except (TimeoutError, OSError):
                continue
            if not self._healed.is_set():
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()  # RST: "connection reset"
                self.resets += 1
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


def _pipe(src, dst) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(2)
            except OSError:
                pass
