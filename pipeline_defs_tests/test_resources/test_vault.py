"""The Vault resource through real hvac against a real Vault-API server (OpenBao 2.7, the
session's; `vault` puts a fault proxy of the test's own in front of it, and a token of its own):
KV v1/v2, tokens and AppRole with policies (a read refused names the path, is asked once),
renewal of short TTLs and expiry, a revoked token, namespaces, TLS with the server's CA; and
from the proxy what the server will not do on demand: bursts of 429/5xx retried with backoff,
401s, Vault down. Also the per-run cache, the errors and the audit log."""
from __future__ import annotations

import json
import time
import uuid

import pytest

from pipeline_defs.common.errors import CredentialError
from pipeline_defs.dagster_layer.resources.vault import VaultResource
from pipeline_defs_tests.openbao import OpenBao

JDBC = {"host": "db.internal", "port": 5432, "database": "sales", "username": "etl",
        "password": "pw-never-shown-7731"}


def test_reads_kv2_and_kv1_secrets(vault, vault_resource):
    p2 = vault.put("secret", "postgres/production", JDBC)
    p1 = vault.put("kv", "s3/production", {"accessKeyId": "AKIA1", "secretAccessKey": "x" * 12})
    assert p2 == "secret/data/postgres/production" and p1 == "kv/s3/production"
    assert vault_resource.read_secret(p2) == JDBC
    assert vault_resource.read_secret(p1)["accessKeyId"] == "AKIA1"
    # a KV v2 path written without data/ is tried with it (Vault refuses the plain form with
    # 403, as the token's policy grants secret/data/* only)
    assert vault_resource.read_secret("secret/postgres/production") == JDBC


def test_secrets_are_read_once_per_run(vault, vault_resource):
    path = vault.put("secret", "pg", JDBC)
    for _ in range(3):
        vault_resource.read_secret(path)
    assert vault.reads(path) == 1


def test_approle_with_a_policy_reads_what_it_grants_and_names_what_it_does_not(openbao, vault):
    allowed = vault.put("secret", "app-db", {"password": "granted"})
    denied = vault.put("secret", "other-db", {"password": "never"})
    role_id, secret_id = openbao.add_approle("etl", [openbao.policy("etl-read", [allowed])])
    r = VaultResource(url=vault.url, role_id=role_id, secret_id=secret_id, backoff_s=0.05)
    assert r.read_secret(allowed) == {"password": "granted"}
    with pytest.raises(CredentialError) as e:
        r.read_secret(denied)
    assert f"Vault denied reading '{denied}' (403)" in str(e.value)
    assert "never" not in str(e.value)
    assert vault.reads(denied) == 1  # a 403 is never retried
    assert ("POST", "/v1/auth/approle/login") in vault.requests
    bad = VaultResource(url=vault.url, role_id=role_id, secret_id="not-the-secret-id")
    with pytest.raises(CredentialError, match=f"rejected the AppRole login .role {role_id}."):
        bad.read_secret(allowed)


def test_token_is_renewed_during_a_long_run(vault):
    token = vault.new_token(ttl="2s", explicit_max_ttl="120s")
    first_expiry = vault.expire_time(token)
    path = vault.put("secret", "pg", JDBC)
    res = VaultResource(url=vault.url, token=token)
    res.setup_for_execution(None)
    try:
        res.read_secret(path)
        deadline = time.time() + 60
        # renewed at half the TTL, again and again; the resource counts a renewal once it has
        # read Vault's answer, i.e. just after the proxy saw it
        while res.renewals < 3:
            assert time.time() < deadline, f"{res.renewals} renewals in 60 s"
            time.sleep(0.05)
        assert vault.renewals >= res.renewals
        assert vault.expire_time(token) > first_expiry
        assert time.time() > first_expiry  # without renewal the token would be dead now
        res._cache.clear()
        assert res.read_secret(path) == JDBC  # the token still works
    finally:
        res.teardown_after_execution(None)
    res._renewer.join(timeout=30)  # renewal stops when the run ends: its thread returns
    assert not res._renewer.is_alive(), "renewal must stop when the run ends"
    assert res.renewals == vault.renewals  # settled: every renewal Vault saw was counted


