"""Column lineage from Spark's analyzed plan: which columns of the tables a pipeline read each
written column comes from. One JSON dump of the plan (`toJSON`), read in Python; no Spark
job runs.

Extracts note the ids Spark gave their columns (`column_ids`); at a load, every output column
is followed back through aliases (projections, aggregations, windows) and unions to those
ids."""
from __future__ import annotations

import json
from collections.abc import Iterator

from pyspark.sql import DataFrame

ATTR = "org.apache.spark.sql.catalyst.expressions.AttributeReference"
ALIAS = "org.apache.spark.sql.catalyst.expressions.Alias"
_EXPRESSION_FIELDS = ("projectList", "aggregateExpressions", "windowExpressions")


def column_ids(df: DataFrame) -> dict[int, str]:
    """{Spark's id of each output column: its name} of a DataFrame (an extract's)."""
    out = df._jdf.queryExecution().analyzed().output()
    return {int(out.apply(i).exprId().id()): str(out.apply(i).name())
            for i in range(out.size())}


def _subtrees(nodes: list[dict], start: int = 0) -> tuple[int, list[int]]:
    """(end of the subtree at `start`, start of each child) in a pre-order node list."""
    pos, children = start + 1, []
    for _ in range(int(nodes[start].get("num-children", 0))):
        children.append(pos)
        pos, _ = _subtrees(nodes, pos)
    return pos, children


def _attrs(nodes: list[dict]) -> Iterator[int]:
    for n in nodes:
        if n.get("class") == ATTR:
            yield int(n["exprId"]["id"])


def _named(expr: list[dict]) -> tuple[int, set[int]]:
    """(the id an output expression defines, the ids it reads)."""
    top = expr[0]
    if top.get("class") == ATTR:
        i = int(top["exprId"]["id"])
        return i, {i}
    return int(top["exprId"]["id"]), set(_attrs(expr[1:]))


def column_sources(df: DataFrame) -> dict[str, set[int]]:
    """{output column: the ids of the extract columns it is computed from}."""
    plan = json.loads(df._jdf.queryExecution().analyzed().toJSON())
    reads: dict[int, set[int]] = {}  # defined id -> ids it reads

    def output(at: int) -> list[int]:
        node = plan[at]
        _, children = _subtrees(plan, at)
        kind = node["class"].rsplit(".", 1)[-1]
        if "output" in node and not children:
            return [int(a[0]["exprId"]["id"]) for a in node["output"]]
        child_out = [output(c) for c in children]
        fields = [f for f in _EXPRESSION_FIELDS if f in node]
        if kind == "Union":
            for k, i in enumerate(child_out[0]):  # the first input's column, and the others'
                reads.setdefault(i, set()).update({i, *(o[k] for o in child_out[1:]
                                                        if k < len(o))})
            return child_out[0]
        if kind == "Join":
            jt = json.dumps(node.get("joinType", ""))
            return child_out[0] if ("Semi" in jt or "Anti" in jt) else \
                child_out[0] + child_out[1]
        if not fields:
            return child_out[0] if child_out else []
        out = list(child_out[0]) if kind == "Window" else []
        for f in fields:
            for expr in node[f]:
                defined, used = _named(expr)
                if used != {defined}:
                    reads.setdefault(defined, set()).update(used)
                out.append(defined)
        return out

    names = list(df.columns)
    ids = output(0)

    def leaves(i: int, seen: set[int]) -> set[int]:
        if i in seen:
            return set()
        seen.add(i)
        if i not in reads:
            return {i}
        found: set[int] = set()
        for j in reads[i]:
            found |= leaves(j, seen)
        if i in reads[i]:
            found.add(i)
        return found

    return {name: leaves(i, set()) for name, i in zip(names, ids, strict=False)}
