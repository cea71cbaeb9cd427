"""The `pipeline` command as a user runs it: a separate process, a real Dagster instance."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from pipeline_defs_tests.conftest import COMPAT, CONFIGS, REPO, write_json

PIPELINE = str(Path(sys.executable).parent / "pipeline")


def cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    full_env = {**base, "SPARK_MASTER": "local[2]", **(env or {})}
    return subprocess.run([PIPELINE, *args], capture_output=True, text=True, env=full_env,
                          timeout=timeout, cwd=REPO)


def test_validate_ok_and_exit_codes(tmp_path):
    r = cli("validate", str(CONFIGS), str(COMPAT))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "16 valid, 0 invalid" in r.stdout  # 7 examples (one in SQL), 9 original files
    assert "ok    " + str(CONFIGS / "country_revenue.sql") in r.stdout
    write_json(tmp_path / "bad.json", {"name": "b", "steps": [
        {"type": "transform", "method": "filterRows", "config": {"conditon": "x"}}]})
    r = cli("validate", str(tmp_path), str(CONFIGS / "sales_pivot.json"))
    assert r.returncode == 1
    assert "FAIL  " + str(tmp_path / "bad.json") in r.stdout
    assert "Did you mean 'condition'?" in r.stdout and "1 valid, 1 invalid" in r.stdout


def test_list_and_schema():
    r = cli("list")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert any(ln.startswith("transform.joinDataFrames ") for ln in lines)
    assert len(lines) >= 36
    r = cli("schema")
    assert json.loads(r.stdout)["$defs"]["FilterRows"]["required"] == ["condition"]


def test_run_records_in_dagster_home_and_prints_summary(tmp_path, sample_data):
    home = tmp_path / "home"
    home.mkdir()
    out = tmp_path / "out"
    r = cli("run", str(CONFIGS / "customer_upsert.json"), "--param", f"data_dir={sample_data}",
            "--param", f"output_dir={out}", env={"DAGSTER_HOME": str(home)})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "pipeline customer-upsert: SUCCESS" in r.stdout
    summary = r.stdout[r.stdout.index("pipeline customer-upsert"):]
    assert "latest_change" in summary and f"-> {out}/delta/customers" in summary
    assert r.stdout.count("pipeline customer-upsert: SUCCESS") == 1
    # the SparkSession's start is its own line, charged to no step
    assert re.search(r"\n  Spark session started in \d+\.\ds", summary), summary
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        assert len(runs) == 1 and runs[0].job_name == "customer_upsert"
        assert runs[0].status == dg.DagsterRunStatus.SUCCESS
        key = dg.AssetKey(["customers"])
        assert instance.get_latest_materialization_event(key) is not None
        logs = instance.all_logs(runs[0].run_id)
    (started,) = [e for e in logs if e.user_message.startswith("Spark session started in")]
    steps = [e for e in logs if e.dagster_event and e.dagster_event.event_type_value ==
             "STEP_START"]
    assert len(steps) == 5 and all(started.timestamp <= e.timestamp for e in steps)
    assert logs.index(started) < logs.index(steps[0])


def test_failing_step_fails_the_run_with_its_message_first(tmp_path, sample_data):
    f = write_json(tmp_path / "broken.json", {"name": "broken", "steps": [
        {"type": "extract", "method": "fromFile",
         "config": {"path": str(sample_data / "customers.csv"), "format": "csv"}},
        {"type": "transform", "method": "filterRows", "config": {"condition": "agee > 3"}},
        {"type": "load", "method": "toFile", "config": {"path": str(tmp_path / "o")}}]})
    home = tmp_path / "home"
    home.mkdir()
    r = cli("run", str(f), env={"DAGSTER_HOME": str(home)})
    assert r.returncode == 1 and "pipeline broken: FAILURE" in r.stdout, \
        r.stdout[-3000:] + r.stderr[-3000:]
    summary = r.stdout[r.stdout.index("pipeline broken: FAILURE"):]
    line = next(ln for ln in summary.splitlines() if "s02_filterRows" in ln)
    assert "FAILED" in line
    assert "pipeline 'broken', step 2 (transform.filterRows) failed: [UNRESOLVED_COLUMN" in line
    assert "`agee`" in line and "Py4J" not in line and "at org.apache" not in line
    assert not (tmp_path / "o").exists()
    # the console log says it in one line per event; no stack trace reaches the terminal ...
    everything = r.stdout + r.stderr
    for trace in ("Stack Trace", "Traceback", 'File "', "dagster._core"):
        assert trace not in everything, everything[-3000:]
    (failure,) = [ln for ln in everything.splitlines() if "STEP_FAILURE" in ln]
    message = line[line.index("pipeline 'broken'"):].strip()
    assert failure.endswith(f'"broken_steps.s02_filterRows" failed: {message}'), failure
    # ... and the run's event log keeps the whole error, stack included, for the UI
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (event,) = [e for e in instance.all_logs(instance.get_runs()[0].run_id)
                    if e.dagster_event and e.dagster_event.event_type_value == "STEP_FAILURE"]
    error = event.dagster_event.step_failure_data.error
    assert "UNRESOLVED_COLUMN" in error.message and any("ops.py" in f for f in error.stack)


def test_invalid_file_is_rejected_before_spark_starts(tmp_path):
    f = write_json(tmp_path / "bad.json", {"name": "b", "steps": [
        {"type": "load", "method": "toFile", "config": {"path": "/x"}}]})
    r = cli("run", str(f), timeout=60)
    assert r.returncode == 2
    assert "a load step needs an input DataFrame" in r.stderr


@pytest.mark.parametrize("bad", ["novalue"])
def test_param_syntax(bad):
    r = cli("run", str(CONFIGS / "sales_pivot.json"), "--param", bad, timeout=60)
    assert r.returncode != 0 and "--param takes name=value" in r.stderr


def test_the_summary_shows_the_rows_a_validation_saw_and_what_it_quarantined(tmp_path,
                                                                           sample_data):
    out = tmp_path / "out"
    r = cli("run", str(CONFIGS / "orders_quality.json"), "--param", f"data_dir={sample_data}",
            "--param", f"output_dir={out}")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = {ln.split()[0]: ln.split(None, 3)[1:] for ln in r.stdout.splitlines()
             if ln.startswith("  ") and len(ln.split()) >= 3}
    bad = sum(1 for f in sorted((sample_data / "orders_2025").glob("*.jsonl"))
              for o in map(json.loads, f.read_text().splitlines())
              if o["customer_id"] is None or o["amount"] <= 0
              or o["status"] not in ("completed", "pending", "cancelled", "refunded"))
    total = sum(len(f.read_text().splitlines())
                for f in (sample_data / "orders_2025").glob("*.jsonl"))
    status, _secs, rest = lines["order_rules"]
    # rows, then where the step's Spark queries ran (a JSON scan feeds it: Spark), the note
    assert status == "ok" and re.match(rf"{total:,}  Spark +quarantined {bad:,} -> ", rest), \
        rest
    assert lines["one_row_per_order"][2].split() == [f"{total - bad:,}", "-"]
    assert re.match(rf"{total - bad:,}  Spark +-> {out}/delta/orders_2025",
                    lines["orders_clean"][2]), lines["orders_clean"]


def test_param_and_spark_conf_syntax_errors_exit_2_like_usage_errors(tmp_path):
    for args in (["--param", "novalue"], ["--spark-conf", "=x"]):
        r = cli("run", str(CONFIGS / "sales_pivot.json"), *args, timeout=60)
        assert r.returncode == 2 and "takes name=value" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    r = cli("run", timeout=60)  # argparse: the file is missing
    assert r.returncode == 2 and "the following arguments are required: file" in r.stderr
    r = cli("validate", str(tmp_path), timeout=60)  # a directory without pipeline files
    assert r.returncode == 2 and f"no pipeline files found in {tmp_path}" in r.stderr


def test_run_with_master_and_show(tmp_path):
    """--master reaches the run's session (a sql step reads it back with Spark's SET) and
    --show prints the rows the target received."""
    out = tmp_path / "out"
    f = write_json(tmp_path / "m.json", {"name": "master-check", "steps": [
        {"type": "transform", "method": "sql", "config": {"query": "SET spark.master"}},
        {"type": "load", "method": "toDeltaLake", "config": {"path": str(out),
                                                            "mode": "overwrite"}}]})
    r = cli("run", str(f), "--master", "local[1]", "--show", "3",
            env={"DAGSTER_HOME": str(tmp_path / "home")})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    from pipeline_defs_tests.e2e.test_spark_config import value_in
    assert value_in(out) == "local[1]"  # SPARK_MASTER (local[2]) lost to --master
    shown = r.stdout[r.stdout.index("pipeline master-check: SUCCESS"):]
    assert "spark.master" in shown and "local[1]" in shown, shown
    r = cli("run", str(f), env={"DAGSTER_HOME": str(tmp_path / "home")})
    assert r.returncode == 0 and value_in(out) == "local[2]"  # without it, SPARK_MASTER
    assert "|local[2]" not in r.stdout and "local[2]" not in r.stdout.split("SUCCESS", 1)[1]


def test_validate_with_params(tmp_path):
    f = write_json(tmp_path / "p.json", {"name": "p", "steps": [
        {"type": "extract", "method": "fromFile", "config": {
            "path": "${input_dir}/orders.csv", "format": "csv"}},
        {"type": "load", "method": "toFile", "config": {"path": "${output_dir}/o"}}]})
    r = cli("validate", str(f), timeout=60)
    assert r.returncode == 1 and "input_dir" in r.stdout, r.stdout
    r = cli("validate", str(f), "--param", "input_dir=/data", "--param", "output_dir=/out",
            timeout=60)
    assert r.returncode == 0 and "1 valid, 0 invalid" in r.stdout, r.stdout


def test_schema_and_docs_write_files_that_match_the_committed_ones(tmp_path):
    r = cli("schema", "-o", str(tmp_path / "schema.json"), timeout=60)
    assert r.returncode == 0 and f"wrote {tmp_path / 'schema.json'}" in r.stdout
    written = (tmp_path / "schema.json").read_text()
    assert written == cli("schema", timeout=60).stdout  # -o writes what stdout shows
    assert written == (CONFIGS / "pipeline.schema.json").read_text(), \
        "configs/pipeline.schema.json is stale: run `pipeline schema -o " \
        "configs/pipeline.schema.json`"
    from pipeline_defs.steps.reference import BEGIN, END
    committed = (REPO / "docs" / "methods.md").read_text()
    doc = tmp_path / "methods.md"  # the generated part replaced by stale text
    doc.write_text(committed[:committed.index(BEGIN)] + f"{BEGIN}\n### stale\n{END}"
                   + committed[committed.index(END) + len(END):])
    r = cli("docs", "-o", str(doc), timeout=60)
    assert r.returncode == 0 and f"updated the method reference in {doc}" in r.stdout
    assert doc.read_text() == committed, \
        "docs/methods.md is stale: run `pipeline docs`"
