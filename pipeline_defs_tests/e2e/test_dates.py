"""${DATE} and friends: the run's date from `pipeline run --date`, from the run config (the
Launchpad), or today; step `parameters`; and values put into SQL that could change the
statement are refused, from the command line and from the run config."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from pipeline_defs.common.errors import ConfigError
from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.definitions import definitions_for
from pipeline_defs_tests.conftest import REPO, write_json

PIPELINE = str(Path(sys.executable).parent / "pipeline")


def _file(tmp_path: Path) -> Path:
    (tmp_path / "in.csv").write_text("id,day\n1,2024-01-01\n2,2024-01-02\n3,2024-01-03\n")
    return write_json(tmp_path / "dated.json", {
        "name": "dated", "params": {"region": "eu"}, "steps": [
            {"type": "extract", "method": "fromFile",
             "config": {"path": str(tmp_path / "in.csv"), "format": "csv",
                        "schema": "id INT, day DATE"}},
            {"type": "transform", "method": "filterRows", "name": "yesterday",
             "config": {"parameters": {"d": "${DATE-1}"},
                        "condition": "day = '${d}' AND '${region}' = 'eu'"}},
            {"type": "load", "method": "toFile", "name": "out",
             "config": {"path": str(tmp_path / "out" / "${DATE:yyyyMMdd}"),
                        "format": "csv", "mode": "overwrite"}}]})


def _ids(path: Path) -> list[int]:
    return sorted(int(line.split(",")[0]) for f in path.glob("part-*.csv")
                  for line in f.read_text().splitlines()[1:])


def test_the_date_of_pipeline_run(tmp_path):
    f = _file(tmp_path)
    r = subprocess.run([PIPELINE, "run", str(f), "--date", "2024-01-03"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _ids(tmp_path / "out" / "20240103") == [2]  # ${DATE-1} = 2024-01-02


def test_the_date_of_the_run_config_re_reads_the_steps(tmp_path, registry):
    p = load_pipeline(_file(tmp_path), registry)  # loaded today
    job = definitions_for([p]).resolve_job_def("dated")
    result = job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
        run_config={"resources": {"params_dated": {"config": {"DATE": "2024-01-02"}}}})
    assert result.success
    assert _ids(tmp_path / "out" / "20240102") == [1]


@pytest.mark.parametrize("value, why", [
    ("x' OR '1'='1", "sits inside a quoted SQL string, where a value may not contain its "
                     "quote (')"),
    ("eu\\' OR 1=1 --", "sits inside a quoted SQL string, where a value may not contain "
                        "its quote (') or a backslash"),
])
def test_hostile_values_cannot_change_the_sql(tmp_path, registry, value, why):
    f = _file(tmp_path)
    r = subprocess.run([PIPELINE, "run", str(f), "--param", f"region={value}"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and why in r.stderr, r.stderr[-2000:]
    assert "step 2 (transform.filterRows), config.condition: the value of ${region}" in r.stderr
    # the same value from the run config (the Launchpad) fails the step before any SQL runs
    p = load_pipeline(f, registry)
    result = definitions_for([p]).resolve_job_def("dated").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
        run_config={"resources": {"params_dated": {"config": {"region": value}}}})
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert why in failure.event_specific_data.user_failure_data.description
    assert not (tmp_path / "out").exists()


def test_unquoted_values_must_be_plain(tmp_path, registry):
    f = write_json(tmp_path / "n.json", {"name": "n", "params": {"min": "5"}, "steps": [
        {"type": "extract", "method": "fromFile", "config": {"path": "/in"}},
        {"type": "transform", "method": "filterRows", "config": {"condition": "v > ${min}"}},
        {"type": "load", "method": "toFile", "config": {"path": "/out"}}]})
    assert load_pipeline(f, registry, {"min": "7.5"}).steps[1].config.condition == "v > 7.5"
    for bad in ("1 OR 1=1", "5--", "(1)", "1;DROP TABLE t", "v", "0+v"):
        with pytest.raises(ConfigError, match="sits outside quotes, where a value may only "
                                              "be one number or true/false"):
            load_pipeline(f, registry, {"min": bad})


def test_bad_dates_are_config_errors(tmp_path, registry):
    f = write_json(tmp_path / "d.json", {"name": "d", "steps": [
        {"type": "extract", "method": "fromFile", "config": {"path": "/in/${DATE-x}"}},
        {"type": "load", "method": "toFile", "config": {"path": "/out/${DATE:yyyyGG}"}}]})
    with pytest.raises(ConfigError) as e:
        load_pipeline(f, registry)
    text = str(e.value)
    assert "config.path: ${DATE-x}: write ${DATE}, ${DATE-N}, ${DATE+N} or" in text
    assert "'GG' in date pattern 'yyyyGG' is not supported" in text
    with pytest.raises(ConfigError, match="'2024-13-01' is not a date"):
        load_pipeline(write_json(tmp_path / "ok.json", {"name": "ok", "steps": [
            {"type": "extract", "method": "fromFile", "config": {"path": "/in"}},
            {"type": "load", "method": "toFile", "config": {"path": "/out"}}]}),
            registry, date="2024-13-01")


def test_a_partition_of_pipeline_run_is_its_date(tmp_path):
    f = _file(tmp_path)
    doc = json.loads(f.read_text())
    doc["partitions"] = {"type": "daily", "start": "2024-01-01"}
    f.write_text(json.dumps(doc))
    r = subprocess.run([PIPELINE, "run", str(f), "--partition", "2024-01-02"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _ids(tmp_path / "out" / "20240102") == [1]
    r = subprocess.run([PIPELINE, "run", str(f), "--partition", "2023-12-31"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert "pipeline 'dated' has no partition '2023-12-31' (its daily partitions start at " \
        "2024-01-01)" in r.stderr


def _timed(tmp_path: Path, name: str, **top) -> Path:
    """A pipeline writing the hour and the day of its logical time, into a directory named
    by them."""
    (tmp_path / "in.csv").write_text("id\n1\n")
    return write_json(tmp_path / f"{name}.json", {"name": name, **top, "steps": [
        {"type": "extract", "method": "fromFile",
         "config": {"path": str(tmp_path / "in.csv"), "format": "csv", "schema": "id INT"}},
        {"type": "transform", "method": "enrichData",
         "config": {"columns": {"day": "'${DATE}'", "hour": "'${DATE:HH}'",
                                "before": "'${DATE-1:yyyy-MM-dd}'"}}},
        {"type": "load", "method": "toFile", "name": "out",
         "config": {"path": str(tmp_path / "out" / "${DATE:yyyyMMdd}" / "${DATE:HH}"),
                    "format": "json", "mode": "overwrite"}}]})


def _written(path: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(path.glob("part-*.json"))
            for line in f.read_text().splitlines()]


def test_hourly_partitions_keep_their_hour(tmp_path, registry):
    """Each hour of a day writes its own directory with its own ${DATE:HH}, in the
    partitions' timezone (the key is local time there)."""
    f = _timed(tmp_path, "hourly", partitions={
        "type": "hourly", "start": "2024-01-03-00:00", "timezone": "America/New_York"})
    job = definitions_for([load_pipeline(f, registry)]).resolve_job_def("hourly")
    for key in ("2024-01-03-05:00", "2024-01-03-06:00", "2024-01-04-00:00"):
        assert job.execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                      partition_key=key).success
    for day, hour, before in (("20240103", "05", "2024-01-02"), ("20240103", "06", "2024-01-02"),
                              ("20240104", "00", "2024-01-03")):
        (row,) = _written(tmp_path / "out" / day / hour)
        assert row == {"id": 1, "day": f"{day[:4]}-{day[4:6]}-{day[6:]}", "hour": hour,
                       "before": before}
    # `pipeline run --partition` with an hourly key
    r = subprocess.run([PIPELINE, "run", str(f), "--partition", "2024-01-03-23:00"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _written(tmp_path / "out" / "20240103" / "23")[0]["hour"] == "23"


def test_monthly_partitions_are_their_first_day(tmp_path, registry):
    f = _timed(tmp_path, "monthly", partitions={"type": "monthly", "start": "2024-01-01"})
    job = definitions_for([load_pipeline(f, registry)]).resolve_job_def("monthly")
    assert job.execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                  partition_key="2024-03-01").success
    (row,) = _written(tmp_path / "out" / "20240301" / "00")
    assert row["day"] == "2024-03-01" and row["before"] == "2024-02-29"


@pytest.mark.parametrize("partitioned", [False, True])
def test_a_schedule_tick_is_the_run_s_time_in_the_schedule_s_timezone(tmp_path, registry,
                                                                      partitioned):
    """22:00 in New York on Jan 5th is 03:00 UTC on the 6th: the run is for the 5th. The tick's
    run config says so (what "Preview tick result" shows), and the run writes the 5th."""
    import datetime as dt
    top = {"schedule": {"cron": "0 22 * * *", "timezone": "America/New_York"}}
    if partitioned:
        top["partitions"] = {"type": "daily", "start": "2024-01-01",
                             "timezone": "America/New_York"}
    f = _timed(tmp_path, "nightly", **top)
    defs = definitions_for([load_pipeline(f, registry)])
    schedule = defs.resolve_schedule_def("nightly_schedule")
    with dg.instance_for_test() as instance:
        ctx = dg.build_schedule_context(
            instance=instance, repository_def=defs.get_repository_def(),
            scheduled_execution_time=dt.datetime(2024, 1, 6, 3, tzinfo=dt.UTC))
        (request,) = schedule.evaluate_tick(ctx).run_requests
    # partitioned: the latest complete day (the 4th: the 5th ends at midnight)
    want = "2024-01-04T00:00:00" if partitioned else "2024-01-05T22:00:00"
    assert request.run_config == {"resources": {"params_nightly": {"config": {"DATE": want}}}}
    assert request.tags["pipeline/date"] == want
    result = defs.resolve_job_def("nightly").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), run_config=request.run_config,
        tags=request.tags, partition_key=request.partition_key)
    assert result.success
    day = want[:10].replace("-", "")
    assert _written(tmp_path / "out" / day / want[11:13])[0]["day"] == want[:10]


