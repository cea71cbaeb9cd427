"""Loading pipeline files: the original format as is, and errors that teach."""
from __future__ import annotations

import json

import pytest

from pipeline_defs.common.errors import ConfigError, DataFrameResolutionError
from pipeline_defs.config.loader import load_pipeline, load_pipelines
from pipeline_defs_tests.conftest import COMPAT, CONFIGS, write_json

COMPAT_FILES = sorted(COMPAT.glob("*.json"))


def test_all_nine_compat_examples_exist():
    assert len(COMPAT_FILES) == 9


@pytest.mark.parametrize("path", COMPAT_FILES, ids=lambda p: p.stem)
def test_compat_example_loads_unchanged(path, registry):
    p = load_pipeline(path, registry)
    raw = json.loads(path.read_text())
    assert p.name == raw["name"]
    assert [(s.kind, s.method) for s in p.steps] == [(s["type"], s["method"])
                                                     for s in raw["steps"]]


def test_compat_examples_with_rewritten_paths_still_load(tmp_path, registry):
    for path in COMPAT_FILES:
        raw = json.loads(path.read_text())
        for s in raw["steps"]:
            if "path" in s["config"] and "bucket" not in s["config"]:
                s["config"]["path"] = str(tmp_path / "data" / path.stem / str(len(s)))
        load_pipeline(write_json(tmp_path / path.name, raw), registry)


def test_both_aggregate_forms_and_both_join_forms_are_accepted(registry):
    agg = load_pipeline(COMPAT / "aggregation-pipeline.json", registry).steps[2].config
    assert agg.aggregations == {"amount": "sum", "transaction_id": "count", "discount": "avg"}
    join = load_pipeline(COMPAT / "multi-source-join.json", registry).steps[2].config
    assert join.join_column == "user_id" and join.join_conditions is None


def test_example_configs_load(registry):
    names = {p.name for p in load_pipelines([CONFIGS], registry)}
    assert {"orders-enrichment", "sales-pivot", "customer-upsert"} <= names


def pipeline(*steps, name="p"):
    return {"name": name, "steps": [{"type": t, "method": m, "config": c} for t, m, c in steps]}


EXTRACT = ("extract", "fromFile", {"path": "/x", "registerAs": "users"})


def test_unknown_key_gets_did_you_mean(tmp_path, registry):
    f = write_json(tmp_path / "p.json", pipeline(EXTRACT, ("transform", "filterRows",
                                                           {"conditon": "a > 1"})))
    with pytest.raises(ConfigError, match="Did you mean 'condition'") as e:
        load_pipeline(f, registry)
    msg = str(e.value)
    assert f"{f}, step 2 (transform.filterRows), config.conditon: unknown key 'conditon'" in msg
    assert "config.condition: is required but missing" in msg


def test_unknown_top_level_key_gets_did_you_mean(tmp_path, registry):
    data = pipeline(EXTRACT)
    data["step"] = []
    with pytest.raises(ConfigError, match="unknown key 'step'. Did you mean 'steps'"):
        load_pipeline(write_json(tmp_path / "p.json", data), registry)


def test_unknown_method_suggests_and_lists(tmp_path, registry):
    f = write_json(tmp_path / "p.json", pipeline(EXTRACT, ("transform", "filterRow",
                                                           {"condition": "x"})))
    with pytest.raises(ConfigError, match=r"step 2 \(transform.filterRow\), method: unknown "
                                          r"transform method 'filterRow'. Did you mean "
                                          r"'filterRows'\?"):
        load_pipeline(f, registry)


def test_method_under_the_wrong_type_says_which_type(tmp_path, registry):
    f = write_json(tmp_path / "p.json", pipeline(("transform", "fromFile", {"path": "/x"})))
    with pytest.raises(ConfigError, match="'fromFile' is a extract method: set \"type\": "
                                          "\"extract\""):
        load_pipeline(f, registry)


def test_unregistered_name_lists_what_is_registered(tmp_path, registry):
    f = write_json(tmp_path / "orders.json", pipeline(
        EXTRACT, ("extract", "fromFile", {"path": "/y", "registerAs": "orders"}),
        ("transform", "joinDataFrames", {"inputDataFrames": ["user", "orders"],
                                         "joinConditions": ["user.id = orders.user_id"]})))
    with pytest.raises(DataFrameResolutionError) as e:
        load_pipeline(f, registry)
    assert str(e.value) == (
        f"1 problem:\n  - {f}, step 3 (transform.joinDataFrames), config.inputDataFrames[0]: "
        "names 'user', which no earlier step registers. Registered so far: orders, users. "
        "Add \"registerAs\" to the step that produces it, or fix the name.")


