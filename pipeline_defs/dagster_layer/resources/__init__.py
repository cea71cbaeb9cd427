"""Dagster resources: the SparkSession, Vault, metrics."""
from pipeline_defs.dagster_layer.resources.metrics import MetricsResource
from pipeline_defs.dagster_layer.resources.spark import SparkResource
from pipeline_defs.dagster_layer.resources.vault import VaultResource

__all__ = ["MetricsResource", "SparkResource", "VaultResource"]
