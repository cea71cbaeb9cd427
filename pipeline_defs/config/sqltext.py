"""Where a `${...}` placeholder sits in SQL text, decided by a real SQL lexer (sqlglot's, in
the dialect the text is written in: Spark SQL, PostgreSQL, MySQL), and which values may go
there. A value never changes the statement's structure:

* inside a quoted string (`'...'`, `"..."`, `r'...'`, `$$...$$`) it may hold anything but
  the literal's own quote and a backslash; after a type the template writes (`DATE '${d}'`,
  `TIMESTAMP '${t}'`) it must be a date / timestamp;
* inside a quoted identifier (`` `...` ``) anything but that quote;
* outside quotes it must be one numeric or boolean literal (`42`, `-1.5`, `true`), or,
  right after `DATE` / `TIMESTAMP`, a quoted date / timestamp (`'2024-01-31'`): never an
  identifier, an operator, a comment or a second statement;
* inside a comment it may not end the comment.

Then the whole text is lexed again with the values in it, and must give the same tokens as
the template did: a value that the rules above let through and that would still change the
structure (say `-${n}` with n = `-1`, which makes `--1` a comment) is refused too."""
from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from functools import lru_cache

from sqlglot.dialects import Dialect
from sqlglot.errors import TokenError
from sqlglot.tokens import Token, TokenType

THIS = "__THIS__"
"""In a transform.sql query: the current DataFrame (the previous step's result)."""

_STRINGS = {TokenType.STRING, TokenType.RAW_STRING, TokenType.NATIONAL_STRING,
            TokenType.BYTE_STRING, TokenType.HEREDOC_STRING, TokenType.UNICODE_STRING}
_TYPED = {TokenType.DATE: "date", TokenType.TIMESTAMP: "timestamp",
          TokenType.TIMESTAMPTZ: "timestamp", TokenType.TIMESTAMPLTZ: "timestamp",
          TokenType.TIMESTAMPNTZ: "timestamp", TokenType.DATETIME: "timestamp"}
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_BOOLEAN = re.compile(r"(?i)true|false")
_QUOTED = re.compile(r"'([^'\\]*)'")


class UnsafeSqlValue(ValueError):
    """The value cannot go where its placeholder sits; the message says why and how."""


@dataclass(frozen=True)
class Placeholder:
    start: int  # where `${...}` starts in the template
    end: int  # just after its `}`
    name: str
    value: str


@lru_cache(maxsize=8)
def _tokenizer(dialect: str):
    return Dialect.get_or_raise(dialect).tokenizer()


def _tokens(text: str, dialect: str) -> list[Token]:
    return _tokenizer(dialect).tokenize(text)


def _sentinel(i: int) -> str:
    return f"__pipeline_placeholder_{i}__"


def substitute_sql(template: str, found: list[Placeholder], dialect: str = "spark") -> str:
    """The template with each placeholder replaced by its value, checked by the lexer (see
    the module's docstring). Raises UnsafeSqlValue naming the placeholder."""
    if not found:
        return template
    marked, spans, pos = [], [], 0  # the template with a sentinel per placeholder
    for i, p in enumerate(found):
        marked.append(template[pos:p.start])
        at = sum(map(len, marked))
        marked.append(_sentinel(i))
        spans.append((at, at + len(_sentinel(i))))
        pos = p.end
    marked.append(template[pos:])
    text = "".join(marked)
    try:
        tokens = _tokens(text, dialect)
    except TokenError:
        raise UnsafeSqlValue(f"the SQL around ${{{found[0].name}}} cannot be read (an "
                             "unclosed quote or comment?), so where its value would go is "
                             "unknown") from None
    bare: dict[int, str] = {}  # token index -> the value standing alone there
    for i, (p, (a, b)) in enumerate(zip(found, spans, strict=True)):
        k = next((k for k, t in enumerate(tokens) if t.start <= a and b - 1 <= t.end), None)
        _check(p, text, tokens, k, a, b, i)
        if k is not None and (tokens[k].start, tokens[k].end + 1) == (a, b):
            bare[k] = p.value
    out = _fill(text, found)
    _same_structure(out, found, tokens, bare, dialect)
    return out


