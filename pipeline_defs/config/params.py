"""${name}, ${env:NAME:-default} and ${DATE...} placeholders in pipeline files.

`${DATE}` is the date of the run's logical time (yyyy-MM-dd), `${DATE-1}` / `${DATE+7}` that
many days before or after, `${DATE:yyyyMMdd}` / `${DATE-1:yyyy/MM/dd}` / `${DATE:HH}` the
time formatted with a Java/Spark date-time pattern (config/dates.py). The time is the `DATE`
entry of the parameters (the loader puts the run's there: a partition's start, a schedule
tick's, `--date`, else now), hours included."""
from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline_defs.config.dates import BadDate, iso, java_format, parse_time
from pipeline_defs.config.sqltext import Placeholder, UnsafeSqlValue, substitute_sql

DATE = "DATE"
_DATE_EXPR = re.compile(r"^DATE(?:([+-])(\d+))?(?::(.+))?$")

_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


class UnresolvedParameter(ValueError):
    def __init__(self, name: str, where: str):
        self.name, self.where = name, where
        super().__init__(name)


def _date(expr: str, params: Mapping[str, str], where: str) -> str:
    m = _DATE_EXPR.match(expr)
    if not m:
        raise BadDate(f"${{{expr}}}: write ${{DATE}}, ${{DATE-N}}, ${{DATE+N}} or "
                      "${DATE:yyyyMMdd}")
    t = parse_time(params.get(DATE) or now())
    if m.group(2):
        n = int(m.group(2))
        t += dt.timedelta(days=n if m.group(1) == "+" else -n)
    return java_format(t, m.group(3)) if m.group(3) else t.date().isoformat()


def now() -> str:
    """The logical time of a run that names none: this moment, local time."""
    return iso(dt.datetime.now())


def _resolve(expr: str, params: Mapping[str, str], env: Mapping[str, str], where: str) -> str:
    if expr == DATE or expr.startswith((f"{DATE}-", f"{DATE}+", f"{DATE}:")):
        try:
            return _date(expr, params, where)
        except BadDate as e:
            e.where = where  # the field it was written in
            raise
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


class UnsafeInSql(ValueError):
    """A parameter's value that could change the structure of the SQL it is put into."""

    def __init__(self, name: str, value: str, where: str, reason: str, in_name: bool = False):
        self.name, self.where, self.in_name = name, where, in_name
        super().__init__(f"the value of ${{{name}}} ({value[:40]!r}) cannot go into this SQL: "
                         f"{reason}")


def _is_sql(where: str, sql_fields: frozenset[str]) -> bool:
    """Is the string at `where` (config.merge.matchedCondition, config.rules[0],
    config.columns.year) one of the SQL fields (`merge.matchedCondition`, `rules`,
    `columns`: a field's own strings, and those of the lists and maps it holds)?"""
    path = re.sub(r"\[\d+\]", "", where.removeprefix("config."))
    parts = path.split(".")
    return any(".".join(parts[:n]) in sql_fields for n in range(1, len(parts) + 1))


# A name built from values (`${schema}.orders`, `${table}_km`): parts of letters, digits, _
# and $, joined by dots; the template itself holds nothing else (no quote, space, bracket).
_NAME_TEMPLATE = re.compile(r"(?:[A-Za-z0-9_$.]|\$\{[^}]*\})+")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$]*)*")


@dataclass(frozen=True)
class SqlSpec:
    """Where a step's config holds SQL: `fields` are SQL text (in `dialect`, sqlglot's
    name), where a value may never change the statement's structure; `names` are names put
    into SQL (a JDBC table), where values may build a name and nothing else (a name field
    written as SQL, a `(SELECT ...) t` subquery, is SQL text)."""
    fields: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()
    dialect: str = "spark"

    @classmethod
    def of(cls, model) -> SqlSpec:
        return cls(getattr(model, "sql_fields", frozenset()),
                   getattr(model, "name_fields", frozenset()),
                   getattr(model, "sql_dialect", "spark"))


PLAIN = SqlSpec()