def test_join_needs_n_minus_one_conditions(tmp_path, registry):
    f = write_json(tmp_path / "p.json", pipeline(
        EXTRACT, ("extract", "fromFile", {"path": "/y", "registerAs": "orders"}),
        ("extract", "fromFile", {"path": "/z", "registerAs": "items"}),
        ("transform", "joinDataFrames", {"inputDataFrames": ["users", "orders", "items"],
                                         "joinConditions": ["users.id = orders.user_id"]})))
    with pytest.raises(ConfigError, match="3 inputDataFrames need 2 joinConditions, got 1"):
        load_pipeline(f, registry)


@pytest.mark.parametrize("kind,method,cfg", [
    ("validate", "validateNulls", {"notNullColumns": ["a"]}),
    ("load", "toFile", {"path": "/out"}),
    ("transform", "filterRows", {"condition": "a"}),
])
def test_step_without_input_is_reported(tmp_path, registry, kind, method, cfg):
    f = write_json(tmp_path / "p.json", pipeline((kind, method, cfg)))
    with pytest.raises(ConfigError, match=rf"step 1 \({kind}.{method}\): a {kind} step needs an "
                                          "input DataFrame, and no earlier step produces one. "
                                          "Put an extract step before it."):
        load_pipeline(f, registry)


def test_every_problem_of_every_file_is_reported_together(tmp_path, registry):
    write_json(tmp_path / "a.json", pipeline(("transform", "filterRows", {"conditon": "x"})))
    write_json(tmp_path / "b.json", pipeline(EXTRACT, ("load", "toFile", {"pth": "/o"}),
                                             name="b"))
    with pytest.raises(ConfigError) as e:
        load_pipelines([tmp_path], registry)
    msg = str(e.value)
    assert msg.startswith("5 problems:")
    assert "a.json, step 1 (transform.filterRows), config.conditon" in msg
    assert "a.json, step 1 (transform.filterRows): a transform step needs an input" in msg
    assert "a.json, step 1 (transform.filterRows), config.condition: is required" in msg
    assert "b.json, step 2 (load.toFile), config.pth: unknown key 'pth'. Did you mean 'path'?" \
        in msg
    assert "b.json, step 2 (load.toFile), config.path: is required" in msg


def test_wrong_type_names_value_and_field(tmp_path, registry):
    f = write_json(tmp_path / "p.json", pipeline(EXTRACT, ("transform", "repartition",
                                                           {"numPartitions": "many"})))
    with pytest.raises(ConfigError, match=r"config.numPartitions: Input should be a valid "
                                          r"integer.*\(got \"many\"\)"):
        load_pipeline(f, registry)


def test_invalid_json_names_line_and_column(tmp_path, registry):
    f = tmp_path / "p.json"
    f.write_text('{"name": "p",\n "steps": [,]}')
    with pytest.raises(ConfigError, match=r"not valid JSON: .* at line 2, column 12"):
        load_pipeline(f, registry)


def test_params_defaults_env_and_overrides(tmp_path, registry):
    data = pipeline(("extract", "fromFile", {"path": "${root}/${table}"}))
    data["params"] = {"root": "${env:TEST_ROOT:-/default}", "table": "users"}
    f = write_json(tmp_path / "p.json", data)
    assert load_pipeline(f, registry, env={}).steps[0].config.path == "/default/users"
    assert load_pipeline(f, registry, env={"TEST_ROOT": "/env"}).steps[0].config.path == \
        "/env/users"
    assert load_pipeline(f, registry, {"table": "orders"}, env={}).steps[0].config.path == \
        "/default/orders"


def test_missing_param_says_how_to_set_it(tmp_path, registry):
    f = write_json(tmp_path / "p.json", pipeline(("extract", "fromFile", {"path": "${root}/x"})))
    with pytest.raises(ConfigError, match=r"config.path: placeholder \$\{root\} has no value. "
                                          r"Add \"root\" to the pipeline's `params` \(or the "
                                          r"step's `parameters`\), or pass --param root=VALUE."):
        load_pipeline(f, registry)


