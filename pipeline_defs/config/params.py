"""${name} and ${env:NAME:-default} placeholders in pipeline files."""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


class UnresolvedParameter(ValueError):
    def __init__(self, name: str, where: str):
        self.name, self.where = name, where
        super().__init__(name)


def _resolve(expr: str, params: Mapping[str, str], env: Mapping[str, str], where: str) -> str:
    if expr.startswith("env:"):
        name, sep, default = expr[4:].partition(":-")
        if name in env:
            return env[name]
        if sep:
            return default
        raise UnresolvedParameter(expr, where)
    if expr in params:
        return params[expr]
    raise UnresolvedParameter(expr, where)


def substitute(value: Any, params: Mapping[str, str], env: Mapping[str, str] | None = None,
               where: str = "") -> Any:
    """Replace placeholders in every string of `value` (recursively). `$${x}` stays literal."""
    env = os.environ if env is None else env
    if isinstance(value, str):
        def repl(m: re.Match) -> str:
            if m.start() > 0 and value[m.start() - 1] == "$":
                return m.group(0)
            return _resolve(m.group(1), params, env, where)
        return _PLACEHOLDER.sub(repl, value).replace("$${", "${")
    if isinstance(value, list):
        return [substitute(v, params, env, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: substitute(v, params, env, f"{where}.{k}" if where else k)
                for k, v in value.items()}
    return value


def resolve_params(defaults: Mapping[str, str], overrides: Mapping[str, str],
                   env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Parameter values: defaults (which may read the environment), then overrides."""
    resolved = {k: substitute(v, {}, env, f"params.{k}") for k, v in defaults.items()}
    resolved.update(overrides)
    return resolved
