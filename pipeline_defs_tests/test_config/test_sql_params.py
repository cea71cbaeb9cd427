"""A parameter's value put into SQL is a literal, in every field that takes SQL: a table of
hostile values (quotes of every kind, backslashes, comments, newlines, unicode quotes,
identifiers, expressions, operators) is refused outside quotes, refused inside quotes when
it holds that quote or a backslash, and otherwise lands as the literal's own text. Spark
then selects exactly the rows equal to the value (checked with pandas)."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline_defs.common.errors import ConfigError
from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.config.params import SqlSpec, substitute_config
from pipeline_defs_tests.conftest import run_job, write_json

SRC = {"type": "extract", "method": "fromFile",
       "config": {"path": "/in/t.parquet", "format": "parquet"}}
OUT = {"type": "load", "method": "toFile", "config": {"path": "/out/t"}}
PG = {"host": "db", "database": "d", "username": "u", "password": "p"}


def _nested(path: str, text: str) -> dict:
    head, _, rest = path.partition(".")
    return {head: _nested(rest, text) if rest else text}


def _transform(kind: str, method: str, extra: dict):
    def build(path: str, text: str) -> list[dict]:
        return [SRC, {"type": kind, "method": method, "config": {**extra, **_field(path, text)}},
                OUT]
    return build


def _field(path: str, text: str) -> dict:
    """The config holding `text` at `path`, in the shape the field takes (a list of SQL
    strings, a map of them, or one)."""
    lists, maps = {"rules", "joinConditions", "orderBy"}, {"aggregations"}
    if path in lists:
        return {path: [text]}
    if path in maps:
        return {path: {"n": text}}
    if path == "columns":  # enrichData's map; selectColumns' list is built below
        return {path: {"hit": text}}
    return _nested(path, text)


def _load(method: str, extra: dict):
    def build(path: str, text: str) -> list[dict]:
        cfg = {**extra, **_nested(path, text)}
        if path == "merge.matchedCondition":
            cfg["merge"]["keyColumns"] = ["id"]
        return [SRC, {"type": "load", "method": method, "config": cfg}]
    return build


def _extract(method: str):
    def build(path: str, text: str) -> list[dict]:
        cfg = {**PG, **_nested(path, text)}
        if path != "query":
            cfg.setdefault("table", "t")
        return [{"type": "extract", "method": method, "config": cfg}, OUT]
    return build


def _select(path: str, text: str) -> list[dict]:
    return [SRC, {"type": "transform", "method": "selectColumns",
                  "config": {"columns": [text]}}, OUT]


def _join(path: str, text: str) -> list[dict]:
    return [{**SRC, "config": {**SRC["config"], "registerAs": "a"}},
            {**SRC, "config": {**SRC["config"], "registerAs": "b"}},
            {"type": "transform", "method": "joinDataFrames",
             "config": {"inputDataFrames": ["a", "b"], "joinConditions": [text]}}, OUT]


def _features(path: str, text: str) -> list[dict]:
    return [SRC, {"type": "transform", "method": "featureEngineering", "config": {"features": [
        {"name": "n", "type": "aggregation", "groupBy": "id", "expr": text}]}}, OUT]


# (kind.method, field, builder, the dialect's quotes: string, identifier)
FIELDS = [
    ("transform.filterRows", "condition", _transform("transform", "filterRows", {})),
    ("transform.enrichData", "columns", _transform("transform", "enrichData", {})),
    ("transform.selectColumns", "columns", _select),
    ("transform.deduplicate", "orderBy",
     _transform("transform", "deduplicate", {"columns": ["id"]})),
    ("transform.sql", "query", _transform("transform", "sql", {})),
    ("transform.aggregateData", "aggregations",
     _transform("transform", "aggregateData", {"groupBy": ["id"]})),
    ("transform.joinDataFrames", "joinConditions", _join),
    ("transform.featureEngineering", "features.expr", _features),
    ("validate.validateBusinessRules", "rules",
     _transform("validate", "validateBusinessRules", {})),
    ("load.toDeltaLake", "replaceWhere", _load("toDeltaLake", {"path": "/d", "mode":
                                                               "overwrite"})),
    ("load.toDeltaLake", "merge.matchedCondition", _load("toDeltaLake", {"path": "/d"})),
    ("load.applyChanges", "applyAsDeletes", _load("applyChanges", {
        "path": "/d", "keys": ["id"], "sequenceBy": "seq"})),
    ("load.applyChanges", "applyAsTruncates", _load("applyChanges", {
        "path": "/d", "keys": ["id"], "sequenceBy": "seq"})),
    ("load.applyChanges", "sequenceBy", _load("applyChanges", {"path": "/d", "keys": ["id"]})),
    ("load.toKafka", "keyColumn", _load("toKafka", {"topic": "t", "bootstrap.servers": "k:9"})),
    ("load.toKafka", "valueColumn", _load("toKafka", {"topic": "t",
                                                      "bootstrap.servers": "k:9"})),
    ("extract.fromPostgres", "query", _extract("fromPostgres")),
    ("extract.fromPostgres", "table", _extract("fromPostgres")),
    ("extract.fromPostgres", "partitionColumn", _extract("fromPostgres")),
    ("extract.fromMySQL", "query", _extract("fromMySQL")),
    ("extract.fromMySQL", "table", _extract("fromMySQL")),
    ("extract.fromMySQL", "partitionColumn", _extract("fromMySQL")),
    ("load.toPostgres", "table", _load("toPostgres", PG)),
    ("load.toMySQL", "table", _load("toMySQL", PG)),
]
NAMES = {"table", "partitionColumn"}  # fields holding a name, not an expression
IDENT_QUOTE = {"postgres": '"', "mysql": "`", "spark": "`"}

HOSTILE = ["'", '"', "`", "\\", "--", "/* */", "*/", "a\nb", "\u2019", "\u201cx\u201d",
           "month", "0+month", "1 OR 1=1", "1; DROP TABLE t", "x' OR '1'='1", "1 --",
           "a\\'b", "r'x'", "'2024-01-01' OR 1=1", "$$", "Robert'); DROP TABLE students;--"]


def test_the_table_covers_every_sql_field_of_every_method(registry):
    declared = {(f"{d.kind}.{m}", f) for d in registry.all() for m in [d.method]
                for f in d.model.sql_fields | d.model.name_fields}
    assert declared == {(m, f) for m, f, _ in FIELDS}
    names = {(f"{d.kind}.{d.method}", f) for d in registry.all() for f in d.model.name_fields}
    assert {f for _, f in names} == NAMES


def _pipeline(tmp_path: Path, method: str, path: str, text: str) -> Path:
    build = next(b for m, f, b in FIELDS if (m, f) == (method, path))
    return write_json(tmp_path / "p.json", {"name": "p", "params": {"v": "1"},
                                            "steps": build(path, text)})


def _step_of(file: Path, method: str) -> int:
    import json
    steps = json.loads(file.read_text())["steps"]
    return next(i for i, s in enumerate(steps, 1) if f"{s['type']}.{s['method']}" == method)


def _refused(tmp_path, registry, method, path, text, value) -> str:
    f = _pipeline(tmp_path, method, path, text)
    with pytest.raises(ConfigError) as e:
        load_pipeline(f, registry, {"v": value})
    shown = {"features.expr": "features[0].expr"}.get(path, path)  # a list's item: its index
    where = f"{f}, step {_step_of(f, method)} ({method}), config.{shown}"
    assert f"{where}" in str(e.value) and "the value of ${v}" in str(e.value), str(e.value)
    return str(e.value)


def _dialect(registry, method: str) -> str:
    kind, name = method.split(".")
    return registry.model_for(kind, name).sql_dialect


@pytest.mark.parametrize("method, path", [(m, f) for m, f, _ in FIELDS])
def test_outside_quotes_a_value_is_one_number_or_boolean(tmp_path, registry, method, path):
    text = "${v}" if path in NAMES else "x = ${v}"
    for value in HOSTILE:
        if path in NAMES and re.fullmatch(r"[A-Za-z_]\w*", value):  # a name field takes a name
            p = load_pipeline(_pipeline(tmp_path, method, path, text), registry, {"v": value})
            step = next(s for s in p.steps if s.label == method)
            assert value in _strings(step.raw_config)
            continue
        message = _refused(tmp_path, registry, method, path, text, value)
        # the fix
        assert ("Pass a name such as" if path in NAMES else "In SQL a value is a literal") \
            in message, message
    for value, expect in (("42", "42"), ("-1.5", "-1.5"), ("1e3", "1e3"), ("true", "true")):
        if path in NAMES:  # a number is no name: Spark or the database says so
            continue
        p = load_pipeline(_pipeline(tmp_path, method, path, text), registry, {"v": value})
        step = next(s for s in p.steps if s.label == method)
        assert f"x = {expect}" in str(step.raw_config)


@pytest.mark.parametrize("method, path", [(m, f) for m, f, _ in FIELDS])
def test_inside_quotes_a_value_may_not_close_them(tmp_path, registry, method, path):
    dialect = _dialect(registry, method)
    q = IDENT_QUOTE[dialect] if path in NAMES else "'"
    text = f"{q}t_${{v}}{q}" if path in NAMES else "x = '${v}'"
    for value in HOSTILE:
        bad = q in value or (q == "'" and "\\" in value)
        if bad:
            _refused(tmp_path, registry, method, path, text, value)
            continue
        p = load_pipeline(_pipeline(tmp_path, method, path, text), registry, {"v": value})
        step = next(s for s in p.steps if s.label == method)
        want = text.replace("${v}", value)
        assert want in _strings(step.raw_config), (value, step.raw_config)


def _strings(v) -> list[str]:
    if isinstance(v, dict):
        return [s for x in v.values() for s in _strings(x)]
    if isinstance(v, list):
        return [s for x in v for s in _strings(x)]
    return [v] if isinstance(v, str) else []


@pytest.mark.parametrize("text, value, ok", [
    # a comment's apostrophe is a comment's: the placeholder stays outside quotes
    ("/* the month's number */ month = ${v}", "1 OR 1=1", False),
    ("/* the month's number */ month = ${v}", "3", True),
    ("-- the month's number\nmonth = ${v}", "month", False),
    ("note = 'it''s' AND month = ${v}", "0+month", False),
    ("note = 'a\\'b' AND month = ${v}", "1 OR 1=1", False),
    ("note = r'a\\' AND month = ${v}", "1 OR 1=1", False),  # a raw string ends at its quote
    ("`it's` = ${v}", "month", False),
    ("month = -${v}", "-1", False),  # `--1` would make the rest a comment
    ("month = - ${v}", "-1", True),
    ("day = DATE '${v}'", "2024-01-31", True),
    ("day = DATE '${v}'", "tomorrow", False),
    ("day = DATE ${v}", "'2024-01-31'", True),
    ("day = DATE ${v}", "'2024-01-31' OR true", False),
    ("at < TIMESTAMP '${v}'", "2024-01-31 10:00:00", True),
    ("label = r'${v}'", "C:\\temp", True),
    ("m = month_${v}", "1", False),  # part of a name
    ("x = 1 /* ${v} */", "*/ OR 1=1 /*", False),
    ("x = 1 -- ${v}", "ok\nOR 1=1", False),
    ("x = 1 -- ${v}", "a note", True),
])
def test_where_a_placeholder_sits_is_decided_by_the_lexer(text, value, ok):
    from pipeline_defs.config.params import UnsafeInSql
    call = lambda: substitute_config({"condition": text}, {"v": value}, {},  # noqa: E731
                                     SqlSpec(frozenset({"condition"})))
    if ok:
        assert call()["condition"] == text.replace("${v}", value)
    else:
        with pytest.raises(UnsafeInSql):
            call()


@pytest.mark.parametrize("dialect, text, value, ok", [
    ("postgres", "SELECT * FROM t WHERE n = $$ ${v} $$", "it's", True),
    ("postgres", "SELECT * FROM t WHERE n = $$ ${v} $$", "$$ OR 1=1 --", False),
    ("postgres", "SELECT * FROM \"t_${v}\"", "a\"; DROP TABLE x; --", False),
    ("postgres", "SELECT * FROM t WHERE n = E'${v}'", "\\' OR 1=1 --", False),
    ("mysql", "SELECT * FROM t WHERE n = \"${v}\"", "it's", True),
    ("mysql", "SELECT * FROM t WHERE n = '${v}'", "\\' OR 1=1 #", False),
    ("mysql", "SELECT * FROM `t_${v}`", "x` UNION SELECT 1 --", False),
])
def test_database_dialects(dialect, text, value, ok):
    from pipeline_defs.config.params import UnsafeInSql
    call = lambda: substitute_config({"query": text}, {"v": value}, {},  # noqa: E731
                                     SqlSpec(frozenset({"query"}), dialect=dialect))
    if ok:
        assert call()["query"] == text.replace("${v}", value)
    else:
        with pytest.raises(UnsafeInSql):
            call()


@pytest.mark.parametrize("dialect, text, values, ok", [
    # a name built from values: schema and table names from params are everyday practice
    ("postgres", "${schema}.orders", {"schema": "sales_2024"}, "sales_2024.orders"),
    ("postgres", "${table}_km", {"table": "by_region"}, "by_region_km"),
    ("mysql", "${db}.${table}", {"db": "shop", "table": "t$1"}, "shop.t$1"),
    ("postgres", "${table}_km", {"table": "x; DROP TABLE t"}, None),
    ("postgres", "${schema}.orders", {"schema": "a b"}, None),
    ("mysql", "${table}", {"table": "t WHERE 1=1"}, None),
    ("mysql", "${table}", {"table": "(SELECT 1)"}, None),
    ("postgres", "${table}", {"table": "1st"}, None),  # not a name
    # written as SQL (a subquery), the field is SQL text: the value is a literal
    ("postgres", "(SELECT * FROM t WHERE n = ${v}) s", {"v": "5"},
     "(SELECT * FROM t WHERE n = 5) s"),
    ("postgres", "(SELECT * FROM t WHERE n = ${v}) s", {"v": "n"}, None),
    ("postgres", '"${v}"', {"v": "odd name"}, '"odd name"'),  # a quoted identifier
])
def test_a_name_field_takes_a_name_built_from_values(dialect, text, values, ok):
    from pipeline_defs.config.params import UnsafeInSql
    call = lambda: substitute_config({"table": text}, values, {},  # noqa: E731
                                     SqlSpec(names=frozenset({"table"}), dialect=dialect))
    if ok:
        assert call()["table"] == ok
    else:
        with pytest.raises(UnsafeInSql):
            call()


ACCEPTED_IN_QUOTES = [v for v in HOSTILE if "'" not in v and "\\" not in v]


def test_quoted_hostile_values_select_exactly_the_rows_equal_to_them(tmp_path, registry,
                                                                     spark):
    """Every hostile value that may go inside '...' is compared as text: the filter, the SQL
    query and the derived column select the rows whose name is that value, as pandas does."""
    names = [*ACCEPTED_IN_QUOTES, "other"]
    data = pd.DataFrame({"id": range(len(names)), "name": names,
                         "month": [1] * len(names)})
    pq.write_table(pa.Table.from_pandas(data), tmp_path / "t.parquet")
    steps = {
        "filterRows": {"type": "transform", "method": "filterRows",
                       "config": {"condition": "name = '${v}'"}},
        "sql": {"type": "transform", "method": "sql",
                "config": {"query": "SELECT * FROM __THIS__ WHERE name = '${v}' -- it's"}},
        "enrichData": {"type": "transform", "method": "enrichData",
                       "config": {"columns": {"hit": "name = '${v}'"}}},
    }
    for method, step in steps.items():
        f = write_json(tmp_path / f"{method}.json", {"name": method, "params": {"v": "x"},
                                                     "steps": [
            {"type": "extract", "method": "fromFile",
             "config": {"path": str(tmp_path / "t.parquet"), "format": "parquet"}},
            step,
            {"type": "load", "method": "toFile",
             "config": {"path": "${out}", "format": "parquet", "mode": "overwrite"}}]})
        for k, value in enumerate(ACCEPTED_IN_QUOTES):
            out = tmp_path / "out" / f"{method}{k}"
            run_job(load_pipeline(f, registry, {"v": value, "out": str(out)}))
            got = pq.read_table(out).to_pandas()
            if method == "enrichData":
                got = got[got["hit"]]
            want = data[data["name"] == value]
            assert sorted(got["id"]) == sorted(want["id"]), (method, value)
            assert len(want) == 1


def test_the_issue_s_exploits_are_refused_by_pipeline_run(tmp_path):
    """`--param m="1 OR 1=1"` after a comment holding an apostrophe, and `m=month` /
    `m=0+month`, selected every row; now each is refused before Spark starts (exit 2)."""
    import subprocess
    import sys

    from pipeline_defs_tests.conftest import REPO
    pq.write_table(pa.table({"month": [1, 2, 3]}), tmp_path / "t.parquet")
    f = write_json(tmp_path / "m.json", {"name": "m", "params": {"m": "1"}, "steps": [
        {"type": "extract", "method": "fromFile",
         "config": {"path": str(tmp_path / "t.parquet"), "format": "parquet"}},
        {"type": "transform", "method": "filterRows",
         "config": {"condition": "/* the month's number */ month = ${m}"}},
        {"type": "load", "method": "toFile",
         "config": {"path": str(tmp_path / "out"), "format": "parquet"}}]})
    exe = str(Path(sys.executable).parent / "pipeline")
    for value in ("1 OR 1=1", "month", "0+month"):
        r = subprocess.run([exe, "validate", str(f), "--param", f"m={value}"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, r.stdout
        assert (f"step 2 (transform.filterRows), config.condition: the value of ${{m}} "
                f"({value!r}) cannot go into this SQL: ${{m}} sits outside quotes") in r.stdout
    assert not (tmp_path / "out").exists()