def test_an_expired_token_is_refused_in_one_line(vault):
    path = vault.put("secret", "pg", JDBC)
    short = vault.new_token(ttl="2s", renewable=False)
    time.sleep(3)
    with pytest.raises(CredentialError, match="rejected the token .VAULT_TOKEN.: it is invalid "
                       "or expired"):
        VaultResource(url=vault.url, token=short).read_secret(path)


def test_a_burst_of_429s_on_the_renewal_is_retried(vault):
    path = vault.put("secret", "bursty", {"password": "after-the-burst"})
    r = VaultResource(url=vault.url, token=vault.new_token(ttl="2s", explicit_max_ttl="60s"),
                      retries=4, backoff_s=0.05)
    r.setup_for_execution(None)
    try:
        assert r.read_secret(path) == {"password": "after-the-burst"}
        # the renewal (at half the 2 s TTL) meets two 429s first: retried, renewed
        vault.proxy.answer("POST", "/v1/auth/token/renew-self", 429,
                           b'{"errors": ["request path rate limited"]}', times=2)
        deadline = time.monotonic() + 30
        while r.renewals < 1:
            assert time.monotonic() < deadline and r.renewal_error is None, r.renewal_error
            time.sleep(0.05)
        assert vault.renewals >= 3
    finally:
        r.teardown_after_execution(None)


@pytest.mark.parametrize("status", [429, 500, 502, 503])
def test_transient_errors_are_retried(vault, vault_resource, status):
    path = vault.put("secret", "pg", JDBC)
    vault.fail_next(3, status)
    assert vault_resource.read_secret(path) == JDBC
    # the token lookup met the three failures and succeeded on its fourth try; the read then once
    assert vault.requests.count(("GET", "/v1/auth/token/lookup-self")) == 4
    assert vault.reads(path) == 1
    # and a failure of the read itself is retried too
    other = vault.put("secret", "other", JDBC)
    vault.fail_next(2, status)
    assert vault_resource.read_secret(other) == JDBC
    assert vault.reads(other) == 3


@pytest.mark.parametrize("status", [400, 501])
def test_other_errors_are_not_retried(vault, vault_resource, status):
    path = vault.put("secret", "pg", JDBC)
    vault_resource.read_secret(vault.put("secret", "first", JDBC))  # logged in
    vault.fail_next(1, status)
    with pytest.raises(CredentialError, match=r"Vault could not read 'secret/data/pg'"):
        vault_resource.read_secret(path)
    assert vault.reads(path) == 1


def test_a_401_on_a_read_says_the_token_expired_and_is_not_retried(vault, vault_resource):
    vault_resource.read_secret(vault.put("secret", "first", JDBC))
    path = vault.put("secret", "pg", JDBC)
    vault.fail_next(1, 401)
    with pytest.raises(CredentialError, match=r"rejected the token while reading "
                       r"'secret/data/pg' \(401\): it expired or was revoked"):
        vault_resource.read_secret(path)
    assert vault.reads(path) == 1
    assert vault.token not in str(vault.requests)


def test_a_401_at_login_names_the_token_not_its_value(vault):
    res = VaultResource(url=vault.url, token=vault.token)
    vault.fail_next(1, 401)
    with pytest.raises(CredentialError) as e:
        res.read_secret(vault.put("secret", "pg", JDBC))
    assert "rejected the token (VAULT_TOKEN)" in str(e.value)
    assert vault.token not in str(e.value)


def test_namespace_reaches_vault(openbao, vault):
    ns = "team-" + uuid.uuid4().hex[:6]
    only_there, only_root = f"ns-only-{ns}", f"root-only-{ns}"
    openbao.namespace(ns)
    openbao.client(namespace=ns).secrets.kv.v2.create_or_update_secret(only_there, secret=JDBC)
    vault.put("secret", only_root, {"password": "root-namespace"})
    root = VaultResource(url=vault.url, token=openbao.root_token)
    with pytest.raises(CredentialError, match="no secret at"):  # not in the root namespace
        root.read_secret(f"secret/data/{only_there}")
    assert root.read_secret(f"secret/data/{only_root}") == {"password": "root-namespace"}
    res = VaultResource(url=vault.url, token=openbao.root_token, namespace=ns)
    assert res.read_secret(f"secret/data/{only_there}") == JDBC
    with pytest.raises(CredentialError, match="no secret at"):  # the root's is not there
        res.read_secret(f"secret/data/{only_root}")


