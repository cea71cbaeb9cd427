"""The dg Component that turns a directory of pipeline files into Dagster definitions.

The project's defs folder (`pipeline_defs/defs/pipelines/defs.yaml`) declares one:

    type: pipeline_defs.component.PipelineDirectory
    attributes:
      directory: configs          # optional; relative to the project root
      params: {output_dir: /data} # optional; the files' ${param} values

so `dg check defs`, `dg list defs`, `dg launch` and `dg dev` load the same jobs, assets and
checks as `dagster dev -m pipeline_defs.definitions`. A team keeping its pipelines in another
repository declares the component there (`dg scaffold defs
pipeline_defs.component.PipelineDirectory pipelines`) and points `directory` at them."""
from __future__ import annotations

from pathlib import Path

import dagster as dg

from pipeline_defs.definitions import build_definitions, config_dir


class PipelineDirectory(dg.Component, dg.Resolvable, dg.Model):
    """Every pipeline file (*.json) of a directory as Dagster jobs, assets and asset checks,
    with the Spark and Vault resources chosen from the environment."""

    directory: str | None = None
    """The pipeline files' directory, relative to the project root. Unset: PIPELINE_CONFIG_DIR,
    else the project's configs/."""

    params: dict[str, str] = {}
    """Values for the files' ${param} placeholders (each pipeline's defaults otherwise; a run
    can still change them in the Launchpad)."""

    @classmethod
    def get_code_references_for_yaml(cls, yaml_path, source_position, context) -> list:
        """None: each asset's code reference is its pipeline file, at the step that writes it
        (the UI's "open in editor"), not this component's defs.yaml."""
        return []

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        directory = (Path(context.project_root) / self.directory if self.directory
                     else config_dir())
        return build_definitions(directory, self.params or None)
