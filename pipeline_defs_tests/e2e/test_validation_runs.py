"""Consecutive validate steps are evaluated in one Spark pass, run by the first of them, and
each still reports under its own op: its counts (of the rows it saw, after earlier drops),
its warnings, its asset check result, and its own failure."""
from __future__ import annotations

import dagster as dg

from pipeline_defs.config.loader import load_pipeline
from pipeline_defs_tests.conftest import op_of, run_job, write_json

ROWS = """id,name,v
1,a,5
2,b,-1
3,,7
3,c,8
4,d,-2
5,e,1
"""


def _pipeline(tmp_path, registry, data: str):
    (tmp_path / "in.csv").write_text(data)
    f = write_json(tmp_path / "checked.json", {"name": "checked", "steps": [
        {"type": "extract", "method": "fromFile", "name": "people",
         "config": {"path": str(tmp_path / "in.csv"), "format": "csv",
                    "schema": "id INT, name STRING, v INT"}},
        {"type": "validate", "method": "validateBusinessRules", "name": "positive",
         "config": {"rules": ["v >= 0"], "onFailure": "drop"}},
        {"type": "validate", "method": "validateBusinessRules", "name": "named",
         "config": {"rules": ["name IS NOT NULL"], "onFailure": "warn"}},
        {"type": "validate", "method": "validateUnique", "name": "unique_ids",
         "config": {"columns": ["id"]}},
        {"type": "load", "method": "toDeltaLake", "name": "people_out",
         "config": {"path": str(tmp_path / "out"), "assetKey": "people"}}]})
    return load_pipeline(f, registry)


def _outputs(result) -> dict[str, dict]:
    return {op_of(e.step_key): {k: getattr(v, "value", v)
                                for k, v in e.event_specific_data.metadata.items()}
            for e in result.all_events
            if e.event_type_value == "STEP_OUTPUT" and e.event_specific_data.output_name
            == "result"}


def _checks(result) -> dict[str, tuple[bool, int, str]]:
    return {e.event_specific_data.check_name:
            (e.event_specific_data.passed, e.event_specific_data.metadata["rows"].value,
             op_of(e.step_key))
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def test_each_validation_of_a_group_reports_under_its_own_op(tmp_path, registry):
    result = run_job(_pipeline(tmp_path, registry, ROWS), expect_success=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    # the duplicate id fails step 4, not the step whose pass found it
    assert op_of(failure.step_key) == "unique_ids"
    assert "step 4 (validate.validateUnique)" in failure.event_specific_data.error.message
    out = _outputs(result)
    assert out["positive"]["rows"] == 6 and out["positive"]["passed"] is False
    assert "evaluated_in" not in out["positive"]
    # step 3 saw the 4 rows step 2 kept; it ran in step 2's pass and says so
    assert out["named"]["rows"] == 4 and out["named"]["dagster/row_count"] == 4
    assert out["named"]["violations"] == {"named:rule[0]": 1}
    assert out["named"]["evaluated_in"] == "positive"
    # check results: one per step, each with the rows it saw (logged at the failure, since
    # the pipeline's check op does not run after a failed step)
    checks = _checks(result)
    assert {k: v[:2] for k, v in checks.items()} == {
        "positive": (False, 6), "named": (False, 4), "unique_ids": (False, 4)}
    assert not (tmp_path / "out").exists()  # nothing written


def test_a_passing_group_reports_each_step_and_its_warnings_in_its_own_op(tmp_path, registry):
    data = ROWS.replace("3,c,8", "6,c,8")  # no duplicate id: the run succeeds
    with dg.instance_for_test() as instance:
        from pipeline_defs.definitions import default_resources, definitions_for
        p = _pipeline(tmp_path, registry, data)
        job = definitions_for([p], default_resources(), registry).resolve_job_def("checked")
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        assert result.success
        warnings: dict[str, list[str]] = {}
        for rec in instance.all_logs(result.run_id):
            if rec.level == 30 and rec.step_key:
                warnings.setdefault(op_of(rec.step_key), []).append(rec.user_message)
    assert len(warnings["positive"]) == 1 and "2 of 6 rows violate `v >= 0`" in \
        warnings["positive"][0]
    assert len(warnings["named"]) == 1 and \
        "1 of 4 rows violate `name IS NOT NULL`" in warnings["named"][0]
    assert "unique_ids" not in warnings
    out = _outputs(result)
    assert out["unique_ids"]["rows"] == 4 and out["unique_ids"]["passed"] is True
    assert out["unique_ids"]["evaluated_in"] == "positive"
    checks = _checks(result)
    assert {k: v[:2] for k, v in checks.items()} == {
        "positive": (False, 6), "named": (False, 4), "unique_ids": (True, 4)}
    assert {v[2] for v in checks.values()} == {"checked__checks"}  # after the write