def _check(p: Placeholder, text: str, tokens: list[Token], k: int | None, a: int, b: int,
           i: int) -> None:
    v, name = p.value, f"${{{p.name}}}"
    if k is None:  # in a comment
        if "*/" in v or "\n" in v or "\r" in v:
            raise UnsafeSqlValue(f"{name} sits in a comment, and its value would end it")
        return
    t = tokens[k]
    if t.token_type in _STRINGS:
        quote = _quote_of(text, t)
        escapes = t.token_type != TokenType.RAW_STRING  # r'...': a backslash is a backslash
        if quote in v or (escapes and "\\" in v) or \
                (t.token_type == TokenType.HEREDOC_STRING and "$" in v):
            raise UnsafeSqlValue(f"{name} sits inside a quoted SQL string, where a value may "
                                 f"not contain its quote ({quote}) or a backslash")
        typed = _TYPED.get(tokens[k - 1].token_type) if k else None
        if typed and not _is_temporal(t.text.replace(_sentinel(i), v), typed):
            raise UnsafeSqlValue(f"{name} sits in a {typed.upper()} literal, and "
                                 f"{t.text.replace(_sentinel(i), v)!r} is not a {typed} "
                                 "(yyyy-MM-dd" + (" HH:mm:ss" if typed == "timestamp" else "")
                                 + ")")
        return
    if t.token_type == TokenType.IDENTIFIER:  # a quoted identifier
        quote = text[t.start]
        if quote in v:
            raise UnsafeSqlValue(f"{name} sits inside a quoted identifier, where a value may "
                                 f"not contain its quote ({quote})")
        return
    if (t.start, t.end + 1) != (a, b):  # part of a word: the value would build a name
        raise UnsafeSqlValue(f"{name} is part of the SQL word "
                             f"'{text[t.start:t.end + 1].replace(_sentinel(i), name)}', so its "
                             "value would make a name or keyword; a value may only be a "
                             f"literal (quote it: '{name}')")
    typed = _TYPED.get(tokens[k - 1].token_type) if k else None
    if typed:
        m = _QUOTED.fullmatch(v)
        if not m or not _is_temporal(m.group(1), typed):
            raise UnsafeSqlValue(f"{name} follows {typed.upper()}, so its value must be a "
                                 f"quoted {typed} such as '2024-01-31' (got {v[:40]!r})")
        return
    if not (_NUMBER.fullmatch(v) or _BOOLEAN.fullmatch(v)):
        raise UnsafeSqlValue(f"{name} sits outside quotes, where a value may only be one "
                             f"number or true/false (got {v[:40]!r}): it could otherwise "
                             "name a column or add an operator; quote it ('" + name + "') "
                             "to compare with text")


def _quote_of(text: str, t: Token) -> str:
    """The quote character of a string token: the first quote at or after its start (raw,
    national and escape strings begin with a letter)."""
    head = text[t.start:t.end + 1]
    return next((c for c in head if c in "'\"$"), "'")


def _is_temporal(value: str, kind: str) -> bool:
    try:
        (dt.date if kind == "date" else dt.datetime).fromisoformat(value.strip())
        return True
    except ValueError:
        return kind == "timestamp" and _is_temporal(value, "date")


def _same_structure(out: str, found: list[Placeholder], before: list[Token],
                    bare: dict[int, str], dialect: str) -> None:
    """`out` lexes as the template did: the same tokens, the values in the strings and
    identifiers that held their placeholders, and each value that stood alone as the
    tokens of that value by itself (a number, `-` and a number, a quoted date)."""
    expect: list[tuple] = []
    for k, t in enumerate(before):
        if k in bare:
            expect += [(v.token_type, v.text) for v in _tokens(bare[k], dialect)]
        else:
            expect.append((t.token_type, _fill(t.text, found)))
    try:
        after = [(t.token_type, t.text) for t in _tokens(out, dialect)]
    except TokenError:
        after = None
    if after != expect:
        names = ", ".join(dict.fromkeys(f"${{{p.name}}}" for p in found))
        raise UnsafeSqlValue(f"with the value of {names} the SQL would read differently "
                             "than it is written (its tokens change)")


def _fill(text: str, found: list[Placeholder]) -> str:
    for i, p in enumerate(found):
        text = text.replace(_sentinel(i), p.value)
    return text
