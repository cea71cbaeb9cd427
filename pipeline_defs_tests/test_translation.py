"""What a Dagster user sees of a pipeline before running it (the UI's asset and job pages, the
Launchpad, `dg list defs`): code references at the pipeline file's own step, each job's own
parameters, ops and graph ins/outs named by what they are, and owners, tags and code
versions of the assets, read back from the built definitions."""
from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from pipeline_defs.common.errors import ConfigError
from pipeline_defs.config.loader import load_pipeline, load_pipelines
from pipeline_defs.definitions import definitions_for
from pipeline_defs_tests.conftest import CONFIGS, write_json


def _pipeline(tmp_path: Path, name: str = "sales", **top) -> dict:
    return {"name": name, "params": {"out": str(tmp_path / "out")}, **top, "steps": [
        {"type": "extract", "method": "fromFile", "name": "orders_in",
         "config": {"path": str(tmp_path / "orders.csv"), "format": "csv",
                    "schema": "id INT, amount DOUBLE"}},
        {"type": "transform", "method": "filterRows", "config": {"condition": "amount > 0"}},
        {"type": "load", "method": "toDeltaLake", "name": "orders_out",
         "config": {"path": "${out}/orders"}},
        {"type": "transform", "method": "aggregateData",
         "config": {"groupBy": ["id"], "aggregations": {"total": "sum(amount)"}}},
        {"type": "load", "method": "toFile", "name": "totals_out",
         "config": {"path": "${out}/totals", "format": "parquet"}}]}


def _defs(registry, *files: Path) -> dg.Definitions:
    return definitions_for(load_pipelines(list(files), registry), registry=registry)


def _spec(defs: dg.Definitions, key: str) -> dg.AssetSpec:
    return next(s for a in defs.assets if isinstance(a, dg.AssetsDefinition)
                for k, s in a.specs_by_key.items() if k == dg.AssetKey(key))


def _line_of(path: Path, needle: str) -> int:
    """The line of the `{` opening the step whose text holds `needle` (json.dumps indent=2
    writes each step's `{` on its own line, its keys on the following lines)."""
    lines = path.read_text().splitlines()
    hit = next(i for i, line in enumerate(lines) if needle in line)
    return next(i for i in range(hit, -1, -1) if lines[i].strip() == "{") + 1


def test_code_references_point_at_the_step_in_the_pipeline_file(tmp_path, registry):
    f = write_json(tmp_path / "sales.json", _pipeline(tmp_path))
    defs = _defs(registry, f)
    for key, step in (("orders", '"orders_out"'), ("totals", '"totals_out"')):
        refs = _spec(defs, key).metadata["dagster/code_references"].code_references
        assert [(r.file_path, r.line_number) for r in refs] == \
            [(str(f.resolve()), _line_of(f, step))], key
        assert _line_of(f, step) > 1


