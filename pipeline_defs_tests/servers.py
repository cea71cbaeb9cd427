"""Fixtures for the real servers. The test session owns each one it uses (owned.py): it
starts it as its own child, in a directory of its own, on a port proven to be held by that
process, and stops it at the end; it never adopts a server that happens to answer on a port.
The databases (PostgreSQL, MariaDB) are in databases.py. S3 is emptied before each test (the
session's own server); each test that pushes metrics gets a Pushgateway of its own."""
from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline_defs_tests.conftest import REPO
from pipeline_defs_tests.owned import (
    Owned,
    remove,
    session_dir,
    start_on_port,
    start_on_port_zero,
    wait_for,
)

BIN = Path(sys.executable).parent


def _name(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def _installed(command: str, package: str) -> str:
    found = shutil.which(command) or (command if Path(command).exists() else None)
    if not found:
        pytest.fail(f"{command} is missing: `make test` installs it (scripts/services.sh "
                    f"install: Debian's {package})")
    return found


def _chown(path: Path, user: str) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, user, user)


# ---------------------------------------------------------------- S3 (moto)
@pytest.fixture(scope="session")
def s3_server():
    """This session's S3 server (moto), on a port the kernel chose."""
    root = session_dir("moto")
    owned = Owned("moto", root)
    (port,) = start_on_port_zero("moto's S3 server", owned, lambda: owned.popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", "0"]))
    yield f"http://127.0.0.1:{port}"
    owned.stop()
    remove(root)


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
def s3(s3_server):
    """The session's S3 server, emptied before each test (it is this session's alone)."""
    import boto3
    import requests
    requests.post(f"{s3_server}/moto-api/reset", timeout=10)
    client = boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    return S3(s3_server, client)


@pytest.fixture
def pushgateway(tmp_path):
    """A Prometheus Pushgateway of this test's own (a fresh one holds no other test's groups),
    on a port the kernel chose."""
    exe = _installed("prometheus-pushgateway", "prometheus-pushgateway")
    owned = Owned("pushgateway", tmp_path)
    (port,) = start_on_port_zero("the Pushgateway", owned, lambda: owned.popen(
        [exe, "--web.listen-address=127.0.0.1:0"]))
    yield f"http://127.0.0.1:{port}"
    owned.stop()


@pytest.fixture(scope="session")
def openbao():
    """This session's Vault-API server: OpenBao in dev mode (in memory) on loopback."""
    from pipeline_defs_tests.openbao import OpenBao
    root = session_dir("openbao")
    server = OpenBao(root).start()
    yield server
    server.stop()
    remove(root)


@pytest.fixture
def vault(openbao):
    """The session's OpenBao behind this test's own fault proxy, with a token of its own
    (pipeline_defs_tests/openbao.py: Vault)."""
    from pipeline_defs_tests.openbao import Vault
    v = Vault(openbao)
    yield v
    v.close()


@pytest.fixture
def vault_resource(vault, tmp_path):
    from pipeline_defs.dagster_layer.resources.vault import VaultResource
    return VaultResource(url=vault.url, token=vault.token,
                         audit_log=str(tmp_path / "audit.jsonl"), backoff_s=0.05)


class Broker(str):
    """The bootstrap address of the session's Kafka broker (its PLAINTEXT listener); `.sasl`:
    its SASL_PLAINTEXT listener (mechanism PLAIN), `.sasl_user`: a user there; `restart()`
    stops it (controlled shutdown) and starts it again on its ports, with its data."""
    sasl: str
    restart: Callable[[], None]
    sasl_user = ("etl", "etl-dev-secret")


@pytest.fixture(scope="session")
def kafka():
    """This session's Kafka broker (KRaft: broker and controller in one JVM, from the jars
    set-up resolved into .cache/kafka-jars), with a PLAINTEXT and a SASL_PLAINTEXT listener.
    Like a default Kafka, it creates a topic when a client first produces to it or reads it."""
    import base64
    import uuid

    from confluent_kafka.admin import AdminClient
    jars = REPO / ".cache" / "kafka-jars"
    assert jars.is_dir(), "run make setup first (it resolves jvm/kafka/pom.xml)"
    root = session_dir("kafka")
    owned = Owned("kafka", root)
    cp = f"{jars}/*"

    def launch(ports):
        p, c, sasl = ports
        data = root / f"data-{p}"
        props = root / "server.properties"
        text = (REPO / "jvm" / "kafka" / "server.properties.in").read_text()
        for k, v in (("@PORT@", p), ("@CONTROLLER_PORT@", c), ("@SASL_PORT@", sasl),
                     ("@DATA@", data), ("@PARTITIONS@", 1)):
            text = text.replace(k, str(v))
        props.write_text(text)
        cluster = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        subprocess.run(["java", "-cp", cp, "kafka.tools.StorageTool", "format", "--standalone",
                        "-c", str(props), "-t", cluster], check=True, capture_output=True)
        return run()

    def run():
        return owned.popen(["java", "-Xms256m", "-Xmx768m", "-XX:+UseG1GC",
                            "-Dlog4j2.level=WARN", "-cp", cp, "kafka.Kafka",
                            str(root / "server.properties")])

    def ready(ports):
        if not owned.holds(*ports):
            return False
        try:
            AdminClient({"bootstrap.servers": f"127.0.0.1:{ports[0]}"}).list_topics(timeout=5)
            return True
        except Exception:  # noqa: BLE001 - not answering yet
            return False
    p, _, sasl = start_on_port("the Kafka broker", owned, 3, launch, ready, timeout=180)
    broker = Broker(f"127.0.0.1:{p}")
    broker.sasl = f"127.0.0.1:{sasl}"

    def restart() -> None:
        owned.stop()  # SIGTERM: Kafka's controlled shutdown
        wait_for("the Kafka broker", lambda: ready(ports), run(), owned.log, timeout=120)
    ports = [p, _, sasl]
    broker.restart = restart
    yield broker
    owned.stop()
    remove(root)


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
