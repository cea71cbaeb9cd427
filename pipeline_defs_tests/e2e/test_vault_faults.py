"""Vault misbehaving while a pipeline runs (issue 30, fault 3), against the real OpenBao behind
the test's fault proxy: a burst of 503s on a step's credential read and on the token's renewal
is retried with doubling backoff and the run loads exactly the source's rows; a 403 (the policy
no longer grants the path) is asked once, never retried, and fails the run with one line naming
the step and the path, the target untouched."""
from __future__ import annotations

import time
import uuid

import dagster as dg

from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.dagster_layer.resources.vault import VaultResource
from pipeline_defs.definitions import default_resources, definitions_for
from pipeline_defs.steps.registry import builtin_registry
from pipeline_defs_tests.conftest import write_json

SEALED = b'{"errors": ["Vault is sealed"]}'
ROWS = 5_000


def _run(pipeline, vault, token: str, tmp_path):
    resources = {**default_resources(), "vault": VaultResource(
        url=vault.url, token=token, retries=4, backoff_s=0.2,
        audit_log=str(tmp_path / "audit.jsonl"))}
    job = definitions_for([pipeline], resources).resolve_job_def(pipeline.name)
    return job.execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                  run_id=str(uuid.uuid4()), raise_on_error=False)


def test_503_bursts_on_reads_and_renewal_are_retried_and_a_403_is_not(pg, vault, tmp_path,
                                                                      spark):
    pg.sql("CREATE TABLE readings (id int PRIMARY KEY, v bigint)")
    pg.sql(f"INSERT INTO readings SELECT g, g * 7 FROM generate_series(1, {ROWS}) g")
    pg.sql("CREATE TABLE copied (id int PRIMARY KEY, v bigint)")
    pg.sql("INSERT INTO copied VALUES (0, 0)")
    src = vault.put("secret", "pg-src", pg.secret())
    dst = vault.put("secret", "pg-dst", pg.secret())
    pipeline = load_pipeline(write_json(tmp_path / "copy.json", {
        "name": "copy", "retries": {"maxRetries": 2, "delaySeconds": 1}, "steps": [
        {"type": "extract", "method": "fromPostgres", "name": "readings_in",
         "config": {"table": "readings", "credentialPath": src}},
        {"type": "load", "method": "toPostgres", "name": "copied_out",
         "config": {"table": "copied", "mode": "overwrite", "credentialPath": dst}}]}),
        builtin_registry())

    # 1. a short-lived token; three 503s on the extract's read, two on the first renewal
    token = vault.new_token(ttl="3s", explicit_max_ttl="120s")  # renewed at ~1.5 s
    first_expiry = vault.expire_time(token)
    vault.proxy.answer("GET", f"/v1/{src}", 503, SEALED, times=3)
    vault.proxy.answer("POST", "/v1/auth/token/renew-self", 503, SEALED, times=2)
    result = _run(pipeline, vault, token, tmp_path)
    assert result.success
    assert pg.sql("SELECT count(*), sum(v) FROM copied") == [(ROWS, 7 * ROWS * (ROWS + 1) // 2)]
    reads = [at for (m, p), at in zip(vault.proxy.seen, vault.proxy.at, strict=True)
             if (m, p) == ("GET", f"/v1/{src}")]
    assert len(reads) == 4  # three refused, then answered
    gaps = [b - a for a, b in zip(reads, reads[1:], strict=False)]
    assert all(0.9 * 0.2 * 2 ** i <= gap < 3 * 0.2 * 2 ** i for i, gap in enumerate(gaps)), \
        gaps  # doubling from 0.2 s
    assert vault.reads(dst) == 1
    # the renewal met its burst during the run and got through: Vault moved the expiry
    deadline = time.monotonic() + 30
    while vault.renewals < 3:  # two refused, one renewed (the run may end before it)
        assert time.monotonic() < deadline, vault.requests
        time.sleep(0.1)
    assert vault.expire_time(token) > first_expiry  # (an expired token cannot be looked up)

    # 2. the policy stops granting the load's path: asked once, one line, target untouched
    pg.sql("TRUNCATE copied")
    pg.sql("INSERT INTO copied VALUES (0, 0)")
    vault.deny(dst)
    token = vault.new_token()
    result = _run(pipeline, vault, token, tmp_path)
    assert not result.success
    assert "STEP_UP_FOR_RETRY" not in [e.event_type_value for e in result.all_events]
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.step_failure_data.error.message.strip()
    assert "\n" not in message, message
    assert ("pipeline 'copy', step 2 (load.toPostgres) failed: Vault denied reading "
            f"'{dst}' (403)") in message, message
    assert vault.reads(dst) == 2  # once in run 1, once here
    assert pg.sql("SELECT * FROM copied") == [(0, 0)]
    assert token not in message and pg.password not in message
    audit = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert '"outcome": "failure", "error": "CredentialError"' in audit[-1]
