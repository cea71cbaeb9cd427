"""Dagster resources: the SparkSession and Vault."""
from pipeline_defs.resources.spark import SparkResource
from pipeline_defs.resources.vault import VaultResource

__all__ = ["SparkResource", "VaultResource"]
