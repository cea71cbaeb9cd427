"""The SQL form of a pipeline (the improvement plan's language, 4.1), compiled to the JSON
format's shape:

    CREATE [OR REPLACE] PIPELINE name [WITH (key = value, ...)] AS
    EXTRACT FROM postgres.sales USING vault('secret/data/postgres') WHERE ... [AS name]
    TRANSFORM SELECT ... [AS name]
    VALIDATE CHECK expr [ON VIOLATION FAIL|WARN|DROP|QUARANTINE ['path']] ...
    LOAD TO s3 's3a://bucket/key' FORMAT parquet PARTITION BY c MODE append;

Any method is reachable as `EXTRACT|TRANSFORM|VALIDATE|LOAD METHOD name WITH (key = value)`;
a trailing `STEP (name = ..., retries = ...)` sets a step's own keys. docs/sql.md has it all.

The file is read with sqlglot's tokenizer (Spark dialect: strings, quoted identifiers,
comments and numbers as Spark reads them) and this module's small recursive-descent parser
over the tokens; the SQL inside (predicates, SELECTs, checks) is kept as the file writes it
and parsed by sqlglot to report its errors at their line and column. `${param}` placeholders
stay in the text, substituted by the loader as in JSON (with the same SQL-safety rule)."""

import json
from pathlib import Path
from typing import Any

from pipeline_defs.common.errors import Problem
from pipeline_defs.config.readers.document import Document
from pipeline_defs.config.readers.sql_declarative import Declarative, starts_declarative
from pipeline_defs.config.readers.sql_tokens import (
    SqlSyntaxError,
    TokenParser,
    where,
)
from pipeline_defs.config.sqltext import THIS

KIND = {"EXTRACT": "extract", "TRANSFORM": "transform", "VALIDATE": "validate", "LOAD": "load"}
SOURCES = {"postgres": "fromPostgres", "mysql": "fromMySQL", "kafka": "fromKafka",
           "delta": "fromDeltaLake", "file": "fromFile", "s3": "fromS3"}
SINKS = {"postgres": "toPostgres", "mysql": "toMySQL", "kafka": "toKafka",
         "delta": "toDeltaLake", "file": "toFile", "s3": "toS3"}
NAMED = ("postgres", "mysql", "kafka")  # written store.name; the others take a 'path'
ACTIONS = {"FAIL": "fail", "WARN": "warn", "DROP": "drop", "QUARANTINE": "quarantine"}
STEP_KEYS = ("name", "description", "condition", "retries", "pool", "owners", "tags")

def read(path: Path) -> Document | Problem | list[Problem]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Problem(str(path), "file not found.", fix="Check the path.")
    try:
        parser = Parser(text, str(path))
        if starts_declarative(parser):
            return Declarative(text, str(path)).pipeline(path.stem)
        return parser.pipeline()
    except SqlSyntaxError as e:
        return Problem(where(str(path), text, e.pos), e.message, fix=e.fix or None)



