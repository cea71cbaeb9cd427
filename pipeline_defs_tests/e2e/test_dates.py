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

from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.definitions import definitions_for
from pipeline_defs.errors import ConfigError
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
        {"type": "load", "method": "toFile", "config": {"path": "/out/${DATE:yyyyQQ}"}}]})
    with pytest.raises(ConfigError) as e:
        load_pipeline(f, registry)
    text = str(e.value)
    assert "config.path: ${DATE-x}: write ${DATE}, ${DATE-N}, ${DATE+N} or" in text
    assert "'QQ' in date pattern 'yyyyQQ' is not supported" in text
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
