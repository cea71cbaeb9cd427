"""A step's `condition`: false skips the step and every step that needs it (skipped in
Dagster, the run succeeds, the summary says why); bad conditions are validate errors."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_defs.common.errors import ConfigError
from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.dagster_layer.runs import step_rows
from pipeline_defs_tests.conftest import REPO, op_of, run_job, write_json

PIPELINE = str(Path(sys.executable).parent / "pipeline")


def _file(tmp_path: Path, condition: str) -> Path:
    return write_json(tmp_path / "cond.json", {
        "name": "cond", "params": {"min_rows": "1", "src": str(tmp_path / "in.csv")},
        "steps": [
            {"type": "extract", "method": "fromFile", "name": "orders",
             "config": {"path": "${src}", "format": "csv", "schema": "id INT, v INT"}},
            {"type": "transform", "method": "filterRows", "name": "big",
             "config": {"condition": "v > 100"}},
            {"type": "load", "method": "toFile", "name": "big_out", "condition": condition,
             "config": {"path": str(tmp_path / "big"), "format": "parquet"}},
            {"type": "load", "method": "toFile", "name": "all_out",
             "config": {"path": str(tmp_path / "all"), "format": "parquet"}}]})


def test_a_false_condition_skips_the_load_and_the_run_succeeds(tmp_path):
    (tmp_path / "in.csv").write_text("id,v\n1,5\n2,7\n")
    f = _file(tmp_path, "previous_step_count >= min_rows and execution_date > '2020-01-01'")
    r = subprocess.run([PIPELINE, "run", str(f)], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    line = next(ln for ln in r.stdout.splitlines() if ln.strip().startswith("big_out"))
    assert "skipped" in line and "condition `previous_step_count >= min_rows" in line
    assert "previous_step_count=0" in r.stderr  # the values it saw, in the run's log
    assert not (tmp_path / "big").exists() and (tmp_path / "all").exists()


def test_a_true_condition_runs_the_step_and_leaves_nothing_cached(tmp_path, registry, spark):
    (tmp_path / "in.csv").write_text("id,v\n1,500\n2,700\n3,5\n")
    p = load_pipeline(_file(tmp_path, "previous_step_count >= min_rows"), registry)
    spark.catalog.clearCache()
    result = run_job(p)
    assert {op_of(e.step_key) for e in result.all_events
            if e.event_type_value == "STEP_SKIPPED"} == set()
    assert spark.read.parquet(str(tmp_path / "big")).count() == 2
    # what the condition persisted for its count is released when the run ends
    assert spark._jsparkSession.sharedState().cacheManager().isEmpty()


# orders has 3 rows, big (its filter, the load's input) 2; min_rows is 1; the run's date is
# today. Each condition's truth by Python's own operators, beside it.
CONDITIONS = [
    ("previous_step_count >= 3 or steps.orders.rows == 3", lambda p, o: p >= 3 or o == 3),
    ("not (previous_step_count > 1)", lambda p, o: not p > 1),
    ("(steps.orders.rows != 3 or previous_step_count = 2) and not execution_date < "
     "'2000-01-01'", lambda p, o: (o != 3 or p == 2) and True),
    ("steps.big.rows <> 2", lambda p, o: p != 2),
    ("steps.orders.rows > min_rows and (previous_step_count < 1 or steps.big.rows >= 2)",
     lambda p, o: o > 1 and (p < 1 or p >= 2)),
    ("not (steps.orders.rows > 1 and steps.big.rows > 1) or min_rows != '1'",
     lambda p, o: not (o > 1 and p > 1) or False),
]


@pytest.mark.parametrize("condition, truth", CONDITIONS, ids=range(len(CONDITIONS)))
def test_or_not_parentheses_and_step_rows_at_run_time(tmp_path, registry, spark, condition,
                                                      truth):
    (tmp_path / "in.csv").write_text("id,v\n1,500\n2,700\n3,5\n")
    run_job(load_pipeline(_file(tmp_path, condition), registry))
    assert (tmp_path / "big").exists() is truth(2, 3), condition
    assert (tmp_path / "all").exists()  # the other load, whatever the condition


@pytest.mark.parametrize("condition, message", [
    ("previous_step_count >", "condition: 'previous_step_count >': expected a value after "
                              "'previous_step_count >'"),
    ("steps.nope.rows > 0", "condition: 'steps.nope.rows > 0': steps.nope names no earlier "
                            "step (earlier steps: big, orders)"),
    ("__import__('os') == 1", "condition: '__import__('os') == 1': unexpected '('"),
    ("rows > 0", "condition: 'rows > 0': unknown name 'rows'"),
])
def test_bad_conditions_are_validate_errors(tmp_path, registry, condition, message):
    f = _file(tmp_path, condition)
    with pytest.raises(ConfigError) as e:
        load_pipeline(f, registry)
    assert f"{f}, step 3 (load.toFile), {message}" in str(e.value)
    r = subprocess.run([PIPELINE, "validate", str(f)], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 1 and message in r.stdout + r.stderr
    assert json.loads(f.read_text())["steps"][2]["condition"] == condition


def _two_branches(tmp_path: Path, condition: str) -> Path:
    """extract -> load, then extract -> filter (no rows) -> load: the conditional load is the
    file's last step, so nothing waits for its `done`."""
    src = {"path": str(tmp_path / "in.csv"), "format": "csv", "schema": "id INT, v INT"}
    return write_json(tmp_path / "branches.json", {"name": "branches", "steps": [
        {"type": "extract", "method": "fromFile", "name": "a", "config": src},
        {"type": "load", "method": "toFile", "name": "a_out",
         "config": {"path": str(tmp_path / "a"), "format": "parquet"}},
        {"type": "extract", "method": "fromFile", "name": "b", "config": src},
        {"type": "transform", "method": "filterRows", "name": "big",
         "config": {"condition": "v > 100"}},
        {"type": "load", "method": "toFile", "name": "b_out", "condition": condition,
         "config": {"path": str(tmp_path / "b"), "format": "parquet"}}]})