class Parser(TokenParser):
    # ------------------------------------------------------------ the pipeline
    def pipeline(self) -> Document:
        self.expect("CREATE", fix="A SQL pipeline file starts with CREATE PIPELINE name AS.")
        if self.at("OR"):
            self.take()
            self.expect("REPLACE", after="CREATE OR")
        self.expect("PIPELINE", after="CREATE", fix="Write CREATE PIPELINE name AS ...")
        data: dict[str, Any] = {"name": self.dotted("the pipeline's name")}
        if self.at("WITH"):
            self.take()
            for k, v in self.options().items():
                if k in ("name", "steps"):
                    raise SqlSyntaxError(self.peek().start, f"'{k}' cannot be set in WITH.",
                                         "The name follows CREATE PIPELINE; the steps are "
                                         "the clauses.")
                data[k] = v
        self.expect("AS", after="the pipeline's name" + (" and its WITH (...)" if len(
            data) > 1 else ""), fix="Write CREATE PIPELINE name AS, then the clauses.")
        steps, lines, texts = [], [], []
        if not self.clause_start():
            t = self.peek()
            raise SqlSyntaxError(t.start if t else len(self.text),
                                 "expected EXTRACT, TRANSFORM, VALIDATE or LOAD, found " +
                                 (f"'{self.src(t)}'." if t else "the end of the file."),
                                 "A pipeline is a list of clauses: EXTRACT FROM ..., "
                                 "TRANSFORM SELECT ..., VALIDATE CHECK ..., LOAD TO ....")
        while self.peek() is not None and self.peek().text != ";":
            if not self.clause_start():
                t = self.peek()
                self.bad_clause(self.i)
                raise SqlSyntaxError(t.start, f"expected EXTRACT, TRANSFORM, VALIDATE or LOAD"
                                     f" to start the next clause, found '{self.src(t)}'.")
            start = self.peek().start
            made = self.clause()
            end = self.toks[self.i - 1].end + 1
            for s in made:
                steps.append(s)
                lines.append(self.text.count("\n", 0, start) + 1)
                texts.append(self.text[start:end].strip())
        if self.at(";"):
            self.take()
        if self.peek() is not None:
            t = self.peek()
            raise SqlSyntaxError(t.start, f"unexpected '{self.src(t)}' after the pipeline's "
                                 "';'.", "One file holds one pipeline.")
        data["steps"] = steps
        return Document(data, lines, texts)

    def clause(self) -> list[dict]:
        word = self.take().word
        kind = KIND[word]
        if self.at("METHOD"):
            self.take()
            step = {"type": kind, "method": self.name("a method name"), "config": {}}
            if self.at("WITH"):
                self.take()
                step["config"] = self.options()
            return [self.tail(step)]
        if word == "EXTRACT":
            return self.extract()
        if word == "TRANSFORM":
            return [self.transform()]
        if word == "VALIDATE":
            return self.validate()
        return [self.load()]

    def tail(self, step: dict, register: bool = True) -> dict:
        """[AS name] [STEP (key = value, ...)] after a clause."""
        if register and self.at("AS"):
            self.take()
            step["config"]["registerAs"] = self.name("a name to register the result as")
        if isinstance(step["config"].get("registerAs"), str):
            self.registered.append(step["config"]["registerAs"])
        if self.at("STEP") and (n := self.peek(1)) is not None and n.text == "(":
            t = self.take()
            for k, v in self.options().items():
                if k not in STEP_KEYS:
                    raise SqlSyntaxError(t.start, f"'{k}' is not a step key.",
                                         f"STEP (...) takes {', '.join(STEP_KEYS)}.")
                step[k] = v
        return step

    def store(self, table: dict[str, str], what: str) -> tuple[str, str, dict]:
        t = self.peek()
        kind = (t.text.lower() if t is not None else "")
        if kind not in table:
            found = f"'{self.src(t)}'" if t else "the end of the file"
            raise SqlSyntaxError(t.start if t else len(self.text),
                                 f"expected a {what} ({', '.join(table)}), found {found}.",
                                 "e.g. postgres.orders, delta '/lake/orders', file "
                                 "'/data/in' FORMAT csv, s3 's3a://bucket/key' FORMAT parquet; "
                                 "or METHOD name WITH (...) for any other method.")
        self.take()
        method, config = table[kind], {}
        if kind in NAMED:
            if self.at("."):
                self.take()
                target = self.dotted(f"the {kind} table or topic")
            else:
                target = self.string(f"the {kind} table or topic")
            config["topic" if kind == "kafka" else "table"] = target
        else:
            at = self.peek()
            location = self.string(f"the {kind} location")
            if kind == "s3":
                bucket, _, key = location.partition("://")[2].partition("/") \
                    if "://" in location else ("", "", "")
                if not bucket:
                    raise SqlSyntaxError(at.start, f"'{location}' is not an S3 location.",
                                         "Write s3 's3a://bucket/path'.")
                config.update(bucket=bucket, path=key)
            else:
                config["path"] = location
        return kind, method, config

    def attributes(self, config: dict, allowed: tuple[str, ...], method: str) -> None:
        """USING vault(...), FORMAT f, OPTIONS (...), PARTITION BY, MODE ..., in any order."""
        seen: set[str] = set()
        while (t := self.peek()) is not None and t.word in allowed:
            word = self.take().word
            if word in seen:
                raise SqlSyntaxError(t.start, f"{word} is given twice.", "Keep one.")
            seen.add(word)
            if word == "USING":
                v = self.expect("VAULT", after="USING", fix="Write USING vault('secret/data/"
                                "...').")
                del v
                self.expect("(", after="vault")
                config["credentialPath"] = self.string("the Vault path")
                self.expect(")", after="the Vault path")
            elif word == "FORMAT":
                config["format"] = self.name("a format (csv, json, parquet, avro, ...)").lower()
            elif word == "OPTIONS":
                for k, v in self.options(assign=False).items():
                    config.setdefault("__options__", {})[k] = v
            elif word == "PARTITION BY":
                config["partitionBy"] = self.names()
            elif word == "MODE":
                mode = self.name("a mode (append, overwrite, merge, ...)").lower()
                if mode == "merge":
                    self.expect("KEYS", after="MODE merge",
                                fix="Write MODE merge KEYS (id, ...).")
                    config["__merge__"] = self.names(parens=True)
                else:
                    config["mode"] = mode

    def extract(self) -> list[dict]:
        self.expect("FROM", after="EXTRACT")
        kind, method, config = self.store(SOURCES, "source")
        self.attributes(config, ("USING", "FORMAT", "OPTIONS"), method)
        steps = [{"type": "extract", "method": method, "config": config}]
        if self.at("WHERE"):
            self.take()
            cond, a, b = self.fragment(stop=("AS", "STEP"))
            self.check_sql(cond, a, "expression")
            steps.append({"type": "transform", "method": "filterRows",
                          "config": {"condition": cond}})
        self.tail(steps[-1])  # AS names what the clause gives: the rows after WHERE
        return [finish_options(s) for s in steps]

    def transform(self) -> dict:
        sql, a, _ = self.fragment(stop=("AS", "STEP"))
        self.check_sql(sql, a, "select")
        self.check_names(sql, a)
        return self.tail({"type": "transform", "method": "sql",
                          "config": {"query": with_this(sql, a, self)}})

    def validate(self) -> list[dict]:
        groups: list[tuple[str, list[str], str | None]] = []
        while self.at("CHECK"):
            self.take()
            expr, a, _ = self.fragment(stop=("CHECK", "ON", "STEP"))
            self.check_sql(expr, a, "expression")
            action, path = "fail", None
            if self.at("ON"):
                self.take()
                self.expect("VIOLATION", after="ON")
                t = self.peek()
                if t is None or t.word not in ACTIONS:
                    raise SqlSyntaxError(t.start if t else len(self.text),
                                         "expected FAIL, WARN, DROP or QUARANTINE after ON "
                                         "VIOLATION" + (f", found '{self.src(t)}'." if t
                                                        else "."))
                action = ACTIONS[self.take().word]
                if action == "quarantine" and self.peek() is not None and \
                        self.peek().kind == "STRING":
                    path = self.take().text
            if groups and groups[-1][0] == action and groups[-1][2] == path:
                groups[-1][1].append(expr)
            else:
                groups.append((action, [expr], path))
        if not groups:
            self.expect("CHECK", after="VALIDATE")
        steps = []
        for action, rules, path in groups:
            config: dict[str, Any] = {"rules": rules}
            if action != "fail":
                config["onFailure"] = action
            if path:
                config["quarantinePath"] = path
            steps.append({"type": "validate", "method": "validateBusinessRules",
                          "config": config})
        self.tail(steps[-1], register=False)
        return steps

    def load(self) -> dict:
        self.expect("TO", after="LOAD")
        kind, method, config = self.store(SINKS, "sink")
        self.attributes(config, ("USING", "FORMAT", "OPTIONS", "PARTITION BY", "MODE"), method)
        keys = config.pop("__merge__", None)
        if keys is not None:
            if kind == "delta":
                config["merge"] = {"keyColumns": keys}
            elif kind in ("postgres", "mysql"):
                config.update(mode="upsert", keyColumns=keys)
            else:
                raise SqlSyntaxError(self.toks[self.i - 1].start,
                                     f"MODE merge is not available for {kind}.",
                                     "Merge into delta, postgres or mysql; use append or "
                                     "overwrite here.")
        return finish_options(self.tail({"type": "load", "method": method,
                                         "config": config}))


