"""Pipelines become Dagster jobs, ops and assets with the real dataflow."""
from __future__ import annotations

import dagster as dg
import pytest

from pipeline_defs.common.errors import ConfigError
from pipeline_defs.config.loader import load_pipelines
from pipeline_defs.dagster_layer.factory import build_pipeline
from pipeline_defs.definitions import build_definitions, definitions_for
from pipeline_defs_tests.conftest import COMPAT, copy_configs, write_json


@pytest.fixture(scope="module")
def compat_defs():
    from pipeline_defs.steps.registry import builtin_registry
    return definitions_for(load_pipelines([COMPAT], builtin_registry()))


def _steps(job: dg.JobDefinition) -> dg.GraphDefinition:
    """The pipeline's graph: the node of its asset job beside its checks."""
    (node,) = [n for n in job.graph.nodes if n.name.endswith("_steps")]
    return node.definition


def _upstream(job: dg.JobDefinition, op: str) -> set[str]:
    return {dep.node.name for deps in
            _steps(job).dependency_structure.input_to_upstream_outputs_for_node(op).values()
            for dep in deps}


def test_every_example_is_a_job_with_in_process_executor(tmp_path):
    defs = build_definitions(copy_configs(tmp_path / "configs"))
    names = {j.name for j in defs.resolve_all_job_defs()}
    assert {"orders_enrichment", "sales_pivot", "customer_upsert"} <= names
    job = defs.resolve_job_def("orders_enrichment")
    assert job.executor_def is dg.in_process_executor
    assert job.tags["pipeline/name"] == "orders-enrichment"


def test_edges_follow_the_dataflow(tmp_path):
    job = build_definitions(copy_configs(tmp_path / "c")).resolve_job_def("orders_enrichment")
    assert _upstream(job, "customers") == set()
    assert _upstream(job, "orders_2025") == set() and _upstream(job, "orders_2024") == set()
    assert _upstream(job, "all_orders") == {"orders_2024", "orders_2025"}
    assert _upstream(job, "with_customer") == {"completed", "customers"}
    assert _upstream(job, "monthly") == {"sane_amounts"}  # a load leaves the current frame
    assert _upstream(job, "monthly_parquet") == {"monthly", "orders_delta"}  # load order kept


def test_all_nine_compat_examples_build(compat_defs):
    jobs = [j.name for j in compat_defs.resolve_all_job_defs() if not j.name.startswith("__")]
    assert len(jobs) == 9
    job = compat_defs.resolve_job_def("multi_source_join_pipeline")
    assert sorted(n.name for n in _steps(job).nodes) == [
        "s01_fromPostgres_users", "s02_fromMySQL_orders", "s03_joinDataFrames_user_orders",
        "s04_aggregateData", "s05_toDeltaLake"]
    assert _upstream(job, "s03_joinDataFrames_user_orders") == {"s01_fromPostgres_users",
                                                                "s02_fromMySQL_orders"}


def test_load_targets_are_assets_with_lineage_from_sources(compat_defs):
    specs = {s.key: s for s in compat_defs.resolve_all_asset_specs()}
    target = dg.AssetKey(["user_order_summary"])
    assert specs[target].group_name == "multi_source_join_pipeline"
    assert {"delta", "spark"} <= set(specs[target].kinds)
    assert specs[target].metadata["dagster/uri"] == "s3a://data-lake/delta/user_order_summary"
    # two different `users` tables are read (two databases): told apart by location
    assert {d.asset_key for d in specs[target].deps} == {
        dg.AssetKey(["sources", "postgres", "secret", "data", "postgres", "users"]),
        dg.AssetKey(["sources", "orders"])}
    assert specs[dg.AssetKey(["sources", "orders"])].group_name == "sources"
    # a table that one pipeline reads and writes is one asset
    ckpt = dg.AssetKey(["checkpoint"])
    assert ckpt in specs and specs[ckpt].group_name == "incremental_load_pipeline"
    assert not specs[ckpt].deps


@pytest.mark.parametrize("location,name", [
    ("/data/delta/orders", "orders"),
    (".cache/sample-data/customers.csv", "customers"),
    ("s3a://data-lake/events-avro/", "events-avro"),
    ("/data/.hidden", "hidden"),
])
def test_a_table_is_named_by_its_last_segment(location, name):
    from pipeline_defs.steps.files import ToFile
    assert ToFile.model_validate({"path": location}).table_name() == name


def _writer(tmp_path, name, path, **extra):
    return write_json(tmp_path / f"{name}.json", {"name": name, "steps": [
        {"type": "extract", "method": "fromFile", "config": {"path": "${src}/in.csv",
                                                             "format": "csv"}},
        {"type": "load", "method": "toDeltaLake", "config": {"path": path, **extra}}],
        "params": {"src": "/data"}})


def test_keys_do_not_depend_on_the_working_directory_or_parameters(tmp_path, registry,
                                                                   monkeypatch):
    f = _writer(tmp_path, "a", "${out}/delta/orders")
    keys = []
    for cwd, out in ((tmp_path, "/srv"), (tmp_path.parent, "relative/out")):
        monkeypatch.chdir(cwd)
        p = load_pipelines([f], registry, {"out": out})
        keys.append(sorted(s.key.to_user_string() for s in
                           definitions_for(p).resolve_all_asset_specs()))
    assert keys[0] == keys[1] == ["orders", "sources/in"]


