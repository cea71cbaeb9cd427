"""Known secret strings go in (Vault token, AppRole secret id, database passwords, S3 keys,
a literal password); pipelines that succeed and pipelines that fail run as a user runs them
(`pipeline run`, DEBUG logs, a Dagster home); then everything they left is scanned: stdout,
stderr, every file of the Dagster instance (event log, run config), the audit log, the
outputs in S3, PostgreSQL and MySQL, and Spark's plans. Zero hits."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from pipeline_defs.steps import jdbc
from pipeline_defs_tests.conftest import REPO, write_json

PIPELINE = str(Path(sys.executable).parent / "pipeline")


def _run(f, env) -> subprocess.CompletedProcess:
    return subprocess.run([PIPELINE, "run", str(f), "--log-level", "DEBUG"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_no_secret_value_anywhere(pg, mysql, s3, vault, tmp_path, spark):
    s3_secret = s3.secret()
    role_id, secret_id = vault.add_approle()
    wrong_pw = "wrong-" + secrets.token_urlsafe(12)
    literal_pw = "literal-" + secrets.token_urlsafe(12)
    known = {"vault token": vault.token, "approle secret_id": secret_id,
             "pg password": pg.password, "mysql password": mysql.password,
             "s3 secret key": s3_secret["secretAccessKey"],
             "s3 access key": s3_secret["accessKeyId"], "wrong password": wrong_pw,
             "literal password": literal_pw}

    pg.sql("CREATE TABLE users (id int, name text, active boolean)")
    pg.sql("INSERT INTO users SELECT g, 'u' || g, g % 2 = 0 FROM generate_series(1, 50) g")
    s3.client.create_bucket(Bucket="lake")
    paths = {"pg": vault.put("secret", "pg", pg.secret()),
             "my": vault.put("secret", "my", mysql.secret()),
             "s3": vault.put("kv", "s3", s3_secret),
             "bad": vault.put("secret", "bad", {**pg.secret(), "password": wrong_pw})}
    ok = write_json(tmp_path / "ok.json", {"name": "redaction-ok", "steps": [
        {"type": "extract", "method": "fromPostgres", "config": {
            "table": "users", "credentialPath": paths["pg"], "partitionColumn": "id"}},
        {"type": "transform", "method": "filterRows", "config": {"condition": "active"}},
        {"type": "load", "method": "toS3", "config": {
            "bucket": "lake", "path": "users", "format": "json", "mode": "overwrite",
            "credentialPath": paths["s3"]}},
        {"type": "load", "method": "toDeltaLake", "config": {
            "path": "s3a://lake/delta/users", "mode": "overwrite", "assetKey": ["users_delta"],
            "credentialPath": paths["s3"]}},
        {"type": "load", "method": "toMySQL", "config": {
            "table": "users_copy", "mode": "overwrite", "credentialPath": paths["my"]}}]})
    bad_vault = write_json(tmp_path / "bad.json", {"name": "redaction-bad", "steps": [
        {"type": "extract", "method": "fromPostgres", "config": {
            "table": "users", "credentialPath": paths["bad"]}},
        {"type": "load", "method": "toFile", "config": {"path": str(tmp_path / "x")}}]})
    literal = write_json(tmp_path / "literal.json", {"name": "redaction-literal", "steps": [
        {"type": "extract", "method": "fromPostgres", "config": {
            "table": "users", "host": "127.0.0.1", "port": pg.port, "database": pg.database,
            "username": pg.username, "password": literal_pw}},
        {"type": "load", "method": "toFile", "config": {"path": str(tmp_path / "y")}}]})

    home, audit = tmp_path / "home", tmp_path / "audit.jsonl"
    home.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"},
           "SPARK_MASTER": "local[2]", "DAGSTER_HOME": str(home), "VAULT_ADDR": vault.url,
           "VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id,
           "PIPELINE_AUDIT_LOG": str(audit),
           # the metrics exporters write too: a JSON line per run in the run's log, a file
           # per run under DAGSTER_HOME (scanned below with the rest of it)
           "PIPELINE_METRICS_LOG": "1", "PIPELINE_METRICS_DIR": str(home / "metrics")}
    runs = {"ok": _run(ok, env), "bad": _run(bad_vault, env), "literal": _run(literal, env)}
    token_env = {**env, "VAULT_TOKEN": vault.token}
    token_env.pop("VAULT_ROLE_ID"), token_env.pop("VAULT_SECRET_ID")
    runs["ok-token"] = _run(ok, token_env)
    assert runs["ok"].returncode == 0, runs["ok"].stdout[-3000:] + runs["ok"].stderr[-3000:]
    assert runs["ok-token"].returncode == 0
    assert runs["bad"].returncode != 0 and "the password was rejected" in runs["bad"].stdout
    assert runs["literal"].returncode != 0  # the literal password is wrong for this user
    assert "the password was rejected" in runs["literal"].stdout

    # everything that was written
    texts: dict[str, bytes] = {}
    for name, r in runs.items():
        texts[f"{name} stdout"] = r.stdout.encode()
        texts[f"{name} stderr"] = r.stderr.encode()
    for p in home.rglob("*"):
        if p.is_file():
            texts[f"dagster home {p.relative_to(home)}"] = p.read_bytes()
    texts["audit log"] = audit.read_bytes()
    for key in s3.keys("lake"):
        texts[f"s3 {key}"] = s3.client.get_object(Bucket="lake", Key=key)["Body"].read()
    texts["mysql output"] = repr(mysql.sql("SELECT * FROM users_copy")).encode()
    assert len(mysql.sql("SELECT * FROM users_copy")) == 25

    # Spark's plans and the JDBC options they show, for a read like the pipeline's
    from pipeline_defs.dagster_layer.resources.vault import VaultResource
    from pipeline_defs.steps.context import StepContext
    res = VaultResource(url=vault.url, token=vault.token, audit_log=str(audit))
    c = StepContext(spark=spark, pipeline="p", step=1, method="extract.fromPostgres",
                    read_secret=res.read_secret)
    df = jdbc.from_postgres(None, jdbc.FromPostgres.model_validate(
        {"table": "users", "credentialPath": paths["pg"]}), c).filter("active")
    qe = df._jdf.queryExecution()
    texts["spark plans"] = (qe.toString() + qe.executedPlan().toString() +
                            qe.optimizedPlan().toString()).encode()
    assert b"JDBCRelation(users)" in texts["spark plans"]

    assert any(k.startswith("dagster home metrics/") for k in texts), sorted(texts)
    assert len(texts) > 20
    hits = [(what, where) for what, value in known.items() for where, data in texts.items()
            if value.encode() in data]
    assert hits == []
    # the scan can find things: the audit log names the paths, the outputs hold the data
    assert paths["pg"].encode() in texts["audit log"]
    assert any(b'"name":"u2"' in v for k, v in texts.items() if k.startswith("s3 users/"))
