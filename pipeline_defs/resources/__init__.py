"""Dagster resources: the SparkSession, Vault, metrics."""
from pipeline_defs.resources.metrics import MetricsResource
from pipeline_defs.resources.spark import SparkResource
from pipeline_defs.resources.vault import VaultResource

__all__ = ["MetricsResource", "SparkResource", "VaultResource"]
