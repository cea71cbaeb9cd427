"""Connectors that Spark reads and writes through Python: Spark 4's Python Data Source API
(`pyspark.sql.datasource`) with a store's own Python client, for stores whose JVM connector
does not run on this Spark.

A connector of this kind is one module: a `DataSource` subclass (its reader splits the read
into partitions that Spark's Python workers read in parallel; its writer writes each
partition in the workers and commits, or aborts, once every partition is written), the
config models, and the step functions, registered like any method:

    @registry.step("extract", "fromLedger", FromLedger, asset_kind="sqlite")
    def from_ledger(df, cfg, ctx):
        return pysource.read(ctx, LedgerSource, {"path": cfg.path})

    @registry.step("load", "toLedger", ToLedger, asset_kind="sqlite")
    def to_ledger(df, cfg, ctx):
        pysource.write(df, ctx, LedgerSource, {"path": cfg.path}, cfg.mode)
        return LoadResult(cfg.path, "sqlite", cfg.mode)

The source is registered with the run's session the first time a step uses it. Its workers
import it by module name: it lives in a module the venv's Python can import (the session
starts its Python workers with this venv's interpreter)."""
from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.datasource import DataSource

from pipeline_defs.steps.context import StepContext

_lock = threading.Lock()


def _registered(spark: SparkSession, name: str) -> bool:
    try:
        return bool(spark._jsparkSession.sessionState().dataSourceManager()
                    .dataSourceExists(name))
    except Exception:  # noqa: BLE001 - a Spark without the lookup: register again (harmless)
        return False


def use(spark: SparkSession, source: type[DataSource]) -> str:
    """Registers `source` with this session unless it already is; its format name."""
    name = source.name()
    with _lock:
        if not _registered(spark, name):
            spark.dataSource.register(source)
    return name


def options(values: Mapping[str, Any]) -> dict[str, str]:
    """Step config values as data source options, which are strings: None left out, text
    as is, anything else as JSON (a list of hosts, a query document, a number)."""
    return {k: v if isinstance(v, str) else json.dumps(v)
            for k, v in values.items() if v is not None}


def read(ctx: StepContext, source: type[DataSource], opts: Mapping[str, Any],
         schema: str | None = None) -> DataFrame:
    """A batch read: one Spark partition per partition the source's reader plans."""
    reader = ctx.spark.read.format(use(ctx.spark, source)).options(**options(opts))
    return (reader.schema(schema) if schema else reader).load()


def read_stream(ctx: StepContext, source: type[DataSource], opts: Mapping[str, Any],
                schema: str | None = None) -> DataFrame:
    reader = ctx.spark.readStream.format(use(ctx.spark, source)).options(**options(opts))
    return (reader.schema(schema) if schema else reader).load()


def write(df: DataFrame, ctx: StepContext, source: type[DataSource], opts: Mapping[str, Any],
          mode: str = "append") -> None:
    """A batch write: each partition written by the source's writer in a Python worker, then
    committed once (or aborted: nothing of a failed write becomes visible, if the source's
    commit is what makes rows visible)."""
    df.write.format(use(ctx.spark, source)).options(**options(opts)).mode(mode).save()
