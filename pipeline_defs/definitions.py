"""Dagster's entry point: every pipeline in the config directory as a job, its targets as assets.

The directory is `configs/` unless PIPELINE_CONFIG_DIR names another."""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import dagster as dg

from pipeline_defs.config.assets import asset_names
from pipeline_defs.config.loader import LoadedPipeline, load_pipelines
from pipeline_defs.errors import ConfigError
from pipeline_defs.factory import asset_checks, build_pipeline, source_specs
from pipeline_defs.ops import params_resource, params_resource_key
from pipeline_defs.resources import SparkResource, VaultResource
from pipeline_defs.resources.spark import REPO_ROOT, default_jars_dir
from pipeline_defs.steps.registry import Registry, builtin_registry


def config_dir() -> Path:
    return Path(os.environ.get("PIPELINE_CONFIG_DIR", REPO_ROOT / "configs"))


def default_resources() -> dict:
    """The one place that chooses resources for the environment (read from env vars)."""
    return {
        "spark": SparkResource(master=os.environ.get("SPARK_MASTER", "local[*]"),
                               jars_dir=str(default_jars_dir())),
        "vault": VaultResource.from_env(),
        "io_manager": dg.mem_io_manager,
    }


def definitions_for(pipelines: Iterable[LoadedPipeline], resources: Mapping | None = None,
                    registry: Registry | None = None) -> dg.Definitions:
    """Jobs, assets and checks of loaded pipelines; `registry`: the methods they were loaded
    with (the built-in ones unless a plugin or test extended them)."""
    registry = registry or builtin_registry()
    pipelines = list(pipelines)
    names, problems = asset_names(pipelines)
    if problems:
        raise ConfigError(problems)
    built = [build_pipeline(p, registry, names) for p in pipelines]
    return dg.Definitions(
        assets=[b.assets for b in built] + source_specs(built, names),
        jobs=[b.job for b in built], asset_checks=asset_checks(built),
        # one process, one SparkSession: also for materializations launched from the catalog
        executor=dg.in_process_executor,
        resources={**{params_resource_key(b.plan): params_resource(b.plan) for b in built
                      if params_resource_key(b.plan)},
                   **dict(resources or default_resources())})


def build_definitions(directory: str | Path | None = None,
                      params: Mapping[str, str] | None = None,
                      resources: Mapping | None = None) -> dg.Definitions:
    """Definitions for every pipeline file in `directory` (all problems reported together)."""
    pipelines = load_pipelines([directory or config_dir()], builtin_registry(), params)
    return definitions_for(pipelines, resources)


defs = build_definitions()