@pytest.mark.parametrize("given", [["us", "orders"], "us/orders"])
def test_two_tables_with_one_key_are_an_error_naming_both_files(tmp_path, registry, given):
    a = _writer(tmp_path, "a", "/lake/eu/orders")
    b = _writer(tmp_path, "b", "/lake/us/orders")
    with pytest.raises(ConfigError) as e:
        load_pipelines([a, b], registry)
    msg = str(e.value)
    assert (f"{b}, step 2 (load.toDeltaLake), config.assetKey: writes /lake/us/orders as asset "
            f"orders, the key of /lake/eu/orders written by {a} (step 2). Two tables cannot "
            "share an asset key: give one of the loads \"assetKey\"") in msg
    b = _writer(tmp_path, "b", "/lake/us/orders", assetKey=given)  # a list, or "a/b" as Dagster
    keys = {s.key for s in definitions_for(load_pipelines([a, b], registry))
            .resolve_all_asset_specs()}
    assert {dg.AssetKey(["orders"]), dg.AssetKey(["us", "orders"])} <= keys


def test_a_table_written_by_two_pipelines_is_an_error_naming_both(tmp_path, registry):
    """One table, one asset, one writing pipeline (one definition and history in Dagster)."""
    a = _writer(tmp_path, "a", "/lake/orders")
    b = _writer(tmp_path, "b", "/lake/./orders/")
    with pytest.raises(ConfigError, match=rf"{b}, step 2 \(load.toDeltaLake\), config: writes "
                       r"/lake/./orders/, which pipeline 'a' writes too \(step 2\). A table is "
                       "one asset with one writing pipeline"):
        load_pipelines([b, a], registry)


def test_a_table_one_pipeline_writes_and_another_reads_links_them(tmp_path, registry):
    a = _writer(tmp_path, "a", "/lake/orders")
    b = write_json(tmp_path / "b.json", {"name": "b", "steps": [
        {"type": "extract", "method": "fromDeltaLake", "config": {"path": "/lake/orders"}},
        {"type": "load", "method": "toFile", "config": {"path": "/lake/report.csv",
                                                        "format": "csv"}}]})
    specs = {s.key: s for s in definitions_for(load_pipelines([a, b], registry))
             .resolve_all_asset_specs()}
    assert {d.asset_key for d in specs[dg.AssetKey(["report"])].deps} == {dg.AssetKey(["orders"])}
    assert specs[dg.AssetKey(["orders"])].group_name == "a"


def test_ops_describe_their_step(registry):
    p = load_pipelines([COMPAT / "simple-etl.json"], registry)[0]
    graph = build_pipeline(p, registry).graph
    op = graph.node_named("s01_fromPostgres_users").definition
    assert op.description == (
        "Step 1: extract.fromPostgres (registered as 'users'): table=\"users\", "
        "credentialPath=\"secret/data/postgres/production\", registerAs=\"users\"")
    assert op.tags["pipeline/method"] == "fromPostgres"
    assert op.output_defs[0].dagster_type.display_name == "SparkDataFrame"
    load = graph.node_named("s03_toS3").definition
    assert load.input_defs[0].dagster_type.display_name == "SparkDataFrame"
    assert load.output_defs[0].dagster_type.display_name == "LoadedTable"


def test_op_descriptions_mask_secrets(tmp_path, registry):
    f = write_json(tmp_path / "p.json", {"name": "p", "steps": [
        {"type": "extract", "method": "fromPostgres", "config": {
            "table": "t", "host": "db", "database": "d", "username": "u",
            "password": "hunter2-secret"}},
        {"type": "load", "method": "toFile", "config": {"path": "/o"}}]})
    graph = build_pipeline(load_pipelines([f], registry)[0], registry).graph
    text = graph.node_named("s01_fromPostgres").definition.description
    assert 'password="***"' in text and "hunter2" not in text


def test_an_internal_error_is_reported_as_a_product_bug_in_one_line(spark, registry):
    """A bare JVM assertion (here Spark's own, from reading an Observation that an action
    which never reached it filled) becomes one line naming step, activity and what to do."""
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import AnalysisException
    from pyspark.sql import Observation
    from pyspark.sql import functions as F

    from pipeline_defs.dagster_layer.failures import step_failure
    from pipeline_defs.dagster_layer.outputs import observed_rows
    from pipeline_defs.steps.errors import internal_error
    obs = Observation("internal_error_test")
    df = spark.range(10).observe(obs, F.count(F.lit(1)).alias("rows"))
    df.limit(0).collect()  # fills the observation with an empty row
    assert observed_rows(obs) is None  # a missing count, not an error
    with pytest.raises(Py4JJavaError) as raised:
        obs.get  # noqa: B018 - what the product used to call
    assert internal_error(raised.value) == "java.lang.AssertionError: assertion failed"
    p = load_pipelines([COMPAT / "simple-etl.json"], registry)[0]
    failure = step_failure(p, p.steps[2], raised.value, activity="reading the row counts")
    text = failure.description
    assert text.startswith("pipeline 'simple-etl-pipeline', step 3 (load.toS3) failed: internal "
                           "error while reading the row counts (java.lang.AssertionError: "
                           "assertion failed). This is a bug in pipeline_defs, not in your "
                           "pipeline file")
    assert "\n" not in text and "\tat " not in text
    # a user's error (a Spark analysis error) is not called a bug
    with pytest.raises(AnalysisException) as user:
        spark.range(1).select("no_such_column").collect()
    assert internal_error(user.value) is None
    assert "bug" not in step_failure(p, p.steps[1], user.value).description
    assert internal_error(KeyError("x")) == "KeyError: 'x'"
