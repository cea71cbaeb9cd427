"""Pipelines become Dagster jobs, ops and assets with the real dataflow."""
from __future__ import annotations

import dagster as dg
import pytest

from pipeline_defs.config.loader import load_pipelines
from pipeline_defs.definitions import build_definitions, definitions_for
from pipeline_defs.factory import asset_key_for, build_pipeline
from pipeline_defs_tests.conftest import COMPAT, copy_configs


@pytest.fixture(scope="module")
def compat_defs():
    from pipeline_defs.steps.registry import builtin_registry
    return definitions_for(load_pipelines([COMPAT], builtin_registry()))


def _upstream(job: dg.JobDefinition, op: str) -> set[str]:
    return {dep.node.name for deps in
            job.graph.dependency_structure.input_to_upstream_outputs_for_node(op).values()
            for dep in deps}


def test_every_example_is_a_job_with_in_process_executor(tmp_path):
    defs = build_definitions(copy_configs(tmp_path / "configs"))
    names = {j.name for j in defs.resolve_all_job_defs()}
    assert {"orders_enrichment", "sales_pivot", "customer_upsert"} <= names
    job = defs.get_job_def("orders_enrichment")
    assert job.executor_def is dg.in_process_executor
    assert job.tags["pipeline/name"] == "orders-enrichment"


def test_edges_follow_the_dataflow(tmp_path):
    job = build_definitions(copy_configs(tmp_path / "c")).get_job_def("orders_enrichment")
    assert _upstream(job, "customers") == set()
    assert _upstream(job, "orders_2025") == set() and _upstream(job, "orders_2024") == set()
    assert _upstream(job, "all_orders") == {"orders_2024", "orders_2025"}
    assert _upstream(job, "with_customer") == {"completed", "customers"}
    assert _upstream(job, "monthly") == {"sane_amounts"}  # a load leaves the current frame
    assert _upstream(job, "monthly_parquet") == {"monthly", "orders_delta"}  # load order kept


def test_all_nine_compat_examples_build(compat_defs):
    jobs = [j.name for j in compat_defs.resolve_all_job_defs() if not j.name.startswith("__")]
    assert len(jobs) == 9
    job = compat_defs.get_job_def("multi_source_join_pipeline")
    assert sorted(n.name for n in job.graph.nodes) == [
        "s01_fromPostgres_users", "s02_fromMySQL_orders", "s03_joinDataFrames_user_orders",
        "s04_aggregateData", "s05_toDeltaLake"]
    assert _upstream(job, "s03_joinDataFrames_user_orders") == {"s01_fromPostgres_users",
                                                                "s02_fromMySQL_orders"}


def test_load_targets_are_assets_with_lineage_from_sources(compat_defs):
    specs = {s.key: s for s in compat_defs.resolve_all_asset_specs()}
    target = dg.AssetKey(["s3a", "data_lake", "delta", "user_order_summary"])
    assert target in specs
    assert {d.asset_key for d in specs[target].deps} == {
        dg.AssetKey(["postgres", "secret", "data", "postgres", "users"]),
        dg.AssetKey(["mysql", "secret", "data", "mysql", "orders"])}
    # a table that one pipeline reads and writes is one asset
    ckpt = dg.AssetKey(["file", "data", "delta", "checkpoint"])
    assert ckpt in specs and specs[ckpt].group_name == "incremental_load_pipeline"


@pytest.mark.parametrize("location,key", [
    ("/data/delta/orders", ["file", "data", "delta", "orders"]),
    ("s3a://data-lake/events-avro/", ["s3a", "data_lake", "events_avro"]),
    ("analytics.orders", ["table", "analytics", "orders"]),
    ("kafka://user-events", ["kafka", "user_events"]),
])
def test_asset_keys_from_locations(location, key):
    assert asset_key_for(location) == dg.AssetKey(key)
    assert asset_key_for(location, ["my", "key"]) == dg.AssetKey(["my", "key"])


def test_ops_describe_their_step(registry):
    p = load_pipelines([COMPAT / "simple-etl.json"], registry)[0]
    job = build_pipeline(p, registry).job
    op = job.graph.node_named("s01_fromPostgres_users").definition
    assert op.description == "Step 1: extract.fromPostgres (registered as 'users')"
    assert op.tags["pipeline/method"] == "fromPostgres"


def test_an_internal_error_is_reported_as_a_product_bug_in_one_line(spark, registry):
    """A bare JVM assertion (here Spark's own, from reading an Observation that an action
    which never reached it filled) becomes one line naming step, activity and what to do."""
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    from pipeline_defs.ops import _failure, observed_rows
    from pipeline_defs.steps.errors import internal_error
    obs = Observation("internal_error_test")
    df = spark.range(10).observe(obs, F.count(F.lit(1)).alias("rows"))
    df.limit(0).collect()  # fills the observation with an empty row
    assert observed_rows(obs) is None  # a missing count, not an error
    with pytest.raises(Exception) as raised:
        obs.get  # noqa: B018 - what the product used to call
    assert internal_error(raised.value) == "java.lang.AssertionError: assertion failed"
    p = load_pipelines([COMPAT / "simple-etl.json"], registry)[0]
    failure = _failure(p, p.steps[2], raised.value, activity="reading the row counts")
    text = failure.description
    assert text.startswith("pipeline 'simple-etl-pipeline', step 3 (load.toS3) failed: internal "
                           "error while reading the row counts (java.lang.AssertionError: "
                           "assertion failed). This is a bug in pipeline_defs, not in your "
                           "pipeline file")
    assert "\n" not in text and "\tat " not in text
    # a user's error (a Spark analysis error) is not called a bug
    with pytest.raises(Exception) as user:
        spark.range(1).select("no_such_column").collect()
    assert internal_error(user.value) is None
    assert "bug" not in _failure(p, p.steps[1], user.value).description
    assert internal_error(KeyError("x")) == "KeyError: 'x'"
