"""Issue 17: the Spark resource is dagster-pyspark's LazyPySparkResource: a run sets Spark
settings in `spark_config` (the Launchpad shows today's defaults; run config through the
webserver's GraphQL; `pipeline run --spark-conf`), merged with the product's own settings;
settings that would break those are refused; static settings a second run in the same
process asks for are reported. Each run reads its settings back from the session it ran on:
a `sql` step runs Spark's `SET key`, and a load writes the answer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pyarrow.parquet as pq
import pytest
from dagster_pyspark import LazyPySparkResource

from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.dagster_layer.resources.spark import SparkResource
from pipeline_defs.definitions import default_resources, definitions_for
from pipeline_defs_tests.conftest import write_json
from pipeline_defs_tests.e2e.test_webserver import gql, run_status, serve

BIN = Path(sys.executable).parent
KEY = "spark.sql.shuffle.partitions"


def reads_back(out: Path, key: str = KEY) -> dict:
    return {"name": "spark-conf", "description": "Reads back a Spark setting of the run.",
            "steps": [
                {"type": "transform", "method": "sql", "config": {"query": f"SET {key}"}},
                {"type": "load", "method": "toDeltaLake", "config": {
                    "path": str(out), "mode": "overwrite"}}]}


def value_in(out: Path) -> str:
    """The value the run's session had (the Delta table's one row, read with pyarrow)."""
    live = [json.loads(line)["add"]["path"] for f in sorted((out / "_delta_log").glob("*.json"))
            for line in f.read_text().splitlines() if line.startswith('{"add"')]
    return pq.read_table(out / live[-1]).to_pylist()[0]["value"]


def test_the_resource_is_dagster_pysparks_with_the_defaults_to_see():
    spark = default_resources()["spark"]
    assert isinstance(spark, SparkResource) and isinstance(spark, LazyPySparkResource)
    assert spark.spark_config["spark.master"] and spark.spark_config["spark.app.name"]
    assert spark.jars_dir.endswith("jars")


def test_a_run_launched_through_graphql_uses_its_spark_config(tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    write_json(configs / "spark-conf.json", reads_back(tmp_path / "out"))
    with serve(tmp_path, configs, {}) as (port, _):
        repo = gql(port, """{ repositoriesOrError { ... on RepositoryConnection { nodes {
            name location { name } } } } }""")["repositoriesOrError"]["nodes"][0]
        selector = {"repositoryLocationName": repo["location"]["name"],
                    "repositoryName": repo["name"], "jobName": "spark_conf"}
        # what the Launchpad starts from: today's settings, under the resource's spark_config
        default = gql(port, """query($s: PipelineSelector!) { runConfigSchemaOrError(
            selector: $s) { ... on RunConfigSchema { rootDefaultYaml } } }""",
                      {"s": {**{k: v for k, v in selector.items() if k != "jobName"},
                             "pipelineName": "spark_conf"}}
                      )["runConfigSchemaOrError"]["rootDefaultYaml"]
        assert "spark_config:" in default and "spark.master: local[2]" in default, default
        config = {"resources": {"spark": {"config": {"spark_config": {
            "spark.master": "local[2]", KEY: "3"}}}}}
        launched = gql(port, """mutation($p: ExecutionParams!) { launchRun(executionParams:
            $p) { __typename ... on LaunchRunSuccess { run { runId } }
            ... on PythonError { message } } }""", {"p": {
            "selector": selector, "runConfigData": config}})["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        deadline = time.monotonic() + 240
        while run_status(port, run_id) not in ("SUCCESS", "FAILURE", "CANCELED"):
            assert time.monotonic() < deadline, "the run did not end in 240 s"
            time.sleep(1)
        assert run_status(port, run_id) == "SUCCESS", \
            (tmp_path / "daemon.log").read_text()[-3000:]
        assert value_in(tmp_path / "out") == "3"

        # a setting that would break one the product needs: the run fails saying which, why
        config["resources"]["spark"]["config"]["spark_config"]["spark.redaction.regex"] = "x"
        launched = gql(port, """mutation($p: ExecutionParams!) { launchRun(executionParams:
            $p) { __typename ... on LaunchRunSuccess { run { runId } } } }""", {"p": {
            "selector": selector, "runConfigData": config}})["launchRun"]
        run_id = launched["run"]["runId"]
        while run_status(port, run_id) not in ("SUCCESS", "FAILURE", "CANCELED"):
            assert time.monotonic() < deadline + 240, "the refused run did not end"
            time.sleep(1)
        assert run_status(port, run_id) == "FAILURE"
        logs = gql(port, """query($id: ID!) { logsForRun(runId: $id) { ... on EventConnection {
            events { __typename ... on MessageEvent { message }
            ... on ErrorEvent { error { message causes { message } } } } } } }""",
                   {"id": run_id})["logsForRun"]["events"]
        text = json.dumps(logs)
        assert "spark.redaction.regex cannot be changed (it keeps secrets out of Spark's UI " \
               "and logs); remove it from spark_config" in text, text[-3000:]


def test_pipeline_run_spark_conf(tmp_path):
    f = write_json(tmp_path / "p.json", reads_back(tmp_path / "out"))
    env = {"DAGSTER_HOME": str(tmp_path / "home"), "SPARK_MASTER": "local[1]"}
    run = subprocess.run([str(BIN / "pipeline"), "run", str(f), "--spark-conf", f"{KEY}=5"],
                         capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert value_in(tmp_path / "out") == "5"
    refused = subprocess.run([str(BIN / "pipeline"), "run", str(f), "--spark-conf",
                              "spark.sql.session.timeZone=Europe/Paris"],
                             capture_output=True, text=True, env={**os.environ, **env},
                             timeout=300)
    assert refused.returncode == 2
    assert refused.stderr.strip() == (
        f"{f}: --spark-conf refused: spark.sql.session.timeZone cannot be changed "
        "(timestamps are read, computed and loaded into databases as UTC); remove it from "
        "spark_config.")
    bad = subprocess.run([str(BIN / "pipeline"), "run", str(f), "--spark-conf", "novalue"],
                         capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert bad.returncode != 0 and "--spark-conf takes name=value, got 'novalue'" in bad.stderr


def test_a_second_run_in_the_process_gets_runtime_settings_and_hears_of_static_ones(
        tmp_path, registry, spark, vault_resource):
    """The tests' session is already running: a run's runtime setting applies to it for that
    run only; its static ones cannot, and the run says so."""
    p = load_pipeline(write_json(tmp_path / "p.json", reads_back(tmp_path / "out")), registry)
    res = {**default_resources(), "vault": vault_resource}
    job = definitions_for([p], res).resolve_job_def("spark_conf")
    before = spark.conf.get(KEY)
    master = spark.sparkContext.master
    other_master = "local[3]" if master != "local[3]" else "local[1]"
    instance = dg.DagsterInstance.ephemeral()
    result = job.execute_in_process(instance=instance, run_config={"resources": {"spark": {
        "config": {"spark_config": {"spark.master": other_master, KEY: "7",
                                    "spark.executor.memory": "3g",
                                    "spark.sql.extensions": "com.example.Extension"}}}}})
    assert result.success
    assert value_in(tmp_path / "out") == "7"
    assert spark.conf.get(KEY) == before  # back as it was when the run ended
    warnings = [e.user_message for e in instance.all_logs(result.run_id)
                if "Spark settings not applied" in (e.user_message or "")]
    assert len(warnings) == 1, warnings
    assert f"spark.master={other_master} (the session has {master})" in warnings[0]
    assert "spark.executor.memory=3g" in warnings[0]
    assert "spark.sql.extensions=com.example.Extension" in warnings[0]
    assert "they apply in a new process" in warnings[0]
    # a run that asks for nothing special hears nothing
    instance = dg.DagsterInstance.ephemeral()
    result = job.execute_in_process(instance=instance)
    assert result.success and value_in(tmp_path / "out") == before
    assert not [e for e in instance.all_logs(result.run_id)
                if "Spark settings not applied" in (e.user_message or "")]


@pytest.mark.parametrize("key,value", [
    ("spark.sql.catalog.spark_catalog", "org.example.Catalog"),
    ("spark.sql.redaction.options.regex", "nothing"),
    ("spark.pyspark.python", "/usr/bin/python3"),
])
def test_refused_settings_name_the_key_and_the_fix(key, value):
    from pipeline_defs.spark.session import SparkSettings, refused
    assert refused({key: value}) and key in refused({key: value})[0]
    assert refused({key: value})[0].endswith("remove it from spark_config")
    with pytest.raises(Exception, match=f"Spark settings refused: {key}"):
        SparkSettings("local[1]", conf=((key, value),)).builder_conf()


def test_extensions_jars_and_java_options_are_added_to_the_products():
    from pipeline_defs.spark.session import DELTA_EXTENSION, SparkSettings
    conf = SparkSettings("local[1]", conf=(
        ("spark.sql.extensions", "com.example.Ext"),
        ("spark.driver.extraJavaOptions", "-Dx=1"),
        ("spark.driver.extraClassPath", "/opt/more/*"))).builder_conf()
    assert conf["spark.sql.extensions"] == f"{DELTA_EXTENSION},com.example.Ext"
    assert conf["spark.driver.extraJavaOptions"].startswith("-Dlog4j2.configurationFile=")
    assert conf["spark.driver.extraJavaOptions"].endswith(" -Dx=1")
    assert conf["spark.driver.extraClassPath"].endswith(":/opt/more/*")
    # the product's own entries are not repeated when the user lists them too
    again = SparkSettings("local[1]", conf=(("spark.sql.extensions", DELTA_EXTENSION),)
                          ).builder_conf()
    assert again["spark.sql.extensions"] == DELTA_EXTENSION