def test_namespace_and_tls_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("VAULT_ADDR", "https://vault:8200")
    monkeypatch.setenv("VAULT_NAMESPACE", "team-a")
    monkeypatch.setenv("VAULT_CACERT", "/etc/ssl/vault-ca.pem")
    res = VaultResource.from_env()
    assert (res.namespace, res.ca_cert, res.verify) == ("team-a", "/etc/ssl/vault-ca.pem", True)
    monkeypatch.setenv("VAULT_SKIP_VERIFY", "true")
    assert VaultResource.from_env().verify is False


@pytest.fixture(scope="module")
def bao_tls(tmp_path_factory):
    """An OpenBao serving HTTPS with a certificate for 127.0.0.1 signed by a CA of its own."""
    server = OpenBao(tmp_path_factory.mktemp("openbao-tls"), tls=True).start()
    yield server
    server.stop()


def test_tls_verify(bao_tls):
    path = bao_tls.put("secret", "pg", JDBC)
    assert bao_tls.url.startswith("https://")
    # an untrusted certificate is refused at once, with the fix
    res = VaultResource(url=bao_tls.url, token=bao_tls.root_token, backoff_s=0.01)
    with pytest.raises(CredentialError) as e:
        res.read_secret(path)
    msg = str(e.value)
    assert "its TLS certificate is not trusted" in msg and "VAULT_CACERT" in msg
    # trusted through the CA file
    assert VaultResource(url=bao_tls.url, token=bao_tls.root_token,
                         ca_cert=bao_tls.ca_cert).read_secret(path) == JDBC
    # or not verified at all
    assert VaultResource(url=bao_tls.url, token=bao_tls.root_token,
                         verify=False).read_secret(path) == JDBC


def test_a_failing_renewal_warns_once_and_stops(vault, caplog):
    token = vault.new_token(ttl="4s")  # renewed after ~2 s
    path = vault.put("secret", "pg", JDBC)
    res = VaultResource(url=vault.url, token=token, retries=1, backoff_s=0.01)
    res.setup_for_execution(None)
    try:
        with caplog.at_level("WARNING", logger="pipeline_defs"):
            assert res.read_secret(path) == JDBC
            vault.revoke(token)  # an operator revokes it: Vault refuses the renewal
            res._renewer.join(timeout=30)  # renewal gives up: its thread returns
            assert not res._renewer.is_alive()
        assert res.renewal_error is not None and res.renewals == 0
        warnings = [r.getMessage() for r in caplog.records
                    if "renewal failed" in r.getMessage()]
        assert len(warnings) == 1 and "Renewal stops for this run" in warnings[0]
        assert token not in warnings[0]
        assert res.read_secret(path) == JDBC  # what was read stays usable (per-run cache)
    finally:
        res.teardown_after_execution(None)


def test_vault_down_fails_after_the_retries(vault, tmp_path):
    path = vault.put("secret", "pg", JDBC)
    res = VaultResource(url=vault.url, token=vault.token, retries=2, backoff_s=0.01)
    vault.fail_next(50, 503)
    with pytest.raises(CredentialError, match=r"unavailable \(VaultDown\).*after 3 attempts"):
        res.read_secret(path)


def test_unreachable_vault(tmp_path):
    res = VaultResource(url="http://127.0.0.1:9", token="t", retries=1, backoff_s=0.01)
    with pytest.raises(CredentialError, match="Vault at http://127.0.0.1:9 is unreachable"):
        res.read_secret("secret/data/x")


