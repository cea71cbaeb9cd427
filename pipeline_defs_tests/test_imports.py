"""Imports point one way: config/ knows neither Spark nor Dagster; steps/ does not know the
Dagster layer; the loader imports the dataflow check, never the reverse. Every import in
every module is read (also those inside functions), so a shortcut cannot hide."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline_defs"
DAGSTER_LAYER = ("pipeline_defs.factory", "pipeline_defs.ops", "pipeline_defs.definitions",
                 "pipeline_defs.component", "pipeline_defs.defs", "pipeline_defs.orchestration",
                 "pipeline_defs.resources", "pipeline_defs.cli", "pipeline_defs.runs",
                 "pipeline_defs.plan")

# module prefix -> import prefixes it must not use
FORBIDDEN = {
    "pipeline_defs.config": ("pyspark", "delta", "dagster", "pipeline_defs.steps",
                             *DAGSTER_LAYER),
    "pipeline_defs.steps": ("dagster", *DAGSTER_LAYER),
    "pipeline_defs.errors": ("pyspark", "dagster", "pipeline_defs.steps", *DAGSTER_LAYER),
    "pipeline_defs.secrets": ("pyspark", "dagster", "pipeline_defs.steps", *DAGSTER_LAYER),
    "pipeline_defs.retry": ("pyspark", "dagster", "pipeline_defs."),
    # the loader runs the dataflow check; the check knows plain types only (no cycle)
    "pipeline_defs.config.dataflow": ("pipeline_defs.config.loader",),
    "pipeline_defs.config.types": ("pipeline_defs.config.loader", "pipeline_defs.config.dataflow"),
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [(node.lineno, node.module)] + [
                (node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return out


def violations() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        mod = module_name(path)
        for owner, banned in FORBIDDEN.items():
            if mod != owner and not mod.startswith(owner + "."):
                continue
            for line, name in imports(path):
                for b in banned:
                    if name == b or name.startswith(b if b.endswith(".") else b + "."):
                        found.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({mod}) "
                                     f"imports {name}")
    return sorted(set(found))


def test_imports_point_one_way():
    assert violations() == []


@pytest.mark.parametrize("source,caught", [
    ("import dagster\n", "pipeline_defs.config"),
    ("def f():\n    from pipeline_defs.factory import build_pipeline\n", "pipeline_defs.steps"),
])
def test_the_check_catches_a_forbidden_import(tmp_path, monkeypatch, source, caught):
    """The walker finds imports at any depth (a check that cannot fail is no check)."""
    pkg = tmp_path / "pipeline_defs"
    target = pkg / Path(*caught.split(".")[1:]) / "bad.py"
    target.parent.mkdir(parents=True)
    target.write_text(source)
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", pkg)
    assert sorted({v.split(" imports ")[0] for v in violations()}) == [
        f"pipeline_defs/{target.relative_to(pkg)}:{source.count(chr(10))} "
        f"({caught}.bad)"]
