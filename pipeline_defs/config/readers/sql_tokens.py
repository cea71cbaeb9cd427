"""The tokens of a SQL pipeline file and the parser's means over them: sqlglot's tokenizer
(Spark dialect), names, quoted strings, values (SQL literals or JSON), `(key = value)` lists,
and the SQL fragments a clause holds (a predicate, a SELECT, a check), cut where the next
clause begins and parsed by sqlglot for their errors. sql_file.py has the language."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

CLAUSES = ("EXTRACT", "TRANSFORM", "VALIDATE", "LOAD")
# what may follow each clause keyword: how a clause is told from a column named `load`
FOLLOWS = {"EXTRACT": ("FROM", "METHOD"), "TRANSFORM": ("SELECT", "WITH", "METHOD", "("),
           "VALIDATE": ("CHECK", "METHOD"), "LOAD": ("TO", "METHOD")}
_PLACEHOLDER = re.compile(r"\$\{[^}]*\}")  # the parameter syntax, not SQL


class SqlSyntaxError(Exception):
    def __init__(self, pos: int, message: str, fix: str = ""):
        super().__init__(message)
        self.pos, self.message, self.fix = pos, message, fix


@dataclass
class Tok:
    kind: str  # sqlglot's token type name
    text: str  # as sqlglot gives it (strings unquoted and unescaped)
    start: int
    end: int  # inclusive, as sqlglot

    @property
    def word(self) -> str:
        # sqlglot makes one token of some word pairs ("PARTITION BY", "GROUP BY")
        return " ".join(self.text.upper().split()) if self.kind not in (
            "STRING", "IDENTIFIER") else ""


def where(file: str, text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return f"{file}:{line}:{pos - text.rfind(chr(10), 0, pos)}"


def tokenize(text: str) -> list[Tok]:
    from sqlglot.dialects.spark import Spark
    from sqlglot.errors import TokenError
    # ${...} masked by an identifier of the same length, so offsets stay the file's
    masked = _PLACEHOLDER.sub(lambda m: "p" + "_" * (len(m.group()) - 1), text)
    try:
        toks = [Tok(t.token_type.name, t.text, t.start, t.end)
                for t in Spark().tokenize(masked)]
    except TokenError as e:
        raise SqlSyntaxError(_token_error_pos(masked, str(e)), f"cannot read the SQL: {e}.",
                             "Check the quotes and comments around there.") from None
    for t in toks:  # a quoted string or name holding a ${param}: its text from the file's
        if t.kind in ("STRING", "IDENTIFIER") and "${" in text[t.start:t.end + 1]:
            t.text = Spark().tokenize(text[t.start:t.end + 1])[0].text
    return toks


def _token_error_pos(text: str, message: str) -> int:
    m = re.search(r"line (\d+), col: (\d+)", message)  # sqlglot's message, not SQL
    if not m:
        return 0
    line, col = int(m.group(1)), int(m.group(2))
    starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
    return starts[min(line, len(starts)) - 1] + max(col - 1, 0)


class TokenParser:
    def __init__(self, text: str, file: str):
        self.text, self.file = text, file
        self.toks = tokenize(text)
        self.i = 0
        self.registered: list[str] = []  # names given by AS so far

    # ------------------------------------------------------------ tokens
    def peek(self, k: int = 0) -> Tok | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def at(self, *words: str) -> bool:
        t = self.peek()
        return t is not None and (t.word in words or t.text in words and t.kind not in (
            "STRING", "IDENTIFIER"))

    def take(self) -> Tok:
        t = self.peek()
        if t is None:
            raise SqlSyntaxError(len(self.text), "the file ends too early.",
                                 "Complete the pipeline (a CREATE PIPELINE ... AS and its "
                                 "clauses).")
        self.i += 1
        return t

    def expect(self, *words: str, after: str = "", fix: str = "") -> Tok:
        if self.at(*words):
            return self.take()
        t = self.peek()
        found = f"found '{self.src(t)}'" if t else "found the end of the file"
        want = " or ".join(words)
        raise SqlSyntaxError(t.start if t else len(self.text),
                             f"expected {want}{' after ' + after if after else ''}, {found}.",
                             fix)

    def src(self, t: Tok) -> str:
        return self.text[t.start:t.end + 1]

    def name(self, what: str) -> str:
        """An identifier (plain, `quoted` or a ${param}) as the file writes it, unquoted."""
        t = self.peek()
        if t is None or t.kind in ("STRING", "NUMBER") or not (
                t.kind in ("VAR", "IDENTIFIER") or t.text.isidentifier()):
            found = f"'{self.src(t)}'" if t else "the end of the file"
            raise SqlSyntaxError(t.start if t else len(self.text),
                                 f"expected {what}, found {found}.",
                                 "Write a name: letters, digits and _, or `quoted`.")
        self.take()
        return t.text if t.kind == "IDENTIFIER" else self.src(t)

    def dotted(self, what: str) -> str:
        parts = [self.name(what)]
        while self.at("."):
            self.take()
            parts.append(self.name(what))
        return ".".join(parts)

    def string(self, what: str) -> str:
        t = self.peek()
        if t is None or t.kind != "STRING":
            found = f"'{self.src(t)}'" if t else "the end of the file"
            raise SqlSyntaxError(t.start if t else len(self.text),
                                 f"expected {what} as a quoted string, found {found}.",
                                 "Quote it: '...'.")
        self.take()
        return t.text

    def names(self, parens: bool = False) -> list[str]:
        """Columns: `a, b` or `(a, b)`; with parens the parentheses are required."""
        wrapped = self.at("(")
        if parens and not wrapped:
            self.expect("(")
        if wrapped:
            self.take()
        out = [self.name("a column")]
        while self.at(","):
            self.take()
            out.append(self.name("a column"))
        if wrapped:
            self.expect(")", after="the columns")
        return out

    # ------------------------------------------------------------ values
    def value(self) -> Any:
        """A JSON value ({...}, [...]) or an SQL literal: 'text', 12, 1.5, -3, TRUE, NULL."""
        t = self.peek()
        if t is None:
            raise SqlSyntaxError(len(self.text), "expected a value, found the end of the file.")
        if t.text in ("{", "["):
            start, depth = t.start, 0
            while True:
                u = self.take()
                depth += u.text in ("{", "[") and u.kind != "STRING"
                depth -= u.text in ("}", "]") and u.kind != "STRING"
                if depth == 0:
                    break
            raw = self.text[start:u.end + 1]
            try:
                return json.loads(raw)
            except json.JSONDecodeError as e:
                raise SqlSyntaxError(start + e.pos, f"not valid JSON: {e.msg}.",
                                     "Write JSON values with double quotes.") from None
        if t.text == "-":
            self.take()
            v = self.value()
            if not isinstance(v, int | float):
                raise SqlSyntaxError(t.start, "expected a number after '-'.")
            return -v
        self.take()
        if t.kind == "STRING":
            return t.text
        if t.kind == "NUMBER":
            return float(t.text) if any(c in t.text for c in ".eE") else int(t.text)
        if t.word in ("TRUE", "FALSE"):
            return t.word == "TRUE"
        if t.word == "NULL":
            return None
        raise SqlSyntaxError(t.start, f"expected a value ('text', a number, TRUE, FALSE, NULL "
                             f"or JSON), found '{self.src(t)}'.")

    def options(self, assign: bool = True) -> dict[str, Any]:
        """(key = value, ...); with assign False `key 'value'` is accepted too (OPTIONS)."""
        self.expect("(")
        out: dict[str, Any] = {}
        while True:
            t = self.peek()
            key = t.text if t is not None and t.kind == "STRING" and not assign else None
            if key is not None:
                self.take()
            else:
                key = self.dotted("a key")
            if self.at("="):
                self.take()
            elif assign:
                self.expect("=", after=f"'{key}'")
            if key in out:
                raise SqlSyntaxError(t.start, f"'{key}' is given twice.", "Keep one.")
            out[key] = self.value()
            if self.at(","):
                self.take()
                continue
            self.expect(")", after="a value", fix="Separate entries with commas.")
            return out

    # ------------------------------------------------------------ SQL fragments
    def fragment(self, stop: tuple[str, ...] = ()) -> tuple[str, int, int]:
        """The SQL from here to the next clause (or one of `stop` at depth 0): its text as
        written, start and end offsets."""
        depth, first = 0, self.peek()
        if first is None:
            raise SqlSyntaxError(len(self.text), "expected SQL, found the end of the file.")
        last = None
        while (t := self.peek()) is not None:
            if depth == 0 and (self.clause_start() or t.text == ";" or (
                    t.word in stop and t.kind not in ("STRING", "IDENTIFIER")
                    and self._stop_ok(t.word))):
                break
            if depth == 0 and self.line_start(self.i):
                self.bad_clause(self.i)
            depth += t.text in ("(", "[") and t.kind not in ("STRING", "IDENTIFIER")
            depth -= t.text in (")", "]") and t.kind not in ("STRING", "IDENTIFIER")
            last = self.take()
        if last is None:
            raise SqlSyntaxError(first.start, f"expected SQL, found '{self.src(first)}'.")
        return self.text[first.start:last.end + 1], first.start, last.end + 1

    def _stop_ok(self, word: str) -> bool:
        nxt = self.peek(1)
        if word == "AS":  # a trailing `AS name` registers; `AS name` before more SQL does not
            after = self.peek(2)
            return nxt is not None and (after is None or after.text == ";" or
                                        self._clause_at(self.i + 2) or
                                        after.word == "STEP")
        if word == "ON":
            return nxt is not None and nxt.word == "VIOLATION"
        if word == "STEP":
            return nxt is not None and nxt.text == "("
        return True

    def _clause_at(self, j: int) -> bool:
        if j >= len(self.toks):
            return False
        t = self.toks[j]
        if t.word not in CLAUSES or t.kind in ("STRING", "IDENTIFIER"):
            return False
        prev = self.toks[j - 1] if j > 0 else None
        nxt = self.toks[j + 1] if j + 1 < len(self.toks) else None
        if prev is not None and prev.text in (".", ",", "(") and prev.kind != "STRING":
            return False
        return nxt is not None and (nxt.word in FOLLOWS[t.word] or nxt.text in
                                    FOLLOWS[t.word])

    def clause_start(self) -> bool:
        return self._clause_at(self.i)

    def bad_clause(self, j: int) -> None:
        """A clause word that does not start a clause (TRANSFORM SELEC): say what it takes."""
        t = self.toks[j] if j < len(self.toks) else None
        if t is None or t.word not in CLAUSES or t.kind in ("STRING", "IDENTIFIER"):
            return
        nxt = self.toks[j + 1] if j + 1 < len(self.toks) else None
        found = f"'{self.src(nxt)}'" if nxt else "the end of the file"
        raise SqlSyntaxError(nxt.start if nxt else len(self.text),
                             f"expected {', '.join(FOLLOWS[t.word][:-1])} or "
                             f"{FOLLOWS[t.word][-1]} after {t.word}, found {found}.")

    def line_start(self, j: int) -> bool:
        return j == 0 or "\n" in self.text[self.toks[j - 1].end + 1:self.toks[j].start]

    def check_sql(self, sql: str, start: int, kind: str) -> None:
        """Parse a fragment with sqlglot (Spark): a syntax error at its line and column."""
        import sqlglot
        from sqlglot.errors import ParseError
        masked = _PLACEHOLDER.sub(lambda m: "p" + "_" * (len(m.group()) - 1), sql)
        try:
            if kind == "select":
                sqlglot.parse_one(masked, read="spark")
            else:
                sqlglot.parse_one(f"SELECT 1 WHERE {masked}", read="spark")
        except ParseError as e:
            err = (e.errors or [{}])[0]
            line, col = err.get("line") or 1, err.get("col") or 1
            offs = [0] + [i + 1 for i, c in enumerate(masked) if c == "\n"]
            pos = offs[min(line, len(offs)) - 1] + max(col - 1, 0)
            if kind != "select" and line == 1:
                pos -= len("SELECT 1 WHERE ")
            desc = str(err.get("description") or e).split("\n")[0].rstrip(".")
            raise SqlSyntaxError(start + max(min(pos, len(sql) - 1), 0),
                                 f"invalid SQL {'query' if kind == 'select' else 'expression'}:"
                                 f" {desc}.", "Spark SQL's syntax applies here.") from None

    def check_names(self, sql: str, start: int) -> None:
        """Every unqualified table a TRANSFORM reads is a name an earlier clause gave (AS)
        or one of its own WITH queries; db.table reads the catalog."""
        import sqlglot
        from sqlglot import exp
        tree = sqlglot.parse_one(_PLACEHOLDER.sub(lambda m: "p" + "_" * (len(m.group()) - 1),
                                                  sql), read="spark")
        ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
        known = {n.lower() for n in self.registered}
        for table in tree.find_all(exp.Table):
            name = table.name
            if table.db or not name or name.lower() in ctes | known or "${" in name or \
                    name.startswith("p_"):
                continue
            at = next((t.start for t in self.toks if start <= t.start < start + len(sql)
                       and t.text == name), start)
            raise SqlSyntaxError(at, f"unknown name '{name}': no clause before this one gives "
                                 "it (EXTRACT ... AS name, TRANSFORM ... AS name).",
                                 f"Known names: {', '.join(self.registered) or 'none'}; "
                                 "without FROM, a SELECT reads the previous clause's rows.")

