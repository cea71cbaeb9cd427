"""Today's Dagster tooling (`dg`, dagster-dg-cli) on this project: the defs folder's
PipelineDirectory component (pipeline_defs/defs/pipelines/defs.yaml) loads the pipeline
directory, so `dg check defs` and `dg list defs` see what `dagster dev -m
pipeline_defs.definitions` sees; a team's own dg project declares the component with its own
directory and params. (`dg launch --assets` is run in test_assets.py.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from pipeline_defs_tests.conftest import CONFIGS, REPO, copy_configs

DG = str(Path(sys.executable).parent / "dg")


def _dg(*args: str, configs: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIPELINE_CONFIG_DIR": str(configs)}
    return subprocess.run([DG, *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)


def test_dg_check_and_list_defs_load_the_pipeline_directory(tmp_path):
    configs = copy_configs(tmp_path / "configs")
    r = _dg("check", "defs", configs=configs)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "All definitions loaded successfully" in out
    # nothing for the user to act on: no warnings from dg, dagster or the project
    assert "warning" not in out.lower(), out

    r = _dg("list", "defs", "--json", configs=configs)
    assert r.returncode == 0, r.stderr
    listed = json.loads(r.stdout)
    assets = {a["asset_key"]: a for a in listed["assets"]}
    for key, group in (("enriched_orders", "orders_enrichment"),
                       ("monthly_sales", "orders_enrichment"),
                       ("customers", "customer_upsert")):
        assert assets[key]["group_name"] == group and assets[key]["is_executable"], assets[key]
        # its source is its pipeline file (test_translation.py), never the component's yaml
        assert "defs.yaml" not in str(assets[key].get("source")), assets[key]
    assert {j["name"] for j in listed["jobs"]} == {
        json.loads(f.read_text())["name"].replace("-", "_")
        for f in CONFIGS.glob("*.json") if not f.name.endswith(".schema.json")} | {
        "country_revenue"}  # the SQL example
    assert assets["country_revenue"]["group_name"] == "country_revenue"
    assert "enriched_orders:sane_amounts" in {c["key"] for c in listed["asset_checks"]}
    resources = {r["name"]: r["type"] for r in listed["resources"]}
    assert resources["spark"].endswith("SparkResource")
    # a pipeline's params come with its assets (each job's Launchpad shows its own only)
    assert not any(name.startswith("params_") for name in resources), resources


def test_dg_check_defs_names_the_file_step_and_field_of_a_bad_pipeline(tmp_path):
    configs = copy_configs(tmp_path / "configs")
    f = configs / "orders_enrichment.json"
    doc = json.loads(f.read_text())
    doc["steps"][1]["config"]["pathh"] = doc["steps"][1]["config"].pop("path")
    f.write_text(json.dumps(doc))
    r = _dg("check", "defs", configs=configs)
    assert r.returncode != 0
    assert (f"{f}, step 2 (extract.fromFile), config.pathh: unknown key 'pathh'. "
            "Did you mean 'path'?") in r.stdout + r.stderr


def test_a_teams_own_dg_project_declares_the_component(tmp_path, monkeypatch):
    """A dg project of its own (its pyproject, its defs folder) with a defs.yaml giving the
    component a directory relative to the project root and a param value."""
    project = tmp_path / "team_project"
    (project / "team_pipelines" / "defs" / "orders").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "team-pipelines"\nversion = "0"\n\n'
        '[tool.dg]\ndirectory_type = "project"\n\n'
        '[tool.dg.project]\nroot_module = "team_pipelines"\n')
    (project / "team_pipelines" / "__init__.py").write_text("")
    (project / "team_pipelines" / "defs" / "__init__.py").write_text("")
    (project / "team_pipelines" / "defs" / "orders" / "defs.yaml").write_text(
        "type: pipeline_defs.component.PipelineDirectory\n"
        "attributes:\n"
        "  directory: pipelines\n"
        "  params:\n"
        f"    output_dir: {tmp_path / 'team_out'}\n")
    (project / "pipelines").mkdir()
    for name in ("customer_upsert.json", "orders_enrichment.json"):
        (project / "pipelines" / name).write_text((CONFIGS / name).read_text())
    monkeypatch.syspath_prepend(str(project))

    defs = dg.load_from_defs_folder(path_within_project=project)
    repo = defs.get_repository_def()
    assert {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")} == {
        "customer_upsert", "orders_enrichment"}
    assert dg.AssetKey("monthly_sales") in repo.asset_graph.get_all_asset_keys()
    assert dg.AssetKey("category_ranking") not in repo.asset_graph.get_all_asset_keys()
    # the param given in defs.yaml is the run config default the Launchpad shows
    job = repo.get_job("customer_upsert")
    field = job.run_config_schema.config_type.fields["resources"].config_type.fields[
        "params_customer_upsert"].config_type.fields["config"].config_type
    assert field.fields["output_dir"].default_value == str(tmp_path / "team_out")
    meta = repo.assets_defs_by_key[dg.AssetKey("customers")].metadata_by_key[
        dg.AssetKey("customers")]
    assert meta["dagster/uri"] == f"file://{tmp_path / 'team_out'}/delta/customers"
