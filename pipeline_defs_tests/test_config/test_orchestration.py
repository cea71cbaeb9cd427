"""The orchestration keys of a pipeline file: what is accepted, and the errors (file, field,
fix) for what cannot run."""
from __future__ import annotations

import pytest

from pipeline_defs.common.errors import ConfigError
from pipeline_defs.config.loader import load_pipeline, load_pipelines
from pipeline_defs_tests.conftest import write_json

STEPS = [{"type": "extract", "method": "fromFile", "config": {"path": "/in"}},
         {"type": "load", "method": "toDeltaLake", "config": {"path": "/out/${name}"}}]


def _file(tmp_path, name: str, **top) -> str:
    steps = [dict(STEPS[0]), {**STEPS[1], "config": {"path": f"/out/{name}"}}]
    return str(write_json(tmp_path / f"{name}.json", {"name": name, "steps": steps, **top}))


def _problems(paths, registry) -> str:
    with pytest.raises(ConfigError) as e:
        load_pipelines(paths, registry)
    return str(e.value)


def test_every_key_of_the_plan_is_accepted(tmp_path, registry):
    _file(tmp_path, "upstream")
    f = _file(tmp_path, "downstream",
              schedule={"cron": "0 6 * * 1-5", "timezone": "America/New_York",
                        "enabled": False},
              dependencies=[{"pipeline": "upstream", "waitForCompletion": True,
                             "timeout": 3600000}],
              automation={"onCron": "@hourly"}, retries={"maxRetries": 2,
                                                         "delaySeconds": 10,
                                                         "backoff": "exponential"},
              pool="warehouse")
    (down, up) = load_pipelines([tmp_path], registry)  # in file order
    c = down.config
    assert (c.schedule.cron, c.schedule.timezone, c.schedule.enabled) == \
        ("0 6 * * 1-5", "America/New_York", False)
    assert c.dependencies[0].timeout == 3600000 and c.pool == "warehouse"
    (tmp_path / "x").mkdir()
    assert load_pipeline(write_json(tmp_path / "x" / "s.json", {
        "name": "s", "schedule": "@daily", "automation": "eager", "steps": [
            STEPS[0], {**STEPS[1], "config": {"path": "/o"},
                       "condition": "previous_step_count > 0",
                       "retries": {"maxRetries": 1}, "pool": "db"}]}),
        registry).steps[1].condition == "previous_step_count > 0"
    assert f.endswith("downstream.json") and up.name == "upstream"


@pytest.mark.parametrize("schedule, message", [
    ("61 6 * * *", "schedule.cron: '61 6 * * *': minute '61' is outside 0-59"),
    ("0 6 * *", "schedule.cron: '0 6 * *' has 4 fields; a cron expression has five"),
    ({"cron": "0 6 * * *", "timezone": "Mars/Olympus"},
     "schedule.timezone: unknown timezone 'Mars/Olympus'"),
])
def test_a_bad_cron_or_timezone_is_a_config_error(tmp_path, registry, schedule, message):
    f = _file(tmp_path, "p", schedule=schedule)
    assert f"{f}, schedule" in _problems([f], registry) and message in _problems([f], registry)


def test_unknown_upstreams_and_cycles_are_errors_listing_the_pipelines(tmp_path, registry):
    a = _file(tmp_path, "orders-a", dependencies=[{"pipeline": "orders-b"}])
    b = _file(tmp_path, "orders-b", dependencies=[{"pipeline": "orders-c"}])
    c = _file(tmp_path, "orders-c", dependencies=[{"pipeline": "orders-a"},
                                                  {"pipeline": "order-a"}])
    text = _problems([tmp_path], registry)
    assert (f"{c}, dependencies[1].pipeline: names pipeline 'order-a', which is not among the "
            "pipelines loaded (orders-a, orders-b, orders-c). Did you mean 'orders-a'?") in text
    assert (f"{c}, dependencies: dependencies form a cycle: 'orders-a' -> 'orders-b' -> "
            "'orders-c' -> 'orders-a' (each waits for the next)") in text
    assert text.startswith("2 problems:")  # the two, and nothing about the other files
    assert f"{a}," not in text and f"{b}," not in text


def test_the_documented_example_uses_every_key_and_builds(registry):
    """docs/examples/orders_followup.json, with the example it depends on: valid, and
    Dagster gets its schedule, its dependency sensor, retry policies and pool."""
    from pipeline_defs.definitions import definitions_for
    from pipeline_defs_tests.conftest import CONFIGS, REPO
    example = REPO / "docs" / "examples" / "orders_followup.json"
    pipelines = load_pipelines([example, CONFIGS / "orders_enrichment.json"], registry)
    defs = definitions_for(pipelines)
    schedule = defs.resolve_schedule_def("orders_followup_schedule")
    assert schedule.cron_schedule == "0 6 * * 1-5" and \
        schedule.execution_timezone == "America/New_York"
    assert defs.resolve_sensor_def("orders_followup_after_upstreams").job_name == \
        "orders_followup"
    job = defs.resolve_job_def("orders_followup")
    ops = {n.name: n.definition for n in job.graph.nodes[0].definition.nodes}
    assert ops["per_country_csv"].retry_policy.max_retries == 3  # the step's own
    assert ops["enriched"].retry_policy.max_retries == 2  # the pipeline's
    assert {d.pool for d in ops.values()} == {"warehouse"}


