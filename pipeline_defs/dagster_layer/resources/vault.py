"""Vault: KV secrets (v1 or v2) for credentialPath, and the credential audit log.

Token or AppRole auth; the token is renewed in the background while a run lasts; transient
errors (connection refused, 429, 500, 502, 503) are retried with backoff, anything else fails
at once; each secret is read once per run. Values are never logged, shown or audited."""
from __future__ import annotations

import getpass
import json
import logging
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from pipeline_defs.common import secrets
from pipeline_defs.common.errors import CredentialError
from pipeline_defs.common.retry import GaveUp, with_backoff


def default_audit_log() -> str:
    home = os.environ.get("DAGSTER_HOME")
    return str(Path(home) / "credential-audit.jsonl") if home else str(
        Path.home() / ".pipeline_defs" / "credential-audit.jsonl")


def _truthy(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


class VaultResource(dg.ConfigurableResource):
    """HashiCorp Vault. Token auth (VAULT_TOKEN) or AppRole (role_id + secret_id)."""

    url: str | None = Field(None, description="Vault address, e.g. https://vault:8200 "
                                              "(wired to VAULT_ADDR).")
    token: str | None = Field(None, description="Vault token (wired to VAULT_TOKEN).")
    role_id: str | None = Field(None, description="AppRole role id (instead of a token; "
                                                  "VAULT_ROLE_ID).")
    secret_id: str | None = Field(None, description="AppRole secret id (VAULT_SECRET_ID).")
    approle_mount: str = Field("approle", description="Mount point of the AppRole auth method.")
    namespace: str | None = Field(None, description="Vault Enterprise namespace.")
    verify: bool = Field(True, description="Verify the server's TLS certificate "
                         "(VAULT_SKIP_VERIFY=true turns it off, for test servers only).")
    ca_cert: str | None = Field(None, description="PEM file of the CA that signed Vault's "
                                "certificate, when it is not a public one (VAULT_CACERT).")
    required: bool = Field(False, description="Refuse credentials written in pipeline configs "
                                              "(VAULT_REQUIRED=true): every secret from Vault.")
    audit_log: str | None = Field(None, description="JSON-lines file every credential access "
                                  "is appended to (PIPELINE_AUDIT_LOG); default "
                                  "$DAGSTER_HOME/credential-audit.jsonl.")
    retries: int = Field(4, ge=0, description="Retries of transient Vault errors.")
    backoff_s: float = Field(0.5, gt=0, description="First retry delay; doubles each time.")
    timeout_s: int = Field(10, ge=1, description="HTTP timeout of one Vault request.")

    _client: Any = PrivateAttr(None)
    _cache: dict = PrivateAttr(default_factory=dict)
    _renewer: Any = PrivateAttr(None)
    _stop: Any = PrivateAttr(default_factory=threading.Event)
    _renewals: int = PrivateAttr(0)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)
    _renewal_error: str | None = PrivateAttr(None)

    def __repr__(self) -> str:
        return f"VaultResource(url={self.url!r}, token={'***' if self.token else None})"

    @classmethod
    def from_env(cls) -> VaultResource:
        env = os.environ
        return cls(url=env.get("VAULT_ADDR"),
                   token=dg.EnvVar("VAULT_TOKEN") if env.get("VAULT_TOKEN") else None,
                   role_id=env.get("VAULT_ROLE_ID"),
                   secret_id=dg.EnvVar("VAULT_SECRET_ID") if env.get("VAULT_SECRET_ID") else None,
                   namespace=env.get("VAULT_NAMESPACE"),
                   verify=not _truthy(env.get("VAULT_SKIP_VERIFY")),
                   ca_cert=env.get("VAULT_CACERT"),
                   required=_truthy(env.get("VAULT_REQUIRED")),
                   audit_log=env.get("PIPELINE_AUDIT_LOG"))

    @property
    def configured(self) -> bool:
        return bool(self.url and (self.token or (self.role_id and self.secret_id)))

    # ------------------------------------------------------------ lifecycle (one run)
    def setup_for_execution(self, context) -> None:
        self._cache = {}
        self._stop = threading.Event()

    def teardown_after_execution(self, context) -> None:
        self._stop.set()

    @property
    def renewals(self) -> int:
        return self._renewals

    @property
    def renewal_error(self) -> str | None:
        """Why renewal stopped before the run ended (None while it works)."""
        return self._renewal_error

    # ------------------------------------------------------------ requests with retries
    def _call(self, what: str, fn, *args, **kwargs):
        import hvac.exceptions as hv
        import requests
        transient = (requests.ConnectionError, requests.Timeout, hv.VaultDown,
                     hv.InternalServerError, hv.BadGateway, hv.RateLimitExceeded)
        try:
            return with_backoff(lambda: fn(*args, **kwargs),
                                lambda e: isinstance(e, transient) and not isinstance(
                                    e, requests.exceptions.SSLError),
                                self.retries, self.backoff_s)
        except requests.exceptions.SSLError:  # a certificate problem is not transient
            raise CredentialError(
                f"Vault at {self.url}: its TLS certificate is not trusted ({what} refused). "
                "Set VAULT_CACERT to the PEM file of the CA that signed it (VAULT_SKIP_VERIFY="
                "true only for a test server).") from None
        except GaveUp as e:
            kind = ("unreachable" if isinstance(e.last, (requests.ConnectionError,
                                                         requests.Timeout))
                    else f"unavailable ({type(e.last).__name__})")
            raise CredentialError(
                f"Vault at {self.url} is {kind}: {what} failed after {e.attempts} attempts. "
                "Check VAULT_ADDR and that Vault is up and unsealed.").retriable() from None

    def _connect(self):
        import hvac
        import hvac.exceptions as hv
        if not self.configured:
            raise CredentialError("Vault is not configured: set VAULT_ADDR and VAULT_TOKEN "
                                  "(or VAULT_ROLE_ID and VAULT_SECRET_ID for AppRole).")
        verify = (self.ca_cert or True) if self.verify else False
        client = hvac.Client(url=self.url, token=self.token, namespace=self.namespace,
                             verify=verify, timeout=self.timeout_s)
        try:
            if self.token:
                info = self._call("token lookup", client.auth.token.lookup_self)["data"]
                ttl, renewable = int(info.get("ttl") or 0), bool(info.get("renewable"))
            else:
                auth = self._call("AppRole login", client.auth.approle.login,
                                  role_id=self.role_id, secret_id=self.secret_id,
                                  mount_point=self.approle_mount)["auth"]
                client.token = auth["client_token"]
                ttl, renewable = int(auth.get("lease_duration") or 0), bool(auth.get("renewable"))
        except (hv.Forbidden, hv.Unauthorized, hv.InvalidRequest):
            how = "token (VAULT_TOKEN)" if self.token else f"AppRole login (role {self.role_id})"
            raise CredentialError(f"Vault at {self.url} rejected the {how}: it is invalid or "
                                  "expired. Issue a new one.") from None
        secrets.remember(client.token)
        if renewable and ttl > 0:
            self._start_renewer(client, ttl)
        return client

    def _start_renewer(self, client, ttl: int) -> None:
        """Renews the token at half its TTL until the run ends (long Spark jobs outlive TTLs)."""
        stop = self._stop

        def loop(ttl: int = ttl) -> None:
            while not stop.wait(max(ttl / 2, 0.5)):
                try:
                    auth = self._call("token renewal", client.auth.token.renew_self)["auth"]
                    ttl = int(auth.get("lease_duration") or ttl)
                    self._renewals += 1
                except Exception as e:  # noqa: BLE001 - the next read reports a dead token
                    why = (str(e) if isinstance(e, CredentialError)
                           else f"Vault answered {type(e).__name__}")
                    self._renewal_error = why
                    logging.getLogger("pipeline_defs").warning(
                        f"Vault token renewal failed ({why}); secrets already read stay "
                        "usable, reads after the token expires will fail. Renewal stops "
                        "for this run.")
                    return
        self._renewer = threading.Thread(target=loop, name="vault-token-renewer", daemon=True)
        self._renewer.start()

    # ------------------------------------------------------------ secrets
    def read_secret(self, path: str) -> dict[str, Any]:
        """The key/values at `path` (KV v2 paths include data/, as in the original format;
        a v2 path given without it is tried with it: Vault answers such a path 404, or 403
        when the token's policy grants only the data/ form)."""
        with self._lock:
            if path in self._cache:
                return dict(self._cache[path])
            if self._client is None:
                self._client = self._connect()
            data = self._read_kv(path)
            if data is None:
                raise CredentialError(f"Vault has no secret at '{path}' (404). Check the path; "
                                      "on a KV v2 mount it reads like secret/data/NAME.")
            secrets.remember_values_of(data)
            self._cache[path] = dict(data)
            return dict(data)

    def _read_kv(self, path: str) -> dict | None:
        if "/data/" in path or "/" not in path:
            return self._read(path)
        mount, rest = path.split("/", 1)
        try:
            data = self._read(path)
        except CredentialError as refused:
            # a policy granting only secret/data/* refuses the plain form: on a KV v2 mount
            # (Vault's own lookup says so; on KV v1 data/ is just another secret) try data/
            if not _denied(refused) or (v2 := self._kv2_form(path)) is None:
                raise
            try:
                return self._read(v2)
            except CredentialError as again:
                if not _denied(again):
                    raise
                raise refused from None
        return data if data is not None else self._read(f"{mount}/data/{rest}")

    def _kv2_form(self, path: str) -> str | None:
        """`path`'s data/ form when it is on a KV v2 mount, else None."""
        try:
            info = self._client.adapter.get(f"/v1/sys/internal/ui/mounts/{path}")
        except Exception:  # noqa: BLE001 - no answer: no fallback, the refusal stands
            return None
        data = (info or {}).get("data") or {} if isinstance(info, dict) else {}
        mount = str(data.get("path") or "")
        if data.get("type") != "kv" or str((data.get("options") or {}).get("version")) != "2" \
                or not mount or not path.startswith(mount):
            return None
        return f"{mount}data/{path[len(mount):]}"

    def _read(self, path: str) -> dict | None:
        import hvac.exceptions as hv
        try:
            resp = self._call(f"reading '{path}'", self._client.read, path)
        except hv.Forbidden:
            denied = CredentialError(f"Vault denied reading '{path}' (403): the token's policy "
                                     "has no read capability there. Grant it, or fix the path.")
            denied.status = 403
            raise denied from None
        except hv.Unauthorized:
            raise CredentialError(f"Vault rejected the token while reading '{path}' (401): it "
                                  "expired or was revoked.") from None
        except hv.VaultError as e:
            raise CredentialError(f"Vault could not read '{path}': {type(e).__name__}.") from None
        if not resp or not isinstance(resp.get("data"), dict):
            return None
        data = resp["data"]
        if isinstance(data.get("data"), dict) and "metadata" in data:  # KV v2 envelope
            data = data["data"]
        return data

    # ------------------------------------------------------------ audit
    def audit(self, record: dict[str, Any]) -> dict[str, Any]:
        """Appends one credential-access record (never a value) to the audit log."""
        full = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "user": _user(), **record}
        path = Path(self.audit_log or default_audit_log())
        path.parent.mkdir(parents=True, exist_ok=True)
        line = secrets.scrub(json.dumps(full, default=str)) + "\n"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:  # one write of one line with O_APPEND: concurrent runs never interleave records
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        return full


def _denied(e: CredentialError) -> bool:
    """A read the token's policy refuses (403)."""
    return getattr(e, "status", None) == 403


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return str(os.getuid())
