"""${name}, ${env:NAME:-default} and ${DATE...} placeholders in pipeline files.

`${DATE}` is the run's logical date (yyyy-MM-dd), `${DATE-1}` / `${DATE+7}` that many days
before or after, `${DATE:yyyyMMdd}` / `${DATE-1:yyyy/MM/dd}` formatted with a Java/Spark
date pattern. The date is the `DATE` entry of the parameters (the loader puts the run's
date there: today unless a run says otherwise)."""
from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from typing import Any

DATE = "DATE"
_DATE_EXPR = re.compile(r"^DATE(?:([+-])(\d+))?(?::(.+))?$")
_JAVA = {"yyyy": "%Y", "yy": "%y", "MM": "%m", "dd": "%d", "HH": "%H", "mm": "%M",
         "ss": "%S", "DDD": "%j", "EEE": "%a", "MMM": "%b"}

_PLACEHOLDER = re.compile(r"\$\{([^}]*)\}")


class UnresolvedParameter(ValueError):
    def __init__(self, name: str, where: str):
        self.name, self.where = name, where
        super().__init__(name)


class BadDate(ValueError):
    """A ${DATE...} placeholder or date value that cannot be read."""


def java_pattern(pattern: str) -> str:
    """A Java/Spark date pattern (yyyyMMdd, yyyy-MM-dd, dd/MM/yy, ...) as strftime."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "'":  # a quoted literal
            end = pattern.find("'", i + 1)
            if end < 0:
                raise BadDate(f"unclosed quote in date pattern '{pattern}'")
            out.append(pattern[i + 1:end].replace("%", "%%") or "'")
            i = end + 1
            continue
        if ch.isalpha():
            j = i
            while j < len(pattern) and pattern[j] == ch:
                j += 1
            run = pattern[i:j]
            if run not in _JAVA:
                raise BadDate(f"'{run}' in date pattern '{pattern}' is not supported (use "
                              f"{', '.join(_JAVA)})")
            out.append(_JAVA[run])
            i = j
            continue
        out.append("%%" if ch == "%" else ch)
        i += 1
    return "".join(out)


def parse_date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise BadDate(f"'{value}' is not a date (yyyy-MM-dd)") from None


def _date(expr: str, params: Mapping[str, str], where: str) -> str:
    m = _DATE_EXPR.match(expr)
    if not m:
        raise BadDate(f"${{{expr}}}: write ${{DATE}}, ${{DATE-N}}, ${{DATE+N}} or "
                      "${DATE:yyyyMMdd}")
    day = parse_date(params.get(DATE) or dt.date.today().isoformat())
    if m.group(2):
        n = int(m.group(2))
        day += dt.timedelta(days=n if m.group(1) == "+" else -n)
    return day.strftime(java_pattern(m.group(3))) if m.group(3) else day.isoformat()


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

    def __init__(self, name: str, value: str, where: str, quoted: bool):
        self.name, self.where = name, where
        how = ("inside a quoted SQL string it may not contain a quote or a backslash"
               if quoted else "outside quotes it may only be a plain value (letters, digits, "
               "_ . : + -, no spaces, no --)")
        super().__init__(f"the value of ${{{name}}} ({value[:40]!r}) would change the SQL "
                         f"it is put into: {how}")


_PLAIN = re.compile(r"^[A-Za-z0-9_.:+\-]*$")


def _quote_at(text: str, pos: int) -> str | None:
    """The quote character (' " `) whose literal encloses position `pos`, if any."""
    quote = None
    i = 0
    while i < pos:
        ch = text[i]
        if quote is None:
            if ch in "'\"`":
                quote = ch
        elif ch == "\\":
            i += 1
        elif ch == quote:
            if i + 1 < len(text) and text[i + 1] == quote:  # a doubled quote
                i += 1
            else:
                quote = None
        i += 1
    return quote


def _sql_safe(name: str, value: str, template: str, pos: int, where: str) -> str:
    quote = _quote_at(template, pos)
    if quote is not None:
        if quote in value or "\\" in value:
            raise UnsafeInSql(name, value, where, True)
    elif not _PLAIN.match(value) or "--" in value:
        raise UnsafeInSql(name, value, where, False)
    return value


def substitute(value: Any, params: Mapping[str, str], env: Mapping[str, str] | None = None,
               where: str = "", sql: bool = False) -> Any:
    """Replace placeholders in every string of `value` (recursively). `$${x}` stays literal.
    `sql`: the strings are SQL text, where a value may never change the statement's
    structure (UnsafeInSql otherwise)."""
    env = os.environ if env is None else env
    if isinstance(value, str):
        def repl(m: re.Match) -> str:
            if m.start() > 0 and value[m.start() - 1] == "$":
                return m.group(0)
            got = _resolve(m.group(1), params, env, where)
            return _sql_safe(m.group(1), got, value, m.start(), where) if sql else got
        return _PLACEHOLDER.sub(repl, value).replace("$${", "${")
    if isinstance(value, list):
        return [substitute(v, params, env, f"{where}[{i}]", sql) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: substitute(v, params, env, f"{where}.{k}" if where else k, sql)
                for k, v in value.items()}
    return value


def substitute_config(config: Mapping[str, Any], params: Mapping[str, str],
                      env: Mapping[str, str] | None, sql_fields: frozenset[str]) -> dict:
    """A step's config with its placeholders filled: its own `parameters` first (they may use
    the pipeline's params and ${DATE...}), then every key, SQL keys guarded."""
    scope = dict(params)
    own = config.get("parameters")
    if isinstance(own, dict):
        scope.update({k: str(v) for k, v in
                      substitute(own, params, env, "config.parameters").items()})
    return {k: substitute(v, scope, env, f"config.{k}", k in sql_fields)
            for k, v in config.items()}


def resolve_params(defaults: Mapping[str, str], overrides: Mapping[str, str],
                   env: Mapping[str, str] | None = None, date: str | None = None
                   ) -> dict[str, str]:
    """Parameter values: defaults (which may read the environment and the run's date), then
    overrides; `DATE` is the run's date (given, else an override, else today)."""
    day = date or overrides.get(DATE) or dt.date.today().isoformat()
    parse_date(day)
    resolved = {k: substitute(v, {DATE: day}, env, f"params.{k}") for k, v in defaults.items()
                if k != DATE}
    resolved.update(overrides)
    resolved[DATE] = day
    return resolved
