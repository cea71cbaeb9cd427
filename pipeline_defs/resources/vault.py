"""Vault: reads KV secrets (v1 or v2) for credentialPath. Values are never logged or shown."""
from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from pipeline_defs.errors import CredentialError


class VaultResource(dg.ConfigurableResource):
    """HashiCorp Vault. Token auth (VAULT_TOKEN) or AppRole (role_id + secret_id)."""

    url: str | None = Field(None, description="Vault address, e.g. https://vault:8200 "
                                              "(wired to VAULT_ADDR).")
    token: str | None = Field(None, description="Vault token (wired to VAULT_TOKEN).")
    role_id: str | None = Field(None, description="AppRole role id (instead of a token).")
    secret_id: str | None = Field(None, description="AppRole secret id.")
    namespace: str | None = Field(None, description="Vault Enterprise namespace.")
    verify: bool = Field(True, description="Verify the server's TLS certificate.")

    _client: Any = PrivateAttr(None)
    _cache: dict = PrivateAttr(default_factory=dict)

    def __repr__(self) -> str:
        return f"VaultResource(url={self.url!r}, token={'***' if self.token else None})"

    @property
    def configured(self) -> bool:
        return bool(self.url and (self.token or (self.role_id and self.secret_id)))

    def _connect(self):
        import hvac
        if not self.configured:
            raise CredentialError("Vault is not configured: set VAULT_ADDR and VAULT_TOKEN "
                                  "(or an AppRole role_id and secret_id).")
        client = hvac.Client(url=self.url, token=self.token, namespace=self.namespace,
                             verify=self.verify)
        if not self.token:
            login = client.auth.approle.login(role_id=self.role_id, secret_id=self.secret_id)
            client.token = login["auth"]["client_token"]
        return client

    def read_secret(self, path: str) -> dict[str, Any]:
        """The key/values at `path` (KV v2 paths include data/, as in the original format)."""
        if path in self._cache:
            return dict(self._cache[path])
        import hvac.exceptions as hv
        if self._client is None:
            self._client = self._connect()
        try:
            resp = self._client.read(path)
        except hv.Forbidden:
            raise CredentialError(f"Vault denied reading '{path}' (403). Grant the token's "
                                  "policy read on that path.") from None
        except hv.VaultError as e:
            raise CredentialError(f"Vault could not read '{path}': {type(e).__name__}.") from None
        if not resp or "data" not in resp:
            raise CredentialError(f"Vault has no secret at '{path}'. Check the path (KV v2 "
                                  "paths look like secret/data/NAME).")
        data = resp["data"]
        if isinstance(data.get("data"), dict) and "metadata" in data:  # KV v2
            data = data["data"]
        self._cache[path] = dict(data)
        return dict(data)
