"""The open declarative-pipelines SQL (Spark 4.1+ / Lakeflow), compiled to the JSON
format's shape like the plan's language (sql_file.py):

    CREATE [OR REFRESH] MATERIALIZED VIEW name [(CONSTRAINT c EXPECT (expr) [ON VIOLATION
        DROP ROW | FAIL UPDATE | QUARANTINE], ...)] [COMMENT '...'] [PARTITIONED BY (cols)]
        [LOCATION '<path>'] AS SELECT ...;
    CREATE [OR REFRESH] STREAMING TABLE name [...] [AS SELECT ... FROM STREAM(...)];
    CREATE TEMPORARY VIEW name AS SELECT ...;
    CREATE FLOW name AS INSERT INTO target BY NAME SELECT ...;
    CREATE FLOW name AS AUTO CDC INTO target FROM source KEYS (k, ...) [IGNORE NULL UPDATES]
        [APPLY AS DELETE WHEN cond] [APPLY AS TRUNCATE WHEN cond] SEQUENCE BY expr
        [COLUMNS * EXCEPT (c, ...) | COLUMNS c, ...] [STORED AS SCD TYPE 1 | 2]
        [TRACK HISTORY ON * EXCEPT (c, ...) | TRACK HISTORY ON c, ...];
    (APPLY CHANGES INTO ..., and either without CREATE FLOW, as Lakeflow still reads them)

One file is one pipeline (named after the file); its datasets read each other by name, in
any order in the file: they are put in dependency order, each becomes a SQL transform
registered under its name, its expectations validation steps (named after the constraints:
Dagster's asset checks), and, unless it is a view, a Delta load at its LOCATION (else
`${PIPELINE_WAREHOUSE}/<name>`). Sources outside the file are read with the table functions
`read_files('<path>', format => 'csv', ...)`, `read_kafka(subscribe => 'topic', ...)` and
`read_delta('<path>')` (extract steps), or by `db.table` from the catalog. A file holding a
streaming table is a streaming pipeline. An AUTO CDC flow is an applyChanges load of its
target (change data capture: SCD type 1 or 2)."""
from __future__ import annotations

from typing import Any

from pipeline_defs.config.readers.document import Document
from pipeline_defs.config.readers.sql_cdc import AutoCdc
from pipeline_defs.config.readers.sql_tokens import SqlSyntaxError, TokenParser

WAREHOUSE = "${env:PIPELINE_WAREHOUSE:-spark-warehouse}"
KINDS = ("MATERIALIZED VIEW", "STREAMING TABLE", "TEMPORARY VIEW", "VIEW", "FLOW")
ACTIONS = {"DROP ROW": "drop", "FAIL UPDATE": "fail", "QUARANTINE": "quarantine"}
# table function -> (extract method, its positional argument's key)
SOURCES = {"read_files": ("fromFile", "path"), "read_kafka": ("fromKafka", None),
           "read_delta": ("fromDeltaLake", "path")}
_ARG_KEYS = {"subscribe": "topic", "topic": "topic"}


def starts_declarative(parser: TokenParser) -> bool:
    """Does the file begin with a dataset (CREATE ... MATERIALIZED VIEW / STREAMING TABLE /
    ... ) rather than CREATE PIPELINE?"""
    words = [t.word for t in parser.toks[:6]]
    text = " ".join(words)
    return bool(words) and (words[0] == "SET" or words[0] == "CREATE" and "PIPELINE" not in
                            words and any(k in text for k in KINDS))


class Dataset:
    def __init__(self, kind: str, name: str, at: int):
        self.kind, self.name, self.at = kind, name, at
        self.constraints: list[tuple[str, str, str]] = []  # (name, expr, action)
        self.comment: str | None = None
        self.partition_by: list[str] | None = None
        self.location: str | None = None
        self.properties: dict[str, str] = {}
        self.query: str | None = None
        self.query_at = at
        self.target: str | None = None  # a flow's
        self.cdc: dict[str, Any] | None = None  # an AUTO CDC flow's applyChanges config
        self.reads: set[str] = set()
        self.text = ""
        self.line = 1