def test_date_arithmetic_and_patterns_at_run_time(tmp_path, spark):
    """${DATE+N}, ${DATE-1:yyyy/MM/dd}, MMM, EEE, h a, quoted text and w, in one run with
    --date, against Python's calendar (and java.time for the week)."""
    import datetime as dt
    (tmp_path / "in.csv").write_text("id\n1\n")
    cols = {"plus2": "'${DATE+2}'", "slashed": "'${DATE-1:yyyy/MM/dd}'",
            "mon": "'${DATE:MMM}'", "dow": "'${DATE:EEE}'", "clock": "'${DATE:h a}'",
            "week": "\"${DATE:'week' w 'of' yyyy}\""}
    f = write_json(tmp_path / "d.json", {"name": "d", "steps": [
        {"type": "extract", "method": "fromFile",
         "config": {"path": str(tmp_path / "in.csv"), "format": "csv", "schema": "id INT"}},
        {"type": "transform", "method": "enrichData", "config": {"columns": cols}},
        {"type": "load", "method": "toFile",
         "config": {"path": str(tmp_path / "out"), "format": "json"}}]})
    r = subprocess.run([PIPELINE, "run", str(f), "--date", "2024-03-01T13:45"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (row,) = _written(tmp_path / "out")
    t = dt.datetime(2024, 3, 1, 13, 45)
    jt = spark._jvm.java.time.LocalDateTime.of(2024, 3, 1, 13, 45)
    week = spark._jvm.java.time.format.DateTimeFormatter.ofPattern(
        "w", spark._jvm.java.util.Locale.US).format(jt)
    assert row == {"id": 1, "plus2": (t + dt.timedelta(days=2)).strftime("%Y-%m-%d"),
                   "slashed": (t - dt.timedelta(days=1)).strftime("%Y/%m/%d"),
                   "mon": t.strftime("%b"), "dow": t.strftime("%a"), "clock": "1 PM",
                   "week": f"week {week} of 2024"}