@pytest.mark.parametrize("condition, written", [("previous_step_count > 0", False),
                                                ("previous_step_count = 0", True)])
def test_a_conditional_last_step_ends_the_run_successfully(tmp_path, registry, spark,
                                                          condition, written):
    (tmp_path / "in.csv").write_text("id,v\n1,5\n2,7\n")
    p = load_pipeline(_two_branches(tmp_path, condition), registry)
    result = run_job(p)
    assert spark.read.parquet(str(tmp_path / "a")).count() == 2
    assert (tmp_path / "b").exists() is written
    status = {r.op: r.status for r in step_rows(result.all_events, p)}
    assert status == {"a": "ok", "a_out": "ok", "b": "ok", "big": "ok",
                      "b_out": "ok" if written else "skipped"}
    if written:  # the load ran on the filter's output: no rows
        assert spark.read.parquet(str(tmp_path / "b")).count() == 0


@pytest.mark.parametrize("holds", [True, False])
def test_materializing_some_assets_of_a_graph_with_a_conditional_step(tmp_path, registry,
                                                                      spark, holds):
    """Only the conditional load's table is selected: the later load, which waits for the
    conditional step's `done`, is not, so `done` is not an output this run selected."""
    import dagster as dg

    from pipeline_defs.definitions import default_resources, definitions_for
    (tmp_path / "in.csv").write_text("id,v\n1,5\n2,7\n")
    f = write_json(tmp_path / "sel.json", {"name": "sel", "steps": [
        {"type": "extract", "method": "fromFile", "name": "src",
         "config": {"path": str(tmp_path / "in.csv"), "format": "csv",
                    "schema": "id INT, v INT"}},
        {"type": "load", "method": "toFile", "name": "first", "condition":
         f"previous_step_count {'>' if holds else '<'} 0",
         "config": {"path": str(tmp_path / "first"), "format": "parquet"}},
        {"type": "load", "method": "toFile", "name": "second",
         "config": {"path": str(tmp_path / "second"), "format": "parquet"}}]})
    job = definitions_for([load_pipeline(f, registry)], default_resources()) \
        .resolve_job_def("sel")
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                    asset_selection=[dg.AssetKey("first")],
                                    raise_on_error=False)
    assert result.success, [e.message for e in result.all_events
                            if e.event_type_value == "STEP_FAILURE"]
    assert (tmp_path / "first").exists() is holds
    assert not (tmp_path / "second").exists()
    materialized = {e.asset_key.to_user_string() for e in result.all_events
                    if e.event_type_value == "ASSET_MATERIALIZATION"}
    assert materialized == ({"first"} if holds else set())