def test_the_component_does_not_point_the_assets_at_its_defs_yaml():
    """`dg list defs` shows each asset's and job's source: its pipeline file and line (dg
    shows files under the project root), never the component's defs.yaml."""
    import os
    import subprocess
    import sys

    from pipeline_defs_tests.conftest import REPO
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_CONFIG_DIR"}
    r = subprocess.run([str(Path(sys.executable).parent / "dg"), "list", "defs", "--json"],
                       capture_output=True, text=True, cwd=REPO, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    sources = {a["asset_key"]: a.get("source") for a in listed["assets"]}
    for key, file, step in (("enriched_orders", "orders_enrichment.json", '"orders_delta"'),
                            ("customers", "customer_upsert.json", '"customers_delta"')):
        assert sources[key] == f"configs/{file}:{_line_of(CONFIGS / file, step)}", sources
    jobs = {j["name"]: j.get("source") for j in listed["jobs"]}
    assert jobs["sales_pivot"] == "configs/sales_pivot.json:1", jobs
    assert not any("defs.yaml" in str(v) for v in [*sources.values(), *jobs.values()])


def test_each_job_shows_its_own_params_only(tmp_path, registry):
    a = write_json(tmp_path / "a.json", _pipeline(tmp_path, "alpha"))
    doc = _pipeline(tmp_path, "beta")
    doc["params"]["other"] = "x"
    for s in doc["steps"]:
        if s["type"] == "load":
            s["config"]["path"] = s["config"]["path"].replace("${out}/", "${out}/beta_")
            s["name"] = "beta_" + s["name"]
    b = write_json(tmp_path / "b.json", doc)
    defs = _defs(registry, a, b)
    for job, own, other in (("alpha", "params_alpha", "params_beta"),
                            ("beta", "params_beta", "params_alpha")):
        j = defs.resolve_job_def(job)
        resources = j.run_config_schema.config_type.fields["resources"].config_type.fields
        assert own in resources and other not in resources, (job, sorted(resources))
        fields = resources[own].config_type.fields["config"].config_type.fields
        assert set(fields) == ({"out", "DATE", "other"} if job == "beta" else {"out", "DATE"})


def test_nodes_and_graph_io_are_named_by_what_they_are(tmp_path, registry):
    f = write_json(tmp_path / "sales.json", _pipeline(tmp_path))
    doc = json.loads(f.read_text())
    doc["steps"][0]["config"]["path"] = str(tmp_path / "orders_raw.csv")
    write_json(f, doc)
    defs = _defs(registry, f)
    job = defs.resolve_job_def("sales")
    (node,) = [n for n in job.graph.nodes if n.name.endswith("_steps")]
    graph = node.definition
    # each op's name starts with its step; the job's name comes after it
    assert sorted(n.definition.name for n in graph.nodes) == sorted(
        f"{n}__sales" for n in ("orders_in", "s02_filterRows", "orders_out",
                                "s04_aggregateData", "totals_out"))
    # graph inputs: the tables read (their asset), graph outputs: the tables written
    assert [i.name for i in graph.input_defs] == ["sources__orders_raw"]
    assert graph.input_defs[0].dagster_type.is_nothing
    assert sorted(o.name for o in graph.output_defs) == ["orders", "totals"]
    assert {o.dagster_type.display_name for o in graph.output_defs} == {"LoadedTable"}
    assert all(o.description and "Written by pipeline 'sales'" in o.description
               for o in graph.output_defs)


def test_owners_tags_and_code_versions(tmp_path, registry):
    doc = _pipeline(tmp_path, owners=["data@example.com", "team:platform"],
                    tags={"domain": "sales", "tier": "silver"})
    doc["steps"][4].update(owners=["finance@example.com"], tags={"tier": "gold"})
    f = write_json(tmp_path / "sales.json", doc)
    orders, totals = (_spec(_defs(registry, f), k) for k in ("orders", "totals"))
    assert orders.owners == ["data@example.com", "team:platform"]
    assert totals.owners == ["finance@example.com"]  # a load's owners replace the pipeline's
    assert {k: v for k, v in orders.tags.items() if not k.startswith("dagster/")} == \
        {"domain": "sales", "tier": "silver"}
    assert {k: v for k, v in totals.tags.items() if not k.startswith("dagster/")} == \
        {"domain": "sales", "tier": "gold"}  # and its tags add to them
    assert {"dagster/kind/delta", "dagster/kind/spark"} <= set(orders.tags)
    assert orders.code_version and totals.code_version != orders.code_version

    def versions(change) -> tuple[str, str]:
        d = json.loads(json.dumps(doc))
        change(d)
        g = write_json(tmp_path / "changed.json", d)
        defs = _defs(registry, g)
        return _spec(defs, "orders").code_version, _spec(defs, "totals").code_version

    # the aggregation feeds `totals` only; the filter feeds both
    def agg(d):
        d["steps"][3]["config"]["aggregations"]["total"] = "sum(amount) * 2"
    o, t = versions(agg)
    assert o == orders.code_version and t != totals.code_version

    def filt(d):
        d["steps"][1]["config"]["condition"] = "amount > 1"
    o, t = versions(filt)
    assert o != orders.code_version and t != totals.code_version
    # the param's value is not the code: running with another output changes nothing
    d = json.loads(json.dumps(doc))
    d["params"]["out"] = str(tmp_path / "elsewhere")
    g = write_json(tmp_path / "moved.json", d)
    assert _spec(_defs(registry, g), "orders").code_version == orders.code_version


@pytest.mark.parametrize("where, value, field, says", [
    ("top", {"owners": ["not an email"]}, "owners[0]", "neither an email address nor a team"),
    ("top", {"tags": {"bad key!": "x"}}, "tags", "tag key 'bad key!'"),
    ("top", {"tags": {"tier": "has space"}}, "tags", "value 'has space'"),
    ("step", {"owners": ["a@example.com"]}, "owners", "describe the table a load writes"),
])
def test_bad_owners_and_tags_name_the_file_and_field(tmp_path, registry, where, value, field,
                                                     says):
    doc = _pipeline(tmp_path)
    if where == "top":
        doc.update(value)
    else:
        doc["steps"][1].update(value)
    f = write_json(tmp_path / "sales.json", doc)
    with pytest.raises(ConfigError) as e:
        load_pipeline(f, registry)
    assert f"{f}" in str(e.value) and field in str(e.value) and says in str(e.value), \
        str(e.value)


def test_the_examples_steps_carry_their_lines(registry):
    """Every step of the shipped examples knows its line (the code reference): the line holds
    that step's opening brace."""
    for f in sorted(CONFIGS.glob("*.json")):
        if f.name.endswith(".schema.json"):
            continue
        p = load_pipeline(f, registry)
        lines = f.read_text().splitlines()
        for s in p.steps:
            # the step's own opening brace (a `"config": {` line does not start with one)
            assert s.line and lines[s.line - 1].strip().startswith("{"), \
                (f.name, s.index, s.line)
            rest = "\n".join(lines[s.line - 1:])
            assert f'"{s.method}"' in rest.split('"method"', 1)[1].split("\n", 1)[0], \
                (f.name, s.index)
