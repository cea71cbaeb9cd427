"""Dagster's entry point: every pipeline in the config directory as a job, its targets as assets.

The directory is `configs/` unless PIPELINE_CONFIG_DIR names another (or the component's
`directory` attribute in pipeline_defs/defs/pipelines/defs.yaml)."""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import dagster as dg

from pipeline_defs.common.errors import ConfigError
from pipeline_defs.config.assets import asset_names
from pipeline_defs.config.loader import LoadedPipeline, dependency_problems, load_pipelines
from pipeline_defs.dagster_layer.console import console_logger
from pipeline_defs.dagster_layer.factory import asset_checks, build_pipeline, source_specs
from pipeline_defs.dagster_layer.orchestration import orchestration_defs
from pipeline_defs.dagster_layer.resources import MetricsResource, SparkResource, VaultResource
from pipeline_defs.dagster_layer.resources.spark import default_spark_config
from pipeline_defs.spark.paths import REPO_ROOT, default_jars_dir
from pipeline_defs.steps.registry import Registry, builtin_registry

# Dagster 1.13.27 warns about its own internals when a project is loaded through dg: the
# component loader re-creates asset checks with a beta parameter, and dagster-spark's
# (preview) scaffolder is registered. Neither is something a user of this project can act on.
warnings.filterwarnings("ignore", message="Parameter `execution_type` of function",
                        category=dg.BetaWarning)
warnings.filterwarnings("ignore", message="Class `SparkDeclarativePipelineScaffolder`",
                        category=dg.PreviewWarning)
# Dagster's own APIs this project builds on, marked beta in 1.13: code references of assets,
# and resources that come with the assets that need them (each job's Launchpad shows its own)
for _beta in ("Class `LocalFileCodeReference`", "Class `CodeReferencesMetadataValue`",
              "Parameter `resource_defs` of static method `AssetsDefinition.from_graph`"):
    warnings.filterwarnings("ignore", message=_beta, category=dg.BetaWarning)


def config_dir() -> Path:
    return Path(os.environ.get("PIPELINE_CONFIG_DIR", REPO_ROOT / "configs"))


def default_resources() -> dict:
    """The one place that chooses resources for the environment (read from env vars)."""
    return {
        "spark": SparkResource(spark_config=default_spark_config(),
                               jars_dir=str(default_jars_dir())),
        "vault": VaultResource.from_env(),
        "metrics": MetricsResource.from_env(),
        "io_manager": dg.mem_io_manager,
    }


def definitions_for(pipelines: Iterable[LoadedPipeline], resources: Mapping | None = None,
                    registry: Registry | None = None) -> dg.Definitions:
    """Jobs, assets and checks of loaded pipelines; `registry`: the methods they were loaded
    with (the built-in ones unless a plugin or test extended them)."""
    registry = registry or builtin_registry()
    pipelines = list(pipelines)
    names, problems = asset_names(pipelines)
    problems += dependency_problems(pipelines)
    if problems:
        raise ConfigError(problems)
    built = [build_pipeline(p, registry, names) for p in pipelines]
    return dg.Definitions(
        assets=[b.assets for b in built] + source_specs(built, names),
        jobs=[b.job for b in built], asset_checks=asset_checks(built),
        **orchestration_defs((b.plan.pipeline, b.plan, b.assets.keys) for b in built),
        # one process, one SparkSession: also for materializations launched from the catalog
        executor=dg.in_process_executor,
        loggers={"console": console_logger},  # errors on one line; stacks in the event log
        # (each pipeline's params resource comes with its assets: a job shows its own)
        resources={# metrics from the environment unless the caller chose its own
                   "metrics": MetricsResource.from_env(),
                   **dict(resources or default_resources())})


def build_definitions(directory: str | Path | None = None,
                      params: Mapping[str, str] | None = None,
                      resources: Mapping | None = None) -> dg.Definitions:
    """Definitions for every pipeline file in `directory` (all problems reported together)."""
    pipelines = load_pipelines([directory or config_dir()], builtin_registry(), params)
    return definitions_for(pipelines, resources)


@dg.definitions
def defs() -> dg.Definitions:
    """What `dagster dev -m pipeline_defs.definitions`, `dg dev` and `dg check defs` load: the
    project's defs folder, whose PipelineDirectory component (pipeline_defs/component.py)
    builds every pipeline file of the config directory."""
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