# OPTIONS keys that are the method's own config keys (else they are the reader's/writer's
# options, or the connection's properties)
_KEYS = {
    "fromKafka": {"bootstrapServers", "startingOffsets", "endingOffsets", "failOnDataLoss",
                  "maxOffsetsPerTrigger", "minPartitions", "valueFormat", "schema",
                  "avroSchema", "includeKey", "includeMetadata"},
    "toKafka": {"bootstrapServers", "keyColumn", "valueColumn", "checkpointLocation",
                "outputMode", "trigger", "queryName"},
    "fromPostgres": {"host", "port", "database", "partitionColumn", "lowerBound",
                     "upperBound", "numPartitions", "fetchSize", "query"},
    "toPostgres": {"host", "port", "database", "recreate", "batchSize", "fastPath",
                   "keyColumns"},
    "fromFile": {"schema"}, "fromS3": {"schema", "header", "inferSchema", "delimiter",
                                       "multiLine", "endpoint", "region"},
    "toFile": {"compression"}, "toS3": {"compression", "endpoint", "region"},
    "fromDeltaLake": {"version", "timestamp"},
    "toDeltaLake": {"mergeSchema", "overwriteSchema", "replaceWhere", "autoOptimize",
                    "tableProperties",
                    "checkpointLocation", "outputMode", "trigger", "queryName"},
}
_KEYS["fromMySQL"], _KEYS["toMySQL"] = _KEYS["fromPostgres"], _KEYS["toPostgres"]
_PROPERTIES = ("fromKafka", "toKafka", "fromPostgres", "fromMySQL", "toPostgres", "toMySQL")
_STREAMING = {"checkpointLocation", "outputMode", "trigger", "queryName", "assetKey"}


