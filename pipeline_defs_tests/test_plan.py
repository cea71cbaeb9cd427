"""The step graph: who reads what, where rows are counted."""
from __future__ import annotations

import functools
import json

from pipeline_defs.config.dataflow import safe_name
from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.dagster_layer import plan as plans
from pipeline_defs_tests.conftest import COMPAT, write_json

# where rows are counted when Spark runs everything itself (native execution: the last test)
build_plan = functools.partial(plans.build_plan, native=False)


def test_independent_extracts_are_parallel_branches(registry):
    plan = build_plan(load_pipeline(COMPAT / "multi-source-join.json", registry))
    users, orders, join, agg, load = plan.nodes
    assert users.inputs == [] and orders.inputs == []
    assert join.named == {"users": 1, "orders": 2} and join.current is None
    assert agg.current == 3 and load.current == 4


def test_load_leaves_current_and_loads_keep_file_order(registry):
    plan = build_plan(load_pipeline(COMPAT / "incremental-load-pipeline.json", registry))
    first_load, second_load = plan.nodes[3], plan.nodes[4]
    assert first_load.current == 3 and second_load.current == 3
    assert second_load.after == (4,)


def test_extract_after_a_load_waits_for_it(tmp_path, registry):
    f = write_json(tmp_path / "p.json", {"name": "p", "steps": [
        {"type": "extract", "method": "fromFile", "config": {"path": "/a"}},
        {"type": "load", "method": "toDeltaLake", "config": {"path": "/t"}},
        {"type": "extract", "method": "fromDeltaLake", "config": {"path": "/t"}},
        {"type": "load", "method": "toFile", "config": {"path": "/o"}}]})
    plan = build_plan(load_pipeline(f, registry))
    assert plan.nodes[2].after == (2,) and plan.nodes[3].current == 3


def test_no_observe_where_it_would_block_a_pushed_filter(registry, tmp_path):
    plan = build_plan(load_pipeline(COMPAT / "data-quality-pipeline.json", registry))
    # extract -> validations (pass rows through) -> filterRows: the filter must reach the scan
    assert [n.observe for n in plan.nodes] == [False] * 7
    # rowCounts "all": transforms between extracts and loads are counted too
    raw = json.loads((COMPAT / "aggregation-pipeline.json").read_text())
    plan = build_plan(load_pipeline(write_json(tmp_path / "all.json", {
        **raw, "rowCounts": "all"}), registry))
    observed = [n.op_name for n in plan.nodes if n.observe]
    assert observed == ["s02_filterRows", "s04_enrichData"]
    # the aggregate's rows are the enrichment's (it keeps rows); the pivot is counted by the
    # first load; the extract is not counted (its consumer filter must reach the scan)
    assert [n.counted_by for n in plan.nodes] == [None, 2, 4, 4, 6, 6, 7]


def test_by_default_only_extracts_and_loads_count(registry):
    """An observe() between two transforms splits Spark's whole-stage code generation: by
    default only what rides on an extract's chain or a load's write is counted."""
    plan = build_plan(load_pipeline(COMPAT / "aggregation-pipeline.json", registry))
    assert not any(n.observe for n in plan.nodes)
    assert [n.counted_by for n in plan.nodes] == [None, None, None, None, 6, 6, 7]


def test_row_preserving_chains_are_counted_once(registry):
    plan = build_plan(load_pipeline(COMPAT / "incremental-load-pipeline.json", registry))
    assert [n.counted_by for n in plan.nodes] == [None, 4, 4, 4, 5]
    assert not any(n.observe for n in plan.nodes)


def test_names_are_dagster_safe():
    assert safe_name("sales-aggregation pipeline") == "sales_aggregation_pipeline"
    assert safe_name("2024 report") == "_2024_report"


def test_consecutive_validations_form_one_group_run_by_the_first(tmp_path, registry):
    """Validations each read only the one before: one group, evaluated by the first. A
    validation reading another DataFrame, or one whose input has a second reader, starts a
    group of its own."""
    f = write_json(tmp_path / "p.json", {"name": "p", "steps": [
        {"type": "extract", "method": "fromFile", "config": {"path": "/a", "registerAs": "a"}},
        {"type": "validate", "method": "validateBusinessRules",
         "config": {"rules": ["x > 0"], "onFailure": "quarantine"}},
        {"type": "validate", "method": "validateUnique", "config": {"columns": ["x"]}},
        {"type": "validate", "method": "validateAcceptedValues",
         "config": {"column": "x", "values": [1, 2], "onFailure": "quarantine"}},
        {"type": "validate", "method": "validateReferentialIntegrity",
         "config": {"foreignKey": "x", "referencedDataFrame": "a", "referencedColumn": "x"}},
        {"type": "validate", "method": "validateUnique", "config": {"columns": ["x"]}},
        {"type": "load", "method": "toDeltaLake", "config": {"path": "/t"}},
        {"type": "validate", "method": "validateRowCount", "config": {"min": 1}},
        {"type": "load", "method": "toFile", "config": {"path": "/o"}}]})
    plan = build_plan(load_pipeline(f, registry))
    assert [plan.validation_group(i) for i in (2, 3, 4)] == [[2, 3, 4]] * 3
    assert plan.validation_group(5) == [5, 6]  # reads `a` besides: starts its own group
    # step 6's rows go to the load and to step 8 (a load leaves them current): 8 is alone
    assert plan.validation_group(8) == [8]
    assert plan.validation_group(1) == [1] and plan.validation_group(7) == [7]
    # the first of the group runs the pass that writes the group's quarantine tables
    assert plan.quarantines() == {2: [2, 4]}


def test_with_native_execution_only_the_loads_count(registry, tmp_path):
    """An observe() is an operator Comet cannot run, and keeps the operators above it on Spark:
    with native execution, an extract that feeds a join is not counted (the load still counts
    what it writes), so the join and the aggregate run natively."""
    p = load_pipeline(write_json(tmp_path / "join.json", {"name": "join", "steps": [
        {"type": "extract", "method": "fromFile", "name": "items",
         "config": {"path": "/data/items.parquet", "format": "parquet", "registerAs": "items"}},
        {"type": "extract", "method": "fromFile", "name": "orders",
         "config": {"path": "/data/orders.parquet", "format": "parquet",
                    "registerAs": "orders"}},
        {"type": "transform", "method": "joinDataFrames", "name": "joined",
         "config": {"inputDataFrames": ["items", "orders"],
                    "joinConditions": ["items.id = orders.id"]}},
        {"type": "load", "method": "toDeltaLake", "name": "out",
         "config": {"path": "/data/out", "mode": "overwrite"}}]}), registry)
    spark_only = plans.build_plan(p, native=False)
    native = plans.build_plan(p, native=True)
    assert [n.observe for n in spark_only.nodes] == [True, True, False, False]
    assert [n.counted_by for n in spark_only.nodes] == [1, 2, 4, 4]
    assert not any(n.observe for n in native.nodes)
    assert [n.counted_by for n in native.nodes] == [None, None, 4, 4]
    # a source Comet does not scan (CSV here, JDBC, Kafka) is counted as before: everything
    # above it runs on Spark anyway
    raw = json.loads((tmp_path / "join.json").read_text())
    raw["steps"][1]["config"].update(format="csv", path="/data/orders.csv")
    csv = load_pipeline(write_json(tmp_path / "csv.json", raw), registry)
    assert [n.counted_by for n in plans.build_plan(csv, native=True).nodes] == [None, 2, 4, 4]