def test_duplicate_step_names_and_pipeline_names(tmp_path, registry):
    data = pipeline(EXTRACT, ("transform", "filterRows", {"condition": "a"}))
    data["steps"][0]["name"] = data["steps"][1]["name"] = "same"
    with pytest.raises(ConfigError, match=r"step name 'same' is used by steps \[1, 2\]"):
        load_pipeline(write_json(tmp_path / "p.json", data), registry)
    other = tmp_path / "dups"
    other.mkdir()
    write_json(other / "a.json", pipeline(EXTRACT))
    write_json(other / "b.json", pipeline(EXTRACT))
    with pytest.raises(ConfigError, match="pipeline name 'p' is also used by"):
        load_pipelines([other], registry)


def test_cross_field_rules(tmp_path, registry):
    f = write_json(tmp_path / "p.json", pipeline(
        ("extract", "fromDeltaLake", {"path": "/a", "table": "t", "version": 1,
                                      "timestamp": "2025-01-01"})))
    with pytest.raises(ConfigError) as e:
        load_pipeline(f, registry)
    assert "config.path: give exactly one of path and table." in str(e.value)
    assert "config.version: version and timestamp both set." in str(e.value)


def test_one_validate_lists_step_problems_and_dataflow_problems_together(tmp_path, registry):
    """An unknown method, an unknown key beside `config` and unknown keys inside it hide
    nothing: the unknown method still registers its name, the dataflow check still runs."""
    f = write_json(tmp_path / "p.json", {"name": "p", "steps": [
        {"type": "extract", "method": "fromFiles", "config": {"path": "/x",
                                                              "registerAs": "users"}},
        {"type": "extract", "method": "fromFile", "conditon": "x",
         "config": {"path": "/y", "registerAs": "orders"}},
        {"type": "transform", "method": "filterRows", "config": {"conditon": "a > 1"}},
        {"type": "transform", "method": "joinDataFrames",
         "config": {"inputDataFrames": ["users", "order", "items"],
                    "joinConditions": ["users.id = order.user_id", "x"], "joinTyp": "left"}},
        {"type": "load", "method": "toFile", "config": {"pth": "/out"}}]})
    with pytest.raises(ConfigError) as e:
        load_pipeline(f, registry)
    msg = str(e.value)
    expected = [
        f"{f}, step 1 (extract.fromFiles), method: unknown extract method 'fromFiles'. "
        "Did you mean 'fromFile'?",
        f"{f}, step 2 (extract.fromFile), conditon: unknown key 'conditon'.",
        f"{f}, step 3 (transform.filterRows), config.conditon: unknown key 'conditon'. Did "
        "you mean 'condition'?",
        f"{f}, step 4 (transform.joinDataFrames), config.joinTyp: unknown key 'joinTyp'. Did "
        "you mean 'joinType'?",
        # the dataflow of a step that did not parse is still checked: 'order' is unknown,
        # while 'users' (registered by the step whose method is unknown) is not reported
        f"{f}, step 4 (transform.joinDataFrames), config.inputDataFrames[1]: names 'order', "
        "which no earlier step registers. Registered so far: orders, users.",
        f"{f}, step 4 (transform.joinDataFrames), config.inputDataFrames[2]: names 'items'",
        f"{f}, step 5 (load.toFile), config.pth: unknown key 'pth'. Did you mean 'path'?"]
    for line in expected:
        assert line in msg
    assert "names 'users'" not in msg
    assert msg.index("step 1 (") < msg.index("step 2 (") < msg.index("step 3 (") < \
        msg.index("step 4 (") < msg.index("step 5 (")


def test_a_top_level_problem_hides_no_step_problem(tmp_path, registry):
    f = write_json(tmp_path / "p.json", {"name": "p", "mode": "batchy", "steps": [
        EXTRACT_STEP, {"type": "transform", "method": "filterRows", "config": {"cond": "x"}}]})
    with pytest.raises(ConfigError) as e:
        load_pipeline(f, registry)
    msg = str(e.value)
    assert f"{f}, mode: Input should be 'batch' or 'streaming'" in msg
    assert f"{f}, step 2 (transform.filterRows), config.cond: unknown key 'cond'" in msg


EXTRACT_STEP = {"type": "extract", "method": "fromFile", "config": {"path": "/x"}}
