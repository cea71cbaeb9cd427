"""The AUTO CDC flow of declarative-pipelines SQL (Spark 4.3's grammar; Lakeflow's APPLY
CHANGES INTO too), read into an applyChanges config (sql_declarative.py compiles it):

    AUTO CDC INTO target FROM source KEYS (k, ...) [IGNORE NULL UPDATES]
      [APPLY AS DELETE WHEN cond] [APPLY AS TRUNCATE WHEN cond] SEQUENCE BY expr
      [COLUMNS * EXCEPT (c, ...) | COLUMNS c, ...] [STORED AS SCD TYPE 1 | 2]
      [TRACK HISTORY ON * EXCEPT (c, ...) | TRACK HISTORY ON c, ...]"""
from __future__ import annotations

from typing import Any

from pipeline_defs.config.readers.sql_tokens import SqlSyntaxError, TokenParser

# the words that end an AUTO CDC clause's condition or expression
_CDC_CLAUSES = ("APPLY", "SEQUENCE", "COLUMNS", "STORED", "TRACK", "IGNORE", ";")


class AutoCdc(TokenParser):
    def auto_cdc(self, d: Any) -> None:
        """AUTO CDC INTO target FROM source KEYS (...) ... (or APPLY CHANGES INTO ...)."""
        first = self.take()
        self.expect("CDC" if first.word == "AUTO" else "CHANGES", after=first.word)
        self.expect("INTO", after=f"{first.word} {self.toks[self.i - 1].word}")
        d.target = self.dotted("the target table")
        self.expect("FROM", after=d.target)
        a = self.peek()
        depth, last = 0, None
        while (t := self.peek()) is not None and not (depth == 0 and t.word == "KEYS"):
            if t.kind not in ("STRING", "IDENTIFIER"):
                depth += (t.text == "(") - (t.text == ")")
            if t.text == ";" and t.kind != "STRING":
                break
            last = self.take()
        if a is None or last is None:
            raise SqlSyntaxError(a.start if a else len(self.text),
                                 "expected the source after FROM.",
                                 "Write FROM STREAM(source) KEYS (key, ...).")
        d.query, d.query_at = self.text[a.start:last.end + 1], a.start
        self.expect("KEYS", after="the source", fix="Write KEYS (key, ...) after the source.")
        cdc: dict[str, Any] = {"keys": self.names(parens=True)}
        while (t := self.peek()) is not None and t.word in _CDC_CLAUSES[:-1]:
            self.take()
            if t.word == "IGNORE":
                self.expect("NULL", after="IGNORE")
                self.expect("UPDATES", after="IGNORE NULL")
                cdc["ignoreNullUpdates"] = True
            elif t.word == "APPLY":
                self.expect("AS", after="APPLY")
                what = self.expect("DELETE", "TRUNCATE", after="APPLY AS").word
                self.expect("WHEN", after=f"APPLY AS {what}")
                cdc["applyAsDeletes" if what == "DELETE" else "applyAsTruncates"] = \
                    self.cdc_expr(f"APPLY AS {what} WHEN", "expression")
            elif t.word == "SEQUENCE":
                self.expect("BY", after="SEQUENCE")
                cdc["sequenceBy"] = self.cdc_expr("SEQUENCE BY", "expression")
            elif t.word == "COLUMNS":
                cdc.update(self.cdc_columns("columnList", "exceptColumnList"))
            elif t.word == "STORED":
                self.expect("AS", after="STORED")
                self.expect("SCD", after="STORED AS")
                self.expect("TYPE", after="STORED AS SCD")
                n = self.peek()
                if n is None or n.text not in ("1", "2"):
                    raise SqlSyntaxError(n.start if n else len(self.text),
                                         "expected 1 or 2 after STORED AS SCD TYPE.")
                cdc["storedAs"] = f"scd{self.take().text}"
            else:
                self.expect("HISTORY", after="TRACK")
                self.expect("ON", after="TRACK HISTORY")
                cdc.update(self.cdc_columns("trackHistoryColumnList",
                                            "trackHistoryExceptColumnList"))
        if "sequenceBy" not in cdc:
            t = self.peek()
            raise SqlSyntaxError(t.start if t else len(self.text),
                                 f"AUTO CDC INTO {d.target} needs SEQUENCE BY: which change of "
                                 "a key is the later one.",
                                 "Add SEQUENCE BY <column or expression> after KEYS (...).")
        d.cdc = cdc

    def cdc_expr(self, after: str, kind: str) -> str:
        first, last, depth = self.peek(), None, 0
        while (t := self.peek()) is not None:
            plain = t.kind not in ("STRING", "IDENTIFIER")
            if plain and depth == 0 and (t.word in _CDC_CLAUSES or t.text == ";"):
                break
            if plain:
                depth += (t.text == "(") - (t.text == ")")
            last = self.take()
        if first is None or last is None:
            raise SqlSyntaxError(first.start if first else len(self.text),
                                 f"expected an expression after {after}.")
        expr = self.text[first.start:last.end + 1]
        self.check_sql(expr, first.start, kind)
        return expr

    def cdc_columns(self, listed: str, excepted: str) -> dict[str, list[str]]:
        if self.at("*"):
            self.take()
            self.expect("EXCEPT", after="*", fix="Write * EXCEPT (column, ...), or name the "
                        "columns.")
            return {excepted: self.names(parens=True)}
        return {listed: self.names()}
