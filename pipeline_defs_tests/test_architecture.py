"""The rooms keep their shape: the import-linter contracts in pyproject.toml hold (config/ and
steps/ never import Dagster; common < config < steps | spark < the Dagster layer < entry
points; no circle between the modules of any package), and each contract breaks when a module
breaks it (a check that cannot fail is no check); no import circle at all, through a
package's __init__ included; no module over 500 lines."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

import pipeline_defs

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "pipeline_defs"
LINT = str(Path(sys.executable).parent / "lint-imports")
MAX_LINES = 500


def _lint(cwd: Path, config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--config", str(config), "--no-cache"], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_the_contracts_hold():
    r = _lint(REPO, REPO / "pyproject.toml")
    assert r.returncode == 0, r.stdout[-4000:]
    assert re.search(r"Contracts: [1-9]\d* kept, 0 broken", r.stdout), r.stdout[-2000:]


# (file in the copy, text appended, the contracts that must break)
BREAKS = [
    ("config/bad.py", "import dagster\n", {"no-dagster-below"}),
    # an import upwards breaks the layers, and makes a circle between the rooms (steps/
    # imports config/)...
    ("config/bad.py", "def f():\n    from pdcopy.steps import names\n", {"rooms", "no-circles"}),
    # ... and from steps/ into the Dagster layer, it reaches Dagster too
    ("steps/bad.py", "def f():\n    from pdcopy.dagster_layer.factory import build_pipeline\n",
     {"rooms", "no-dagster-below", "no-circles"}),
    ("extra.py", "X = 1\n", {"rooms"}),  # a top-level module no layer names
    ("common/bad.py", "from pyspark.sql import DataFrame\n", {"config-knows-no-spark"}),
    ("config/bad.py", "def f():\n    from delta.tables import DeltaTable\n",
     {"config-knows-no-spark"}),
    ("spark/bad.py", "import dagster_pipes\n", {"no-dagster-below"}),
    ("common/bad.py", "from dagster_spark import spark_resource\n", {"no-dagster-below"}),
    # steps/ and spark/ are independent of each other; common/ is below config/
    ("steps/bad.py", "from pdcopy.spark import paths\n", {"rooms"}),
    ("common/bad.py", "from pdcopy.config import durations\n", {"rooms", "no-circles"}),
    ("dagster_layer/plan.py", "\nfrom pdcopy.dagster_layer import runs\n",
     {"no-circles"}),  # runs imports plan
]


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """The package under another name (pdcopy) with the contracts renamed to match, so that
    the installed pipeline_defs stays what Python imports."""
    root = tmp_path_factory.mktemp("arch")
    shutil.copytree(PACKAGE, root / "pdcopy", ignore=shutil.ignore_patterns("__pycache__"))
    for f in (root / "pdcopy").rglob("*.py"):
        f.write_text(f.read_text().replace("pipeline_defs", "pdcopy"))
    text = (REPO / "pyproject.toml").read_text()
    section = text[text.index("[tool.importlinter]"):]
    end = re.search(r"^\[(?!\[)(?!tool\.importlinter)", section[1:], re.M)
    section = section[:end.start() + 1] if end else section
    (root / "contracts.toml").write_text(section.replace("pipeline_defs", "pdcopy"))
    return root


def _contracts(config: Path) -> dict[str, str]:
    return {c["id"]: c["name"]
            for c in tomllib.loads(config.read_text())["tool"]["importlinter"]["contracts"]}


def test_the_copy_keeps_every_contract(copy):
    """(so that each break below is the one the line it adds makes)"""
    assert set(_contracts(copy / "contracts.toml")) == {
        "rooms", "no-dagster-below", "config-knows-no-spark", "no-circles"}
    r = _lint(copy, copy / "contracts.toml")
    assert r.returncode == 0, r.stdout[-3000:]


@pytest.mark.parametrize("where, text, contracts", BREAKS,
                         ids=[f"{b[0]}:{'+'.join(sorted(b[2]))}" for b in BREAKS])
def test_each_contract_breaks_when_a_module_breaks_it(copy, where, text, contracts):
    target = copy / "pdcopy" / where
    before = target.read_text() if target.exists() else None
    target.write_text((before or "") + text)
    try:
        r = _lint(copy, copy / "contracts.toml")
    finally:
        if before is None:
            target.unlink()
        else:
            target.write_text(before)
    assert r.returncode == 1, r.stdout[-3000:]
    names = _contracts(copy / "contracts.toml")
    broken = {i for i, n in names.items() if f"{n} BROKEN" in r.stdout}
    assert broken == contracts, r.stdout[-3000:]


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every import circle, whichever modules it runs through: the strongly connected
    components (Tarjan) of more than one module, or a module importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.find_modules_directly_imported_by(v):
                found.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return found


def test_no_import_circle_anywhere_including_a_package_init():
    graph = grimp.build_graph("pipeline_defs")
    assert Path(pipeline_defs.__file__).parent == PACKAGE  # this checkout's, not another
    assert graph.find_modules_directly_imported_by("pipeline_defs.definitions"), "empty graph"
    assert _cycles(graph) == []


def test_the_circle_finder_finds_a_circle_through_an_init():
    graph = grimp.build_graph("pipeline_defs")
    # a module of config/ importing its own package, whose __init__ re-exports from it
    graph.add_import(importer="pipeline_defs.config", imported="pipeline_defs.config.model")
    graph.add_import(importer="pipeline_defs.config.model", imported="pipeline_defs.config")
    assert _cycles(graph) == [["pipeline_defs.config", "pipeline_defs.config.model"]]


def test_no_module_is_over_500_lines():
    long = {str(f.relative_to(REPO)): n for f in sorted(PACKAGE.rglob("*.py"))
            if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these along what they do: {long}"
