"""What a step function may use besides its input and config. Knows nothing of Dagster."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyspark.sql import DataFrame, SparkSession

if TYPE_CHECKING:
    from pipeline_defs.config.model import StreamingSettings


@dataclass
class StepContext:
    spark: SparkSession
    pipeline: str
    step: int
    method: str
    run_id: str = "local"
    frames: dict[str, DataFrame] = field(default_factory=dict)
    """Registered DataFrames this step names (inputDataFrames, referencedDataFrame, ...)."""
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("pipeline_defs"))
    read_secret: Callable[[str], dict[str, Any]] | None = None
    """Reads a Vault secret by path (the Vault resource); None when no Vault is configured."""
    audit: Callable[[dict[str, Any]], Any] | None = None
    """Records one credential access (success or failure; never a value)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """What the step wants shown in Dagster (plain values; never secrets)."""
    op_name: str | None = None
    mask_columns: tuple[str, ...] = ()
    """Columns shown as *** in validation samples."""
    quarantine_root: str = "quarantine"
    streaming: StreamingSettings | None = None
    """The pipeline's streaming settings when it is a streaming pipeline, else None."""
    validation: Any = None
    """Validate steps: the group of consecutive validations this step belongs to (a
    steps.validate.engine.ValidationGroup; not imported here, which would be a circle)."""
    results: list[Any] = field(default_factory=list)
    """Validation results (RuleResult) of a validate step, for asset checks."""
    produced: dict[str, Any] | None = None
    """A step that writes an asset of its own (trainModel: a model): what it wrote (plain
    values), shown on that asset's materialization."""
    activity: str = "running"
    """What the step is doing now ("writing to ...", "reading its row counts"), so that an
    error can say where it happened."""

    def frame(self, name: str) -> DataFrame:
        return self.frames[name]


@dataclass(frozen=True)
class TableCheck:
    """A check a load makes of the table it wrote (its method declares it: table_checks()),
    reported as the asset check `<step>_<name>` on the load's asset."""

    name: str
    passed: bool
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadResult:
    """What a load step wrote."""

    location: str
    format: str
    mode: str
    metadata: dict[str, Any] = field(default_factory=dict)
    rows: int | None = None
    """Rows written, when the sink reports it (Delta's commit metrics); else it is observed."""
    checks: tuple[TableCheck, ...] = ()
    """What the load's table checks found (see TableCheck)."""
    schema: Any = None
    """The table's schema (a StructType) when it is not the input's (applyChanges adds
    columns); the asset's column schema."""
