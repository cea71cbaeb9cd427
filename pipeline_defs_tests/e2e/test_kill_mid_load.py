"""A load killed hard (SIGKILL of the whole process group: Dagster, the Spark JVM, the Python
workers) leaves the PostgreSQL target exactly as it was: while the COPY into the staging table
runs, and while the publishing transaction is under way. The next load cleans up."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline_defs_tests.conftest import REPO, write_json

PIPELINE = str(Path(sys.executable).parent / "pipeline")
ORIGINAL = [(i, f"original-{i}", i) for i in range(1, 6)]


@pytest.fixture
def setup(pg, vault, tmp_path, spark):
    pg.sql("CREATE TABLE scores (id bigint PRIMARY KEY, name text NOT NULL, score bigint)")
    with pg.admin.cursor() as cur:
        cur.executemany("INSERT INTO scores VALUES (%s, %s, %s)", ORIGINAL)
    data = tmp_path / "big"
    spark.range(0, 3_000_000, numPartitions=4).selectExpr(
        "id", "concat('name-', id) AS name", "id * 3 AS score").write.parquet(str(data))
    path = vault.put("secret", "postgres/kill", pg.secret())
    f = write_json(tmp_path / "kill.json", {"name": "kill-test", "steps": [
        {"type": "extract", "method": "fromFile", "config": {"path": str(data)}},
        {"type": "load", "method": "toPostgres", "config": {
            "table": "scores", "mode": "overwrite", "credentialPath": path}}]})
    home = tmp_path / "home"
    home.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"},
           "SPARK_MASTER": "local[2]", "DAGSTER_HOME": str(home), "VAULT_ADDR": vault.url,
           "VAULT_TOKEN": vault.token, "PIPELINE_AUDIT_LOG": str(tmp_path / "audit")}
    return pg, f, env


def _start(f, env) -> subprocess.Popen:
    return subprocess.Popen([PIPELINE, "run", str(f)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def _wait_for(pg, sql: str, proc: subprocess.Popen | None, timeout: float = 240) -> None:
    """Polls on its own connection: pg_stat_activity is a snapshot per transaction."""
    import psycopg
    deadline = time.time() + timeout
    with psycopg.connect(host=pg.host, port=pg.port, user="postgres", dbname=pg.database,
                         autocommit=True) as monitor:
        while time.time() < deadline:
            if monitor.execute(sql).fetchone()[0]:
                return
            assert proc is None or proc.poll() is None, \
                "the pipeline ended before the moment to kill it"
            time.sleep(0.1)
    raise AssertionError(f"timed out waiting for: {sql}")


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _target(pg):
    return pg.sql("SELECT * FROM scores ORDER BY id")


def test_killed_while_copying_then_while_publishing(setup):
    pg, f, env = setup
    # a COPY is running and rows have reached the staging table's pages (uncommitted)
    copying = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
               "AND query LIKE 'COPY %_pd_stage_scores_%' AND state = 'active' AND EXISTS ("
               "SELECT 1 FROM pg_class WHERE relname LIKE '\\_pd\\_stage\\_scores\\_%' "
               "AND relkind = 'r' AND pg_relation_size(oid) > 0)")

    # 1. SIGKILL while the partitions are being copied into the staging table
    proc = _start(f, env)
    _wait_for(pg, copying, proc)
    _kill(proc)
    assert _target(pg) == ORIGINAL
    leftovers = pg.sql("SELECT table_name FROM information_schema.tables WHERE table_name "
                       "LIKE '\\_pd\\_stage\\_scores\\_%'")
    assert leftovers, "the staging table should be there (and invisible to readers)"

    # 2. SIGKILL while the publishing transaction (the table swap) waits for a reader's
    #    lock on the target
    with pg.admin.transaction():
        pg.sql("LOCK TABLE scores IN ACCESS SHARE MODE")  # a long read holds the table
        proc = _start(f, env)
        _wait_for(pg, "SELECT count(*) FROM pg_stat_activity WHERE datname = "
                      "current_database() AND query LIKE 'ALTER TABLE \"public\".\"scores\" "
                      "RENAME TO%' AND wait_event_type = 'Lock'", proc)
        _kill(proc)
        assert _target(pg) == ORIGINAL  # the reader still sees the old rows
    # the dead client's session rolls back its transaction once it notices: wait for that
    _wait_for(pg, "SELECT count(*) = 0 FROM pg_stat_activity WHERE datname = "
                  "current_database() AND query LIKE 'ALTER TABLE \"public\".\"scores\" "
                  "RENAME TO%'", None)
    assert _target(pg) == ORIGINAL

    # 3. an uninterrupted run drops the leftovers and publishes everything at once
    r = subprocess.run([PIPELINE, "run", str(f)], env=env, cwd=REPO, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert pg.sql("SELECT count(*), sum(score) FROM scores") == [
        (3_000_000, 3 * sum(range(3_000_000)))]
    assert pg.sql("SELECT count(*) FROM information_schema.tables WHERE table_name LIKE "
                  "'\\_pd\\_stage%'") == [(0,)]