def test_partitions_are_checked_and_need_runs_that_name_a_partition(tmp_path, registry):
    f = _file(tmp_path, "p", partitions={"type": "hourly", "start": "2024-01-01"})
    assert "partitions: start '2024-01-01' is not a hourly partition start (e.g. " \
        "\"2024-01-01-00:00\")" in _problems([f], registry)
    # dependencies and sensors of a partitioned pipeline start runs naming a partition
    _file(tmp_path, "up")
    f = _file(tmp_path, "q", partitions={"type": "daily", "start": "2024-01-01"},
              sensors=[{"type": "newFiles", "path": "/landing"}],
              dependencies=[{"pipeline": "up"}])
    assert load_pipeline(f, registry).config.partitions.type == "daily"


@pytest.mark.parametrize("sensor, message", [
    ({"path": "ftp://host/landing"}, "sensors[0].path: 'ftp://' paths are not watched; use a "
     "local path, file://, s3a://, s3://, hdfs:// or webhdfs://"),
    ({"path": "hdfs:///landing"}, "sensors[0].path: 'hdfs:///landing' names no NameNode: "
     "write hdfs://<namenode>[:port]/directory"),
    ({"path": "hdfs://nn/landing", "webhdfs": "nn:9870"}, "sensors[0].webhdfs: 'nn:9870' is "
     "not a web address: write http://<namenode>:9870"),
    ({"path": "s3a://b/landing", "webhdfs": "http://nn:9870"}, "'webhdfs' is for hdfs:// "
     "paths only"),
    ({"path": "/landing", "endpoint": "http://s3:9000"}, "'endpoint' is for s3a:// and s3:// "
     "paths only"),
])
def test_a_new_files_path_names_where_and_how_to_list(tmp_path, registry, sensor, message):
    f = _file(tmp_path, "r", sensors=[{"type": "newFiles", **sensor}])
    assert message in _problems([f], registry)


def test_hdfs_paths_are_listed_through_the_namenodes_web_address():
    from pipeline_defs.config.orchestration import NewFiles
    from pipeline_defs.dagster_layer.orchestration import webhdfs_url

    def url(**kw):
        return webhdfs_url(NewFiles(type="newFiles", **kw))
    assert url(path="hdfs://nn:8020/landing/") == "http://nn:9870/webhdfs/v1/landing"
    assert url(path="hdfs://nn/a/b", webhdfs="https://web:50470/") == \
        "https://web:50470/webhdfs/v1/a/b"
    assert url(path="webhdfs://nn:9870/a") == "http://nn:9870/webhdfs/v1/a"
    assert url(path="swebhdfs://nn:9871/a") == "https://nn:9871/webhdfs/v1/a"


def test_an_unreachable_namenode_is_one_line_naming_the_fix():
    import socket

    from pipeline_defs.config.orchestration import NewFiles
    from pipeline_defs.dagster_layer.orchestration import list_files
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RuntimeError) as e:
        list_files(NewFiles(type="newFiles", path="hdfs://127.0.0.1:8020/landing",
                            webhdfs=f"http://127.0.0.1:{port}"))
    assert str(e.value).startswith("newFiles: cannot list hdfs://127.0.0.1:8020/landing: ")
    assert "set the sensor's 'webhdfs' to the NameNode's web address" in str(e.value)


def test_a_schedule_on_partitions_runs_the_latest_complete_one(tmp_path, registry):
    import datetime as dt

    import dagster as dg

    from pipeline_defs.definitions import definitions_for
    f = _file(tmp_path, "daily", partitions={"type": "daily", "start": "2024-01-01",
                                             "timezone": "UTC"},
              schedule={"cron": "0 6 * * *", "timezone": "UTC"})
    defs = definitions_for(load_pipelines([f], registry))
    schedule = defs.resolve_schedule_def("daily_schedule")
    with dg.instance_for_test() as instance:
        ctx = dg.build_schedule_context(
            instance=instance, repository_def=defs.get_repository_def(),
            scheduled_execution_time=dt.datetime(2024, 1, 5, 6, tzinfo=dt.UTC))
        (request,) = schedule.evaluate_tick(ctx).run_requests
    assert request.partition_key == "2024-01-04"  # the 5th is not complete at 06:00


def test_params_fill_the_top_level_paths_and_a_missing_one_is_an_error(tmp_path, registry):
    f = _file(tmp_path, "s", params={"out": "/data"}, mode="streaming",
              quarantineRoot="${out}/q/${DATE:yyyy}",
              streaming={"trigger": "availableNow", "checkpointRoot": "${out}/checkpoints"})
    p = load_pipeline(f, registry, {"out": "/elsewhere"}, date="2024-03-02")
    assert p.config.streaming.checkpoint_root == "/elsewhere/checkpoints"
    assert p.config.quarantine_root == "/elsewhere/q/2024"
    f = _file(tmp_path, "t", quarantineRoot="${nowhere}/q")
    assert "t.json, quarantineRoot: placeholder ${nowhere} has no value." in \
        _problems([f], registry)