def finish_options(step: dict) -> dict:
    config, method = step["config"], step["method"]
    given = config.pop("__options__", None)
    if given:
        own = _KEYS.get(method, set()) | (_STREAMING if step["type"] == "load" else set())
        for k, v in given.items():
            if k in own:
                config[k] = v
            elif method in _PROPERTIES:
                config.setdefault("properties", {})[k] = v if isinstance(v, str) else \
                    json.dumps(v)
            else:
                config.setdefault("options", {})[k] = v
    return step


def with_this(sql: str, start: int, parser: Parser) -> str:
    """A SELECT without FROM reads the previous clause's result: FROM __THIS__ goes in after
    its select list (placed by the tokens, so the text stays as written)."""
    toks = [t for t in parser.toks if start <= t.start < start + len(sql)]
    depth, insert = 0, None
    for k, t in enumerate(toks):
        if t.kind in ("STRING", "IDENTIFIER"):
            continue
        if t.text in ("(", "["):
            depth += 1
        elif t.text in (")", "]"):
            depth -= 1
        elif depth == 0 and t.word == "FROM":
            return sql
        elif depth == 0 and k > 0 and t.word.split(" ")[0] in (
                "WHERE", "GROUP", "HAVING", "ORDER", "LIMIT",
                                                  "WINDOW", "QUALIFY", "CLUSTER", "SORT",
                                                  "DISTRIBUTE", "UNION", "EXCEPT",
                                                  "INTERSECT", "LATERAL"):
            insert = t.start - start
            break
    if toks and toks[0].word == "WITH":
        return sql  # a WITH query names its own inputs
    if insert is None:
        return f"{sql} FROM {THIS}"
    return f"{sql[:insert].rstrip()} FROM {THIS} {sql[insert:]}"