class Declarative(AutoCdc):
    def pipeline(self, name: str) -> Document:
        datasets: list[Dataset] = []
        settings = self.settings()
        while self.peek() is not None:
            datasets.append(self.statement())
            while self.at(";"):
                self.take()
        if not datasets:
            raise SqlSyntaxError(0, "the file holds no dataset.",
                                 "Write CREATE MATERIALIZED VIEW name AS SELECT ...")
        by_name = self.check(datasets)
        streaming = any(d.kind == "STREAMING TABLE" for d in datasets)
        steps, lines, texts, n = [], [], [], 0
        for d in self.ordered(datasets, by_name):
            made, n = self.compile(d, n)
            for s in made:
                steps.append(s)
                lines.append(d.line)
                texts.append(d.text)
        named = [s["name"] for s in steps if "name" in s]
        for s in steps:  # a constraint's name, unless it is another step's too
            if "name" in s and named.count(s["name"]) > 1 and "dataset" in s:
                s["name"] = f"{s['dataset']}_{s['name']}"
            s.pop("dataset", None)
        data: dict[str, Any] = {"name": name, **settings, "steps": steps}
        if streaming:
            data.setdefault("mode", "streaming")
        return Document(data, lines, texts)

    def settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {}
        while self.at("SET"):  # SET schedule = '0 6 * * *'; any top-level key of the format
            t = self.take()
            key = self.dotted("a pipeline key (schedule, streaming, params, ...)")
            self.expect("=", after=f"SET {key}")
            if key in ("name", "steps") or key in settings:
                raise SqlSyntaxError(t.start, f"'{key}' cannot be set here." if key in (
                    "name", "steps") else f"'{key}' is set twice.",
                    "The file's name is the pipeline's; its datasets are the steps.")
            settings[key] = self.value()
            while self.at(";"):
                self.take()
        return settings

    def check(self, datasets: list[Dataset]) -> dict[str, Dataset]:
        by_name = {d.name.lower(): d for d in datasets if d.kind != "FLOW"}
        self._targets = by_name
        for d in datasets:
            if d.kind != "FLOW" and sum(e.name.lower() == d.name.lower()
                                        for e in datasets if e.kind != "FLOW") > 1:
                raise SqlSyntaxError(d.at, f"'{d.name}' is defined twice.", "Keep one.")
            if d.kind == "FLOW" and (d.target or "").lower() not in by_name:
                raise SqlSyntaxError(d.at, f"flow '{d.name}' inserts into '{d.target}', which "
                                     "the file does not define.",
                                     f"Add CREATE STREAMING TABLE {d.target};")
        if any(d.kind == "STREAMING TABLE" for d in datasets):
            for d in datasets:
                if d.kind == "MATERIALIZED VIEW":
                    raise SqlSyntaxError(d.at, f"materialized view '{d.name}' in a file with "
                                         "streaming tables: a file runs either as a batch or "
                                         "as a streaming pipeline.",
                                         "Put the materialized views in a file of their own "
                                         "that reads the streaming tables by their LOCATION.")
        return by_name

    # ------------------------------------------------------------ statements
    def statement(self) -> Dataset:
        if self.at("APPLY", "AUTO"):  # Lakeflow's flow without CREATE FLOW: named after
            start = self.peek()       # its target
            d = Dataset("FLOW", "", start.start)
            d.line = self.text.count("\n", 0, start.start) + 1
            self.auto_cdc(d)
            d.name = d.target
            d.text = self.text[start.start:self.toks[self.i - 1].end + 1].strip()
            return d
        start = self.expect("CREATE", fix="Each statement is CREATE MATERIALIZED VIEW, CREATE "
                            "STREAMING TABLE, CREATE TEMPORARY VIEW or CREATE FLOW.")
        if self.at("OR"):
            self.take()
            self.expect("REFRESH", "REPLACE", after="CREATE OR")
        words = []
        while (t := self.peek()) is not None and t.word in ("MATERIALIZED", "VIEW", "STREAMING",
                                                            "TABLE", "TEMPORARY", "LIVE",
                                                            "FLOW"):
            words.append(self.take().word)
        kind = " ".join(w for w in words if w != "LIVE")
        if kind not in KINDS:
            t = self.peek()
            found = " ".join(words) or (self.src(t) if t else "the end of the file")
            raise SqlSyntaxError(t.start if t else len(self.text),
                                 f"expected MATERIALIZED VIEW, STREAMING TABLE, TEMPORARY VIEW "
                                 f"or FLOW after CREATE, found '{found}'.")
        kind = "TEMPORARY VIEW" if kind == "VIEW" else kind
        d = Dataset(kind, self.dotted("the dataset's name"), start.start)
        d.line = self.text.count("\n", 0, start.start) + 1
        if kind == "FLOW":
            self.expect("AS", after=f"CREATE FLOW {d.name}")
            if self.at("AUTO", "APPLY"):
                self.auto_cdc(d)
                d.text = self.text[start.start:self.toks[self.i - 1].end + 1].strip()
                return d
            self.expect("INSERT", "AUTO", "APPLY", after="AS",
                        fix="Write INSERT INTO target BY NAME SELECT ..., or AUTO CDC INTO "
                            "target FROM source KEYS (...) SEQUENCE BY ...")
            self.expect("INTO", after="INSERT")
            d.target = self.dotted("the target table")
            self.expect("BY", after=d.target, fix="Write INSERT INTO target BY NAME SELECT ...")
            self.expect("NAME", after="BY")
        else:
            if self.at("("):
                self.columns(d)
            self.properties(d)
        if d.kind != "STREAMING TABLE" or self.at("AS"):
            if d.kind != "FLOW":
                self.expect("AS", after=f"the definition of {d.name}",
                            fix="Write AS SELECT ... (only a streaming table a flow fills "
                                "may have no query).")
            d.query, d.query_at, _ = self.statement_sql()
            self.check_sql(self.without_stream(d.query, d.query_at), d.query_at, "select")
        end = self.toks[self.i - 1].end + 1
        d.text = self.text[start.start:end].strip()
        return d

    def without_stream(self, sql: str, at: int) -> str:
        """`STREAM x` read as `x` by sqlglot's parser (it knows STREAM(x) only); same length,
        so the positions of its errors stay the file's."""
        toks = [t for t in self.toks if at <= t.start < at + len(sql)]
        for t, nxt in zip(toks, toks[1:], strict=False):
            if t.word == "STREAM" and t.kind == "VAR" and nxt.text != "(":
                a = t.start - at
                sql = sql[:a] + " " * (t.end + 1 - t.start) + sql[t.end + 1 - at:]
        return sql

    def columns(self, d: Dataset) -> None:
        self.take()
        while True:
            t = self.expect("CONSTRAINT", fix="Only expectations go in the parentheses "
                            "(CONSTRAINT name EXPECT (expr)); give columns their types in the "
                            "SELECT (CAST(x AS INT) AS x).")
            del t
            cname = self.name("the constraint's name")
            self.expect("EXPECT", after=f"CONSTRAINT {cname}")
            self.expect("(", after="EXPECT")
            expr, a, _ = self.balanced()
            self.check_sql(expr, a, "expression")
            action = "warn"  # Lakeflow's default: keep the rows, record the violations
            if self.at("ON"):
                self.take()
                self.expect("VIOLATION", after="ON")
                t = self.peek()
                word = t.word if t is not None else ""
                if word in ("DROP", "FAIL"):
                    self.take()
                    self.expect("ROW" if word == "DROP" else "UPDATE", after=word)
                    word += " ROW" if word == "DROP" else " UPDATE"
                elif word == "QUARANTINE":
                    self.take()
                else:
                    raise SqlSyntaxError(t.start if t else len(self.text),
                                         "expected DROP ROW, FAIL UPDATE or QUARANTINE after "
                                         "ON VIOLATION" + (f", found '{self.src(t)}'." if t
                                                           else "."))
                action = ACTIONS[word]
            d.constraints.append((cname, expr, action))
            if self.at(","):
                self.take()
                continue
            self.expect(")", after="the constraint")
            return

    def balanced(self) -> tuple[str, int, int]:
        """The tokens up to the ')' closing the one just taken: text, start, end."""
        depth, first, last = 1, self.peek(), None
        while (t := self.peek()) is not None:
            if t.kind not in ("STRING", "IDENTIFIER"):
                depth += t.text == "("
                depth -= t.text == ")"
            if depth == 0:
                self.take()
                break
            last = self.take()
        if last is None or first is None:
            raise SqlSyntaxError(first.start if first else len(self.text),
                                 "expected an expression in the parentheses.")
        return self.text[first.start:last.end + 1], first.start, last.end + 1

    def properties(self, d: Dataset) -> None:
        while (t := self.peek()) is not None and t.word in (
                "COMMENT", "PARTITIONED BY", "LOCATION", "TBLPROPERTIES"):
            self.take()
            if t.word == "COMMENT":
                d.comment = self.string("the comment")
            elif t.word == "PARTITIONED BY":
                d.partition_by = self.names(parens=True)
            elif t.word == "LOCATION":
                d.location = self.string("the location")
            else:
                d.properties = {k: v if isinstance(v, str) else str(v).lower()
                                if isinstance(v, bool) else str(v)
                                for k, v in self.options(assign=False).items()}

    def statement_sql(self) -> tuple[str, int, int]:
        first, last = self.peek(), None
        while (t := self.peek()) is not None and not (t.text == ";" and t.kind != "STRING"):
            last = self.take()
        if first is None or last is None:
            raise SqlSyntaxError(first.start if first else len(self.text),
                                 "expected a query (SELECT ...).")
        return self.text[first.start:last.end + 1], first.start, last.end + 1

    # ------------------------------------------------------------ compiling
    def sources(self, d: Dataset, n: int) -> tuple[str, list[dict], int]:
        """The query with its table functions (read_files, read_kafka, read_delta) and
        STREAM(...) replaced by names, the extract steps that register those names."""
        if d.query is None:
            return "", [], n
        toks = [t for t in self.toks if d.query_at <= t.start < d.query_at + len(d.query)]
        out, extracts, pos, k = [], [], 0, 0
        depth, closes = 0, []  # the depths at which a STREAM( ... ) closes
        while k < len(toks):
            t = toks[k]
            nxt = toks[k + 1] if k + 1 < len(toks) else None
            low = t.text.lower() if t.kind in ("VAR", "IDENTIFIER") else ""
            plain = t.kind not in ("STRING", "IDENTIFIER")
            if plain and t.text == "(":
                depth += 1
            elif plain and t.text == ")":
                if closes and closes[-1] == depth:  # the ')' of STREAM(...): dropped
                    closes.pop()
                    out.append(d.query[pos:t.start - d.query_at])
                    pos = t.end + 1 - d.query_at
                depth -= 1
            if t.word == "STREAM" and t.kind == "VAR" and nxt is not None:
                out.append(d.query[pos:t.start - d.query_at])
                pos = t.end + 1 - d.query_at
                if nxt.text == "(":  # STREAM(x): the parentheses go too
                    depth += 1
                    closes.append(depth)
                    pos = nxt.end + 1 - d.query_at
                    k += 1
                k += 1
                continue
            if low in SOURCES and nxt is not None and nxt.text == "(":
                method, positional = SOURCES[low]
                sub = TokenParser.__new__(TokenParser)
                sub.text, sub.file, sub.toks = self.text, self.file, self.toks
                sub.i, sub.registered = self.toks.index(nxt) + 1, []
                config = self.call_args(sub, positional, low)
                n += 1
                name = f"__{d.name.replace('.', '_')}_src{n}"
                config["registerAs"] = name
                extracts.append({"type": "extract", "method": method,
                                 "name": f"read_{d.name.replace('.', '_')}"
                                 + (f"_{n}" if n > 1 else ""), "config": config})
                out.append(d.query[pos:t.start - d.query_at] + name)
                end = sub.toks[sub.i - 1].end + 1
                pos = end - d.query_at
                while k < len(toks) and toks[k].start < end:
                    k += 1
                continue
            k += 1
        out.append(d.query[pos:])
        query = "".join(out).strip()
        return (f"SELECT * FROM {query}" if d.cdc is not None else query), extracts, n

    def call_args(self, sub: TokenParser, positional: str | None, fn: str) -> dict:
        config: dict[str, Any] = {}
        first = True
        while not sub.at(")"):
            t = sub.peek()
            if first and t is not None and t.kind == "STRING" and positional:
                config[positional] = sub.take().text
            else:
                key = sub.name(f"an argument of {fn} (key => value)")
                sub.expect("=>", after=key, fix=f"Write {fn}(..., {key} => 'value').")
                v = sub.value()
                key = _ARG_KEYS.get(key, key)
                if fn == "read_files" and key not in ("path", "format", "schema",
                                                      "credentialPath"):
                    config.setdefault("options", {})[key] = v
                elif fn == "read_kafka" and key not in (
                        "topic", "bootstrapServers", "startingOffsets", "endingOffsets",
                        "schema", "credentialPath", "maxOffsetsPerTrigger", "valueFormat",
                        "failOnDataLoss", "includeMetadata", "includeKey", "avroSchema",
                        "minPartitions"):
                    config.setdefault("properties", {})[key] = str(v)
                else:
                    config[key] = v
            first = False
            if sub.at(","):
                sub.take()
        sub.take()
        return config

    def reads(self, d: Dataset, by_name: dict[str, Dataset]) -> set[str]:
        import sqlglot
        from sqlglot import exp
        if d.query is None:
            return set()
        try:  # the query with STREAM(...) and the table functions made names
            tree = sqlglot.parse_one(self.sources(d, 0)[0], read="spark")
        except Exception:  # noqa: BLE001 - check_sql has reported syntax already
            return set()
        names = {t.name.lower() for t in tree.find_all(exp.Table) if not t.db}
        return {n for n in names if n in by_name and n != d.name.lower()}

    def ordered(self, datasets: list[Dataset], by_name: dict[str, Dataset]) -> list[Dataset]:
        """Datasets after the ones they read (flows after their target), file order
        otherwise; a cycle is an error."""
        flows_into: dict[str, set[str]] = {}
        for d in datasets:
            if d.kind == "FLOW":
                flows_into.setdefault(d.target.lower(), set()).add("flow:" + d.name.lower())
        deps = {}
        for d in datasets:
            reads = self.reads(d, by_name)
            deps[id(d)] = reads | ({d.target.lower()} if d.target else set()) | {
                f for r in reads for f in flows_into.get(r, ())}
        done: set[str] = set()
        out: list[Dataset] = []
        pending = list(datasets)
        while pending:
            ready = [d for d in pending if deps[id(d)] <= done]
            if not ready:
                d = pending[0]
                raise SqlSyntaxError(d.at, f"'{d.name}' and "
                                     f"{', '.join(sorted(deps[id(d)] - done))} read each other "
                                     "(a cycle).", "A dataset may not depend on itself.")
            d = ready[0]
            out.append(d)
            pending.remove(d)
            done.add(("flow:" if d.kind == "FLOW" else "") + d.name.lower())
        return out

    def compile(self, d: Dataset, n: int) -> tuple[list[dict], int]:
        query, steps, n = self.sources(d, n)
        for name in sorted(self.reads(d, self._targets)):  # a table only flows fill: read it
            t = self._targets[name]
            if t.kind == "STREAMING TABLE" and t.query is None:
                steps.insert(0, {"type": "extract", "method": "fromDeltaLake",
                                 "name": f"read_{t.name.replace('.', '_')}_in_"
                                         f"{d.name.replace('.', '_')}",
                                 "config": {"path": t.location or f"{WAREHOUSE}/{t.name}",
                                            "registerAs": t.name}})
        if d.kind == "STREAMING TABLE" and d.query is None:
            return [], n  # filled by its flows
        steps.append({"type": "transform", "method": "sql", "name": d.name.replace(".", "_"),
                      "config": {"query": query}})
        for cname, expr, action in d.constraints:
            config: dict[str, Any] = {"rules": [expr]}
            if action != "fail":
                config["onFailure"] = action
            steps.append({"type": "validate", "method": "validateBusinessRules",
                          "name": cname, "dataset": d.name.replace(".", "_"),
                          "config": config})
        register = d.target if d.kind == "FLOW" else d.name
        if d.kind != "FLOW":
            steps[-1]["config"]["registerAs"] = register
        if d.kind == "TEMPORARY VIEW":
            return steps, n
        target = self.target_of(d)
        if d.cdc is not None:
            if target.partition_by or target.properties:
                raise SqlSyntaxError(target.at, f"'{target.name}' is filled by AUTO CDC, which "
                                     "writes no PARTITIONED BY or TBLPROPERTIES.",
                                     "Remove them from its CREATE STREAMING TABLE.")
            load = {"type": "load", "method": "applyChanges",
                    "name": f"write_{d.name.replace('.', '_')}", "config": {
                        "path": target.location or f"{WAREHOUSE}/{target.name}", **d.cdc,
                        "queryName": d.name, "assetKey": target.name}}
            if target.comment:
                load["description"] = target.comment
            return steps + [load], n
        load: dict[str, Any] = {"type": "load", "method": "toDeltaLake",
                                "name": f"write_{d.name.replace('.', '_')}", "config": {
            "path": target.location or f"{WAREHOUSE}/{target.name}",
            "mode": "append" if target.kind == "STREAMING TABLE" else "overwrite"}}
        if target.partition_by:
            load["config"]["partitionBy"] = target.partition_by
        if target.properties:
            load["config"]["tableProperties"] = target.properties
        if d.kind == "FLOW":
            load["config"]["queryName"] = d.name
            load["config"]["assetKey"] = target.name
        if target.comment:
            load["description"] = target.comment
        steps.append(load)
        return steps, n

    def target_of(self, d: Dataset) -> Dataset:
        if d.kind != "FLOW":
            return d
        return self._targets[d.target.lower()]
