"""docker/docker-compose.yml validated by `docker-compose config` (no engine needed), and
checked against what the examples need: every Vault path they name is seeded, every bucket
they write is created, every port is bound to loopback."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import yaml

from pipeline_defs_tests.conftest import COMPAT, REPO

COMPOSE = REPO / "docker" / "docker-compose.yml"


def _config(path) -> subprocess.CompletedProcess:
    exe = shutil.which("docker-compose")
    assert exe, "docker-compose is missing: scripts/services.sh installs it (Debian package)"
    return subprocess.run([exe, "-f", str(path), "config"], capture_output=True, text=True,
                          timeout=60)


def test_compose_file_is_valid_and_complete():
    r = _config(COMPOSE)
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    services = cfg["services"]
    assert {"postgres", "mysql", "vault", "vault-seed", "minio", "minio-buckets", "kafka",
            "dagster-postgres", "user-code", "webserver", "daemon"} <= set(services)
    for name, svc in services.items():
        for port in svc.get("ports", []):
            published = port if isinstance(port, str) else f"{port.get('host_ip')}:"
            assert str(published).startswith("127.0.0.1:"), (name, port)
    seed = (REPO / "docker" / "seed" / "vault-seed.sh").read_text()
    seeded = set(re.findall(r"^(?:pg|s3|bao kv put) secret/([\w/]+)", seed, re.M))
    assert len(seeded) == 7
    buckets = services["minio-buckets"]["command"][0]
    for f in COMPAT.glob("*.json"):
        for step in json.loads(f.read_text())["steps"]:
            path = step["config"].get("credentialPath")
            if path:
                name = path.removeprefix("secret/data/")
                assert name in seeded, (f.name, path)
            if step["method"] in ("toS3", "fromS3"):
                assert f"local/{step['config']['bucket']}" in buckets, (f.name, step)


def test_dagster_runs_as_in_production_on_a_shared_postgres_instance():
    """The webserver and the daemon load the pipelines from the user-code gRPC server and
    share its instance on PostgreSQL, the image's dagster.yaml (instance/dagster-postgres)."""
    cfg = yaml.safe_load(_config(COMPOSE).stdout)
    services = cfg["services"]
    workspace = yaml.safe_load((REPO / "docker" / "workspace.yaml").read_text())
    (server,) = [w["grpc_server"] for w in workspace["load_from"]]
    cmd = (REPO / "docker" / "Dockerfile").read_text().rsplit("\nCMD ", 1)[1]
    assert server["host"] == "user-code" and f'"-p", "{server["port"]}"' in cmd
    for name in ("webserver", "daemon"):
        command = " ".join(services[name]["command"])
        assert "-w /opt/pipeline_defs/docker/workspace.yaml" in command, name
        assert services[name]["image"] == services["user-code"]["image"]
    env = [services[n]["environment"] for n in ("user-code", "webserver", "daemon")]
    assert all(e == env[0] for e in env) and env[0]["DAGSTER_PG_HOST"] == "dagster-postgres"
    storage = services["dagster-postgres"]["environment"]
    assert (env[0]["DAGSTER_PG_DB"], env[0]["DAGSTER_PG_USERNAME"]) == (
        storage["POSTGRES_DB"], storage["POSTGRES_USER"])
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert "cp instance/dagster-postgres.yaml /opt/dagster/home/dagster.yaml" in dockerfile
    # set-up compiles the bulk loader with javac: the image needs a JDK, not only a JRE
    assert "javac " in (REPO / "scripts" / "setup.sh").read_text()
    assert "openjdk-17-jdk-headless" in dockerfile and "RUN bash scripts/setup.sh" in dockerfile


def test_an_undefined_service_is_caught(tmp_path):
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["webserver"]["depends_on"]["no-such-service"] = {
        "condition": "service_healthy"}
    f = tmp_path / "docker-compose.yml"
    f.write_text(yaml.safe_dump(broken))
    (tmp_path / "seed").mkdir()
    r = _config(f)
    assert r.returncode != 0 and "no-such-service" in r.stderr
