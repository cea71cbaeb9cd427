"""Credentials of a connection: from Vault (`credentialPath`) or, with a warning, from the
step's config; every access audited, never a value."""
from __future__ import annotations

from typing import Any

from pydantic import Field, SecretStr

from pipeline_defs.common import secrets
from pipeline_defs.common.errors import CredentialError
from pipeline_defs.config.model import StepModel
from pipeline_defs.steps.context import StepContext


class Credentialed(StepModel):
    """Steps that may read credentials from Vault."""

    credential_path: str | None = Field(
        None, description="Vault KV path of the credentials, e.g. secret/data/postgres/prod. "
                          "Without it, credentials come from this config (with a warning).")


def credentials(cfg: Credentialed, ctx: StepContext, literal: dict[str, Any],
                required: tuple[str, ...], kind: str) -> dict[str, Any]:
    """The connection's credentials: from Vault when `credentialPath` is set, else from the
    config (with a warning). Every access, granted or failed, is audited (never a value)."""
    where = f"pipeline '{ctx.pipeline}', step {ctx.step} ({ctx.method})"
    record = {"pipeline": ctx.pipeline, "run_id": ctx.run_id, "step": ctx.step,
              "method": ctx.method, "credentialPath": cfg.credential_path, "type": kind,
              "source": "vault" if cfg.credential_path else "config"}
    try:
        c = _credentials(cfg, ctx, literal, required, where)
    except Exception as e:
        _audit(ctx, {**record, "outcome": "failure", "error": type(e).__name__})
        raise
    _audit(ctx, {**record, "outcome": "success", "keys": sorted(c)})
    return c


def _audit(ctx: StepContext, record: dict[str, Any]) -> None:
    if ctx.audit is not None:
        ctx.audit(record)


def _credentials(cfg: Credentialed, ctx: StepContext, literal: dict[str, Any],
                 required: tuple[str, ...], where: str) -> dict[str, Any]:
    literal = {k: (v.get_secret_value() if isinstance(v, SecretStr) else v)
               for k, v in literal.items() if v is not None}
    if cfg.credential_path:
        if ctx.read_secret is None:
            raise CredentialError(f"{where}: credentialPath '{cfg.credential_path}' needs Vault, "
                                  "and none is configured. Set VAULT_ADDR and VAULT_TOKEN.")
        secret = dict(ctx.read_secret(cfg.credential_path))
        merged = {**literal, **secret}
        source = f"Vault secret '{cfg.credential_path}'"
    else:
        merged = literal
        secrets.remember_values_of(merged)
        if any(secrets.SECRET_KEY.search(k) for k in merged):
            ctx.log.warning(f"{where} reads credentials from its own config; "
                            "keep them in Vault and set credentialPath.")
        source = "the step config"
    missing = [k for k in required if merged.get(k) in (None, "")]
    if missing:
        known = ", ".join(f"{k} '{merged[k]}'" for k in ("host", "port", "database", "username")
                          if merged.get(k) not in (None, ""))
        raise CredentialError(f"{where}: {source} lacks {', '.join(missing)}"
                              + (f" (it has {known})" if known else "") +
                              f". Add {'them' if len(missing) > 1 else 'it'} there.")
    return merged