def substitute(value: Any, params: Mapping[str, str], env: Mapping[str, str] | None = None,
               where: str = "", sql: SqlSpec = PLAIN) -> Any:
    """Replace placeholders in every string of `value` (recursively). `$${x}` stays literal.
    Strings at a path in `sql.fields` are SQL text, where a value may never change the
    statement's structure (config/sqltext.py); in `sql.names`, a name (UnsafeInSql
    otherwise)."""
    env = os.environ if env is None else env
    if isinstance(value, str):
        if _is_sql(where, sql.names) and _NAME_TEMPLATE.fullmatch(value):
            return _name(value, params, env, where)
        if not _is_sql(where, sql.fields | sql.names):
            return _plain(value, params, env, where)
        found = _found(value, params, env, where)
        try:
            return substitute_sql(value, found, sql.dialect).replace("$${", "${")
        except UnsafeSqlValue as e:
            bad = next((p for p in found if f"${{{p.name}}}" in str(e)), found[0])
            raise UnsafeInSql(bad.name, bad.value, where, str(e)) from None
    if isinstance(value, list):
        return [substitute(v, params, env, f"{where}[{i}]", sql) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: substitute(v, params, env, f"{where}.{k}" if where else k, sql)
                for k, v in value.items()}
    return value


def _found(value: str, params, env, where: str) -> list[Placeholder]:
    return [Placeholder(m.start(), m.end(), m.group(1), _resolve(m.group(1), params, env, where))
            for m in _PLACEHOLDER.finditer(value)
            if not (m.start() > 0 and value[m.start() - 1] == "$")]


def _plain(value: str, params, env, where: str) -> str:
    def repl(m: re.Match) -> str:
        if m.start() > 0 and value[m.start() - 1] == "$":
            return m.group(0)
        return _resolve(m.group(1), params, env, where)
    return _PLACEHOLDER.sub(repl, value).replace("$${", "${")


def _name(value: str, params, env, where: str) -> str:
    """A name field built from values: the result must be a (dotted) name."""
    out = _plain(value, params, env, where)
    if "$${" not in value and not _NAME.fullmatch(out):
        found = _found(value, params, env, where)
        bad = next((p for p in found if not re.fullmatch(r"[A-Za-z0-9_$.]*", p.value)),
                   found[0] if found else Placeholder(0, 0, "?", out))
        raise UnsafeInSql(bad.name, bad.value, where, f"this field is a name, and {out[:60]!r} "
                          "is not one: a value put into a name may hold letters, digits, _ and "
                          "$ (a dot between parts), never a space, quote, bracket or operator",
                          in_name=True)
    return out


def substitute_config(config: Mapping[str, Any], params: Mapping[str, str],
                      env: Mapping[str, str] | None, sql: SqlSpec = PLAIN) -> dict:
    """A step's config with its placeholders filled: its own `parameters` first (they may use
    the pipeline's params and ${DATE...}), then every key, SQL keys and name keys (paths as
    the file writes them: `query`, `merge.matchedCondition`) guarded as `sql` says."""
    scope = dict(params)
    own = config.get("parameters")
    if isinstance(own, dict):
        scope.update({k: str(v) for k, v in
                      substitute(own, params, env, "config.parameters").items()})
    return {k: substitute(v, scope, env, f"config.{k}", sql) for k, v in config.items()}


def resolve_params(defaults: Mapping[str, str], overrides: Mapping[str, str],
                   env: Mapping[str, str] | None = None, date: str | None = None
                   ) -> dict[str, str]:
    """Parameter values: defaults (which may read the environment and the run's date), then
    overrides; `DATE` is the run's logical time (given, else an override, else now), as
    `yyyy-MM-ddTHH:mm:ss`."""
    day = iso(parse_time(date or overrides.get(DATE) or now()))
    resolved = {k: substitute(v, {DATE: day}, env, f"params.{k}") for k, v in defaults.items()
                if k != DATE}
    resolved.update(overrides)
    resolved[DATE] = day
    return resolved