def test_forbidden_missing_and_bad_token_are_not_retried(vault, vault_resource):
    path = vault.put("secret", "pg", JDBC)
    vault.deny(path)
    with pytest.raises(CredentialError, match=r"denied reading 'secret/data/pg' \(403\)"):
        vault_resource.read_secret(path)
    assert vault.reads(path) == 1
    # written without data/: the data/ form is denied too, and the refusal names the path given
    with pytest.raises(CredentialError, match=r"denied reading 'secret/pg' \(403\)"):
        vault_resource.read_secret("secret/pg")
    with pytest.raises(CredentialError, match=r"no secret at 'secret/data/nope' \(404\)"):
        vault_resource.read_secret("secret/data/nope")
    bad = VaultResource(url=vault.url, token="hvs.expired")
    with pytest.raises(CredentialError, match="rejected the token"):
        bad.read_secret(path)


def test_a_kv1_path_refused_is_not_read_as_its_data_form(vault, vault_resource):
    vault.put("kv", "only-v1", {"a": "v1"})
    vault.put("kv", "data/only-v1", {"a": "another secret"})  # on KV v1, just another name
    vault.deny("kv/only-v1")
    with pytest.raises(CredentialError, match=r"denied reading 'kv/only-v1' \(403\)"):
        vault_resource.read_secret("kv/only-v1")
    assert vault.reads("kv/data/only-v1") == 0  # Vault said the mount is KV v1: no fallback


def test_missing_keys_and_audit_records(vault, vault_resource, ctx, tmp_path):
    from pipeline_defs.steps.jdbc.connection import JdbcConnection, jdbc_endpoint
    incomplete = vault.put("secret", "pg-incomplete",
                           {"host": "db.internal", "database": "sales", "username": "etl"})
    full = vault.put("secret", "pg", JDBC)
    c = ctx(read_secret=vault_resource.read_secret, audit=vault_resource.audit,
            method="extract.fromPostgres")
    with pytest.raises(CredentialError) as e:
        jdbc_endpoint(JdbcConnection(credentialPath=incomplete), c, "postgres")
    msg = str(e.value)
    assert "Vault secret 'secret/data/pg-incomplete' lacks password" in msg
    assert "host 'db.internal'" in msg and "database 'sales'" in msg and "username 'etl'" in msg
    ep = jdbc_endpoint(JdbcConnection(credentialPath=full), c, "postgres")
    assert ep.url == "jdbc:postgresql://db.internal:5432/sales"
    assert JDBC["password"] not in repr(ep)

    records = [json.loads(x) for x in open(tmp_path / "audit.jsonl")]
    assert [r["outcome"] for r in records] == ["failure", "success"]
    for r, path in zip(records, (incomplete, full), strict=True):
        assert r["credentialPath"] == path and r["type"] == "jdbc" and r["source"] == "vault"
        assert {"time", "user", "pipeline", "run_id", "step"} <= set(r)
    assert records[0]["error"] == "CredentialError"
    assert records[1]["keys"] == sorted(JDBC)
    assert JDBC["password"] not in (tmp_path / "audit.jsonl").read_text()


def test_literal_credentials_warn_and_vault_required_refuses_them(registry, tmp_path,
                                                                  monkeypatch):
    from pipeline_defs.common.errors import ConfigError
    from pipeline_defs.config.loader import load_pipeline
    from pipeline_defs_tests.conftest import write_json
    f = write_json(tmp_path / "p.json", {"name": "p", "steps": [
        {"type": "extract", "method": "fromPostgres", "config": {
            "table": "t", "host": "h", "database": "d", "username": "u",
            "password": "${env:PG_PASSWORD}"}},
        {"type": "load", "method": "toS3", "config": {
            "bucket": "b", "path": "x", "accessKeyId": "AKIA", "secretAccessKey": "s"}}]})
    monkeypatch.setenv("PG_PASSWORD", "from-env-123")
    load_pipeline(f, registry)  # allowed (a warning at run time)
    monkeypatch.setenv("VAULT_REQUIRED", "true")
    with pytest.raises(ConfigError) as e:
        load_pipeline(f, registry)
    text = str(e.value)
    assert "step 1 (extract.fromPostgres), config.password" in text
    assert "step 2 (load.toS3), config.accessKeyId" in text
    assert "config.secretAccessKey" in text and "credentialPath" in text
    assert "from-env-123" not in text
