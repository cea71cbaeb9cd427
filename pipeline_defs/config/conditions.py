"""A step's `condition`: a small boolean language, parsed here and never evaluated as Python.

    previous_step_count > 0 and not (steps.orders.rows < 10 or env_name == 'test')

Names: `previous_step_count` (rows of the step's input), `steps.<name>.rows` (rows of an
earlier step's output), `execution_date` (the run's date, yyyy-MM-dd), and the pipeline's
params. Literals: numbers, 'single' or "double" quoted strings, true/false. Operators:
== = != <> < <= > >=, and, or, not, parentheses."""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(r"""\s*(?:
    (?P<num>-?\d+(?:\.\d+)?) |
    (?P<str>'(?:[^']|'')*'|"(?:[^"]|"")*") |
    (?P<op>==|!=|<>|<=|>=|=|<|>|\(|\)) |
    (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_\-]*)*)
)""", re.VERBOSE)
_COMPARE = {"==": lambda a, b: a == b, "=": lambda a, b: a == b, "!=": lambda a, b: a != b,
            "<>": lambda a, b: a != b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


class ConditionError(ValueError):
    """A condition that cannot be parsed, or names what does not exist."""


@dataclass(frozen=True)
class Condition:
    text: str
    tree: tuple

    def names(self) -> set[str]:
        out: set[str] = set()

        def walk(t):
            if t[0] == "name":
                out.add(t[1])
            for x in t[1:]:
                if isinstance(x, tuple):
                    walk(x)
        walk(self.tree)
        return out

    def steps(self) -> set[str]:
        """Step names read by `steps.<name>.rows`."""
        return {n.split(".")[1] for n in self.names() if n.startswith("steps.")}

    def evaluate(self, value_of: Callable[[str], Any]) -> bool:
        """True or False; `value_of(name)` gives a name's value (called only for the names
        the evaluation reaches, so an unneeded count is never taken)."""
        return bool(_eval(self.tree, value_of))


def _tokens(text: str) -> list[tuple[str, str]]:
    pos, out = 0, []
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ConditionError(f"cannot read '{text[pos:].strip()[:20]}' at character {pos + 1}")
        kind = m.lastgroup
        value = m.group(kind)
        if kind == "name" and value.lower() in ("and", "or", "not", "true", "false"):
            kind, value = ("bool", value.lower()) if value.lower() in ("true", "false") \
                else ("kw", value.lower())
        out.append((kind, value))
        pos = m.end()
    return out


def parse(text: str) -> Condition:
    toks = _tokens(text)
    if not toks:
        raise ConditionError("the condition is empty")
    parser = _Parser(toks)
    tree = parser.expr()
    if parser.pos != len(toks):
        raise ConditionError(f"unexpected '{toks[parser.pos][1]}' after "
                             f"'{parser.so_far()}'")
    return Condition(text, tree)


class _Parser:
    """Recursive descent: or > and > not > comparison > atom."""

    def __init__(self, toks: list[tuple[str, str]]):
        self.toks, self.pos = toks, 0

    def so_far(self) -> str:
        return " ".join(t[1] for t in self.toks[:self.pos])

    def peek(self):
        return self.toks[self.pos] if self.pos < len(self.toks) else (None, None)

    def take(self, kind=None, value=None):
        k, v = self.peek()
        if k is None or (kind and k != kind) or (value and v != value):
            want = value or kind or "a value"
            raise ConditionError(f"expected {want} after '{self.so_far()}'" if self.pos
                                 else f"expected {want} at the start")
        self.pos += 1
        return k, v

    def expr(self):
        left = self.conj()
        while self.peek() == ("kw", "or"):
            self.take()
            left = ("or", left, self.conj())
        return left

    def conj(self):
        left = self.neg()
        while self.peek() == ("kw", "and"):
            self.take()
            left = ("and", left, self.neg())
        return left

    def neg(self):
        if self.peek() == ("kw", "not"):
            self.take()
            return ("not", self.neg())
        left = self.atom()
        k, v = self.peek()
        if k == "op" and v in _COMPARE:
            self.take()
            return ("cmp", v, left, self.atom())
        return left

    def atom(self):
        k, v = self.take()
        if k == "op" and v == "(":
            inner = self.expr()
            self.take("op", ")")
            return inner
        if k == "num":
            return ("lit", float(v) if "." in v else int(v))
        if k == "str":
            return ("lit", v[1:-1].replace(v[0] * 2, v[0]))
        if k == "bool":
            return ("lit", v == "true")
        if k == "name":
            return ("name", v)
        raise ConditionError(f"unexpected '{v}'")


def _eval(t: tuple, value_of: Callable[[str], Any]):
    kind = t[0]
    if kind == "lit":
        return t[1]
    if kind == "name":
        return value_of(t[1])
    if kind == "not":
        return not _eval(t[1], value_of)
    if kind == "and":
        return _eval(t[1], value_of) and _eval(t[2], value_of)
    if kind == "or":
        return _eval(t[1], value_of) or _eval(t[2], value_of)
    a, b = _eval(t[2], value_of), _eval(t[3], value_of)
    if isinstance(a, str) != isinstance(b, str):  # a param compared with a number
        try:
            a, b = (float(a), b) if isinstance(a, str) else (a, float(b))
        except ValueError:
            a, b = str(a), str(b)
    return _COMPARE[t[1]](a, b)


def problems(text: str, earlier_steps: set[str], params: Mapping[str, str]) -> list[str]:
    """Why the condition cannot run (syntax, unknown names), as messages."""
    try:
        c = parse(text)
    except ConditionError as e:
        return [f"'{text}': {e}"]
    out = []
    for name in sorted(c.names()):
        if name in ("previous_step_count", "execution_date") or name in params:
            continue
        parts = name.split(".")
        if parts[0] == "steps" and len(parts) == 3 and parts[2] == "rows":
            if parts[1] not in earlier_steps:
                known = ", ".join(sorted(earlier_steps)) or "none with a name"
                out.append(f"'{text}': steps.{parts[1]} names no earlier step (earlier steps: "
                           f"{known})")
            continue
        out.append(f"'{text}': unknown name '{name}' (use previous_step_count, "
                   "steps.<name>.rows, execution_date or a param)")
    return out
