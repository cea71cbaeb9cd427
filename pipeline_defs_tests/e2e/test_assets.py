"""Pipelines as Dagster assets: one asset of a multi-load pipeline materialized by itself from
the command line (`dagster asset materialize --select`, `dg launch --assets`), in a separate
process against a real instance: only what that table needs runs, its checks are evaluated,
the other table is not written; a check run without its pipeline says why it cannot."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest

from pipeline_defs_tests.conftest import REPO, copy_configs

DAGSTER = str(Path(sys.executable).parent / "dagster")
DG = str(Path(sys.executable).parent / "dg")


def _expected_monthly(data: Path) -> dict:
    with (data / "customers.csv").open() as f:
        country = {int(r["customer_id"]): r["country"] for r in csv.DictReader(f)}
    out: dict = defaultdict(lambda: [Decimal(0), 0])
    for f in sorted(data.glob("orders*/*.jsonl")):
        for line in f.read_text().splitlines():
            o = json.loads(line, parse_float=Decimal)
            if o["status"] == "completed" and o["amount"] > 0 and o["customer_id"] is not None:
                k = (country[o["customer_id"]], int(o["order_date"][:4]),
                     int(o["order_date"][5:7]))
                out[k][0] += o["amount"]
                out[k][1] += 1
    return {k: tuple(v) for k, v in out.items()}


@pytest.mark.parametrize("command", [
    [DAGSTER, "asset", "materialize", "--select", "monthly_sales", "-m",
     "pipeline_defs.definitions"],
    [DG, "launch", "--assets", "monthly_sales"],  # through the project's defs folder component
], ids=["dagster", "dg"])
def test_one_asset_of_a_pipeline_materialized_from_the_command_line(tmp_path, sample_data,
                                                                    command):
    home, out = tmp_path / "home", tmp_path / "out"
    home.mkdir()
    env = {**{k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"},
           "DAGSTER_HOME": str(home), "SPARK_MASTER": "local[2]",
           "PIPELINE_CONFIG_DIR": str(copy_configs(tmp_path / "configs")),
           "PIPELINE_DATA_DIR": str(sample_data), "PIPELINE_OUTPUT_DIR": str(out)}
    r = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = pq.read_table(out / "files" / "monthly_sales").to_pylist()
    got = {(t["country"], t["year"], t["month"]): (t["amount_sum"], t["order_id_count"])
           for t in table}
    assert got == _expected_monthly(sample_data)
    assert not (out / "delta" / "enriched_orders").exists()  # the other table: not selected
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        assert run.job_name == "__ASSET_JOB" and run.status == dg.DagsterRunStatus.SUCCESS
        mat = instance.get_latest_materialization_event(dg.AssetKey(["monthly_sales"]))
        assert mat.asset_materialization.metadata["dagster/row_count"].value == len(got)
        assert instance.get_latest_materialization_event(
            dg.AssetKey(["enriched_orders"])) is None
        # the validations' checks are on enriched_orders (monthly_sales is an aggregate of
        # those rows, not those rows), and it was not selected: none ran
        checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey(["enriched_orders"]), "sane_amounts")])
        assert not checks


def test_a_check_run_alone_says_why_it_cannot(tmp_path, sample_data):
    from pipeline_defs.definitions import build_definitions
    defs = build_definitions(copy_configs(tmp_path / "configs"),
                             params={"data_dir": str(sample_data), "output_dir": str(tmp_path)})
    key = dg.AssetCheckKey(dg.AssetKey(["enriched_orders"]), "sane_amounts")
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_selection=set(), asset_check_selection={key})  # the check alone, as the UI runs it
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                    raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert ("sane_amounts on enriched_orders: these checks are evaluated while pipeline "
            "'orders-enrichment' writes the assets they check") in \
        failure.event_specific_data.user_failure_data.description


def test_checks_of_a_materialized_asset_are_evaluated_with_it(tmp_path, sample_data):
    from pipeline_defs.definitions import build_definitions
    defs = build_definitions(copy_configs(tmp_path / "configs"),
                             params={"data_dir": str(sample_data), "output_dir": str(tmp_path)})
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(["orders_2025"])])
    assert result.success
    evals = {e.event_specific_data.check_name: e.event_specific_data
             for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert set(evals) == {"order_rules", "one_row_per_order", "enough_orders"}
    written = instance.get_latest_materialization_event(dg.AssetKey(["orders_2025"])) \
        .asset_materialization.metadata["dagster/row_count"].value
    # the row-count rule counted the rows left after the quarantine step: those written
    assert evals["enough_orders"].metadata["rows"].value == written
    assert evals["order_rules"].metadata["rows"].value > written  # it saw them all


def test_a_quarantine_table_is_an_asset_of_its_pipeline(tmp_path, sample_data, spark):
    from pipeline_defs.definitions import build_definitions
    defs = build_definitions(copy_configs(tmp_path / "configs"),
                             params={"data_dir": str(sample_data), "output_dir": str(tmp_path)})
    key = dg.AssetKey(["quarantine", "orders_quality", "order_rules"])
    spec = {s.key: s for s in defs.resolve_all_asset_specs()}[key]
    assert spec.group_name == "orders_quality" and "delta" in spec.kinds
    assert {d.asset_key for d in spec.deps} == {dg.AssetKey(["sources", "orders_2025"])}
    instance = dg.DagsterInstance.ephemeral()
    assert defs.resolve_job_def("orders_quality").execute_in_process(instance=instance).success
    mat = instance.get_latest_materialization_event(key).asset_materialization
    stored = spark.read.format("delta").load(mat.metadata["location"].text)
    assert mat.metadata["dagster/row_count"].value == stored.count() > 0
    columns = {c.name: c.description for c in mat.metadata["dagster/column_schema"].schema.columns}
    assert columns["_dq_rules"] == "the rules of the group the row broke"
    assert set(stored.columns) == set(columns)


def test_column_lineage_of_a_join_and_an_aggregate(tmp_path, sample_data):
    """orders (two sources, unioned) joined to customers, derived, aggregated by country and
    month: each written column names the source columns it comes from."""
    from pipeline_defs.definitions import build_definitions
    defs = build_definitions(copy_configs(tmp_path / "configs"),
                             params={"data_dir": str(sample_data), "output_dir": str(tmp_path)})
    instance = dg.DagsterInstance.ephemeral()
    assert defs.resolve_job_def("orders_enrichment").execute_in_process(
        instance=instance).success
    meta = instance.get_latest_materialization_event(dg.AssetKey(["monthly_sales"])) \
        .asset_materialization.metadata
    lineage = meta["dagster/column_lineage"].value.deps_by_column
    got = {column: sorted((d.asset_key.to_user_string(), d.column_name) for d in deps)
           for column, deps in lineage.items()}
    orders = [("sources/orders", "{}"), ("sources/orders_2025", "{}")]

    def both(column):
        return sorted((k, c.format(column)) for k, c in orders)
    assert got == {
        "country": [("sources/customers", "country")],
        "year": both("order_date"),
        "month": both("order_date"),
        "amount_sum": both("amount"),
        "order_id_count": both("order_id"),
        "avg_unit_price": sorted(both("amount") + both("quantity")),
    }
    enriched = instance.get_latest_materialization_event(dg.AssetKey(["enriched_orders"])) \
        .asset_materialization.metadata["dagster/column_lineage"].value.deps_by_column
    # an inner join keeps the key once, as Spark's plan says: the orders' column
    assert sorted((d.asset_key.to_user_string(), d.column_name)
                  for d in enriched["customer_id"]) == both("customer_id")
    assert [(d.asset_key.to_user_string(), d.column_name) for d in enriched["email"]] == [
        ("sources/customers", "email")]
