"""The dataflow of a pipeline: which step reads which DataFrame, checked before Spark starts.

Semantics of the original format: steps run in order; each extract, transform and validate
step's output becomes the *current* DataFrame; a load writes the current DataFrame and leaves
it current; `registerAs` also stores a step's output under a name."""
from __future__ import annotations

import re
from collections.abc import Sequence

from pipeline_defs.common.errors import Problem
from pipeline_defs.config.types import Catalog, LoadedStep, UnparsedConfig


def safe_name(text: str) -> str:
    """A Dagster-safe name: letters, digits and _ only, not starting with a digit."""
    out = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "unnamed"
    return out if not out[0].isdigit() else f"_{out}"


def walk(file: str, steps: Sequence[LoadedStep]):
    """Yield (step, current producer, {name: producer}, earlier loads, problems) in order."""
    current: int | None = None
    registered: dict[str, int] = {}
    loads: list[int] = []
    for s in steps:
        problems: list[Problem] = []
        named: dict[str, int] = {}
        for fpath, name in s.config.named_inputs(tuple(registered)):
            if name in registered:
                named[name] = registered[name]
            else:
                have = ", ".join(sorted(registered)) or "none"
                problems.append(Problem(
                    file, f"names '{name}', which no earlier step registers. "
                    f"Registered so far: {have}.", s.index, s.label, f"config.{fpath}",
                    "Add \"registerAs\" to the step that produces it, or fix the name."))
        uses = s.config.reads_current()
        if uses and current is None:
            problems.append(Problem(
                file, f"a {s.kind} step needs an input DataFrame, and no earlier step "
                "produces one.", s.index, s.label, None,
                "Put an extract step before it."))
        yield s, (current if uses else None), named, tuple(loads[-1:]), problems
        if s.kind == "load" or getattr(s.config, "writes_asset", False):  # later readers wait
            loads.append(s.index)
        out = current if s.kind == "load" else s.index
        current = out
        if s.config.register_as and out is not None:
            registered[s.config.register_as] = out


def check_dataflow(file: str, steps: Sequence[LoadedStep]) -> list[Problem]:
    """Names read before they are registered, steps with no input (stand-ins of steps that
    did not parse take part with what they register and read)."""
    return [pr for *_, problems in walk(file, steps) for pr in problems]


def declared_columns(ddl: str) -> dict[str, str] | None:
    """{lower-case name: Spark SQL type} of a DDL schema ("id INT, name STRING"); None when
    it does not parse (the step's own check reports that)."""
    import sqlglot
    from sqlglot import exp
    try:
        tree = sqlglot.parse_one(f"CREATE TABLE t ({ddl})", read="spark")
    except sqlglot.errors.SqlglotError:
        return None
    schema = tree.this if isinstance(tree.this, exp.Schema) else None
    if schema is None:
        return None
    return {c.name.lower(): (c.args["kind"].sql("spark") if c.args.get("kind") else "")
            for c in schema.expressions if isinstance(c, exp.ColumnDef)}


def check_columns(file: str, steps: Sequence[LoadedStep]) -> list[Problem]:
    """Columns a step names that its input lacks, where the input's columns are declared (an
    extract's `schema`, through the validations and loads that keep them)."""
    out: list[Problem] = []
    known: dict[int, dict[str, str] | None] = {}
    for s, current, _, _, _ in walk(file, steps):
        if isinstance(s.config, UnparsedConfig):
            known[s.index] = None
            continue
        columns = known.get(current) if current is not None else None
        if columns:
            out += [Problem(file, what, s.index, s.label, f"config.{field}", fix)
                    for field, what, fix in s.config.input_problems(columns)]
        if s.kind == "extract":
            ddl = s.config.declared_schema()
            known[s.index] = declared_columns(ddl) if ddl else None
        elif s.kind == "validate":
            known[s.index] = columns
        else:
            known[s.index] = s.config.output_columns(columns) if columns else None
    return out


def check_streaming(file: str, steps: Sequence[LoadedStep], catalog: Catalog
                    ) -> list[Problem]:
    """What a streaming pipeline's runtime would refuse, found before Spark starts: methods
    without a streaming form (dataset-level validations, sinks with no stream writer),
    config that has no meaning on a stream, loads that no streaming source feeds."""
    out: list[Problem] = []
    sources: dict[int, bool] = {}  # step -> a stream flows out of it
    names: dict[str, int] = {}  # queryName -> step
    def streaming(kind: str) -> list[str]:
        return sorted(m for k, m in catalog.methods() if k == kind and catalog.streams(k, m))
    for s, current, named, _, _ in walk(file, steps):
        inputs = ([current] if current is not None else []) + list(named.values())
        fed = any(sources.get(i) for i in inputs)
        if isinstance(s.config, UnparsedConfig):
            sources[s.index] = s.kind != "extract" and fed  # unknown: no further claims
            continue
        ok = catalog.streams(s.kind, s.method)
        if s.kind == "extract":
            sources[s.index] = ok  # a batch extract is a static side (e.g. of a join)
        elif s.kind == "load":
            sources[s.index] = fed
            if not ok:
                out.append(Problem(file, f"{s.method} has no streaming writer.", s.index,
                                   s.label, "method", "Streaming sinks: "
                                   + ", ".join(streaming("load")) +
                                   ". Or write this target from a batch pipeline."))
            elif not fed:
                out.append(Problem(file, "no stream reaches this load: none of the extracts "
                                   "before it reads a stream.", s.index, s.label, None,
                                   "Read a stream with " + ", ".join(
                                       streaming("extract")) +
                                   ", or set \"mode\": \"batch\"."))
        else:
            sources[s.index] = fed
            if fed and not ok:
                what = ("checks the whole dataset" if s.kind == "validate"
                        else "needs the whole dataset")
                fix = ("In a streaming pipeline only row rules run, per micro-batch: "
                       + ", ".join(streaming("validate")) +
                       ". Check the sink with a batch pipeline instead."
                       if s.kind == "validate" else "Run it in a batch pipeline instead.")
                out.append(Problem(file, f"{s.method} {what}, which a stream never has.",
                                   s.index, s.label, "method", fix))
        query = getattr(s.config, "query_name", None) if s.kind == "load" else None
        if query and query in names:
            out.append(Problem(file, f"queryName '{query}' is also step {names[query]}'s: a "
                               "session runs one query per name.", s.index, s.label,
                               "config.queryName", "Give each streaming load its own "
                               "queryName."))
        elif query:
            names[query] = s.index
        if sources.get(s.index) and s.kind != "load" and getattr(s.config, "cache", False):
            out.append(Problem(file, "a stream cannot be cached: each micro-batch is new data.",
                               s.index, s.label, "config.cache", "Remove \"cache\" (or set "
                               "\"mode\": \"batch\" to read what is there now)."))
        if fed or s.kind == "extract":
            for fpath, msg, fix in s.config.streaming_problems():
                out.append(Problem(file, msg, s.index, s.label, f"config.{fpath}", fix))
    return out
