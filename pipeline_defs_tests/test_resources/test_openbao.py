"""The Vault resource against a real Vault-API server (OpenBao 2.7, started by this module):
KV v2 and v1 reads, AppRole login with a policy (a read it does not grant names the path and
is refused, asked once), a short-TTL token renewed while it is used, an expired one refused
with one line; through a fault proxy in front of it, a burst of 503s on a read and of 429s on
the renewal, retried with backoff. (Issue 30 moves every Vault test here, from the double.)"""
from __future__ import annotations

import time

import pytest

from pipeline_defs.common.errors import CredentialError
from pipeline_defs.dagster_layer.resources.vault import VaultResource
from pipeline_defs_tests.faults import HttpFaults
from pipeline_defs_tests.openbao import OpenBao

SEALED = b'{"errors": ["Vault is sealed"]}'


@pytest.fixture(scope="module")
def bao(tmp_path_factory):
    server = OpenBao(tmp_path_factory.mktemp("openbao")).start()
    yield server
    server.stop()


@pytest.fixture
def proxy(bao):
    p = HttpFaults(bao.port)
    p.url = f"http://127.0.0.1:{p.port}"
    yield p
    p.close()


def test_kv_v2_and_v1_reads_with_a_token(bao):
    v2 = bao.put("secret", "pg-v2", {"user": "etl", "password": "pw-2"})
    v1 = bao.put("kv", "pg-v1", {"user": "old", "password": "pw-1"})
    r = VaultResource(url=bao.url, token=bao.root_token)
    assert r.read_secret(v2) == {"user": "etl", "password": "pw-2"}
    assert r.read_secret("secret/pg-v2") == {"user": "etl", "password": "pw-2"}  # v2 inferred
    assert r.read_secret(v1) == {"user": "old", "password": "pw-1"}
    with pytest.raises(CredentialError, match="no secret at 'secret/data/missing' .404."):
        r.read_secret("secret/data/missing")


def test_approle_with_a_policy_reads_what_it_grants_and_names_what_it_does_not(bao, proxy):
    allowed = bao.put("secret", "app-db", {"password": "granted"})
    denied = bao.put("secret", "other-db", {"password": "never"})
    role_id, secret_id = bao.add_approle("etl", [bao.policy("etl-read", [allowed])])
    r = VaultResource(url=proxy.url, role_id=role_id, secret_id=secret_id, backoff_s=0.05)
    assert r.read_secret(allowed) == {"password": "granted"}
    with pytest.raises(CredentialError) as e:
        r.read_secret(denied)
    assert f"Vault denied reading '{denied}' (403)" in str(e.value)
    assert "never" not in str(e.value)
    assert proxy.seen.count(("GET", f"/v1/{denied}")) == 1  # a 403 is never retried
    assert ("POST", "/v1/auth/approle/login") in proxy.seen
    bad = VaultResource(url=bao.url, role_id=role_id, secret_id="not-the-secret-id")
    with pytest.raises(CredentialError, match=f"rejected the AppRole login .role {role_id}."):
        bad.read_secret(allowed)


def test_a_short_lived_token_is_renewed_and_an_expired_one_is_refused(bao):
    path = bao.put("secret", "renewed", {"k": "v"})
    policy = bao.policy("renewed-read", [path, "secret/data/later"])
    token = bao.token([policy], ttl="3s", explicit_max_ttl="60s")
    r = VaultResource(url=bao.url, token=token)
    assert r.read_secret(path) == {"k": "v"}
    time.sleep(5)  # past the first TTL: alive only if renewed
    later = bao.put("secret", "later", {"k": "later"})
    assert r.read_secret(later) == {"k": "later"}
    assert r.renewals >= 1 and r.renewal_error is None
    r.teardown_after_execution(None)
    short = bao.token([policy], ttl="2s", renewable=False)
    time.sleep(3)
    with pytest.raises(CredentialError, match="rejected the token .VAULT_TOKEN.: it is invalid "
                       "or expired"):
        VaultResource(url=bao.url, token=short).read_secret(path)


def test_a_burst_of_503s_on_a_read_and_of_429s_on_the_renewal_are_retried(bao, proxy):
    path = bao.put("secret", "bursty", {"password": "after-the-burst"})
    proxy.answer("GET", f"/v1/{path}", 503, SEALED, times=3)
    r = VaultResource(url=proxy.url, token=bao.token(
        [bao.policy("bursty-read", [path])], ttl="2s", explicit_max_ttl="60s"), retries=4,
        backoff_s=0.05)
    r.setup_for_execution(None)
    try:
        assert r.read_secret(path) == {"password": "after-the-burst"}
        assert proxy.seen.count(("GET", f"/v1/{path}")) == 4  # 3 refused, then answered
        # the renewal (at half the 2 s TTL) meets two 429s first: retried, renewed
        proxy.answer("POST", "/v1/auth/token/renew-self", 429,
                     b'{"errors": ["request path rate limited"]}', times=2)
        deadline = time.monotonic() + 30
        while r.renewals < 1:
            assert time.monotonic() < deadline and r.renewal_error is None, r.renewal_error
            time.sleep(0.05)
        assert proxy.seen.count(("POST", "/v1/auth/token/renew-self")) >= 3
    finally:
        r.teardown_after_execution(None)
