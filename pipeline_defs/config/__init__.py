"""The JSON pipeline format: models, loading, parameter substitution, static checks.

Knows nothing of Spark or Dagster. Method models come from a catalog (the step registry)."""
from pipeline_defs.config.loader import LoadedPipeline, LoadedStep, load_pipeline, load_pipelines
from pipeline_defs.config.model import PipelineConfig, StepModel

__all__ = ["LoadedPipeline", "LoadedStep", "PipelineConfig", "StepModel", "load_pipeline",
           "load_pipelines"]
