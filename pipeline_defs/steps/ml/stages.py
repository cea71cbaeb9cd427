"""Spark ML stages of our own, saved and loaded with a model like Spark's (pure Python,
DefaultParams persistence: a saved model names these classes, so scoring runs them again
without refitting anything)."""
from __future__ import annotations

import json

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

INTERNAL = "__pd_"
"""Prefix of the columns a model adds for itself (assembled vectors, raw predictions): the
scoring step drops them."""


class _JsonStage(Transformer, DefaultParamsReadable, DefaultParamsWritable):
    """A pure-Python stage whose settings are one JSON string (saved with the model)."""

    spec = Param(Params._dummy(), "spec", "the stage's settings as JSON",
                 typeConverter=TypeConverters.toString)

    @keyword_only
    def __init__(self, spec: str = "{}") -> None:
        super().__init__()
        self._set(**self._input_kwargs)

    def _spec(self) -> dict:
        return json.loads(self.getOrDefault(self.spec))


class ColumnOps(_JsonStage):
    """Adds columns from SQL expressions ({"add": [[name, expr], ...]}) then drops columns
    ({"drop": [...]}): a bucket's label, a temporary vector. Its "model" entry describes the
    model it ends (scoring.describe)."""

    def _transform(self, df: DataFrame) -> DataFrame:
        s = self._spec()
        for name, expr in s.get("add", []):
            df = df.withColumn(name, F.expr(expr))
        return df.drop(*s.get("drop", []))


class GroupAggregate(_JsonStage):
    """An aggregate per group joined back onto each row ({"name", "groupBy", "expr"}): the
    number of purchases of each row's customer, say. Computed on the data it scores (it is a
    property of that data, not a fitted value); batch only."""

    def _transform(self, df: DataFrame) -> DataFrame:
        s = self._spec()
        keys = s["groupBy"]
        agg = df.groupBy(*keys).agg(F.expr(s["expr"]).alias(s["name"]))
        return df.join(agg, on=keys, how="left")


def stage_io(stage) -> tuple[list[str], list[str]]:
    """(columns a fitted stage reads, columns it writes), for Spark's stages and ours."""
    if isinstance(stage, GroupAggregate):
        return list(stage._spec()["groupBy"]), [stage._spec()["name"]]
    if isinstance(stage, ColumnOps):
        return [], [n for n, _ in stage._spec().get("add", [])]
    if hasattr(stage, "stages"):  # a nested PipelineModel
        reads, writes = [], []
        for s in stage.stages:
            r, w = stage_io(s)
            reads += [c for c in r if c not in writes]
            writes += w
        return reads, writes
    reads, writes = [], []
    for p, out in (("inputCol", reads), ("inputCols", reads), ("featuresCol", reads),
                   ("outputCol", writes), ("outputCols", writes), ("predictionCol", writes)):
        if stage.hasParam(p) and stage.isDefined(stage.getParam(p)):
            v = stage.getOrDefault(stage.getParam(p))
            out.extend([v] if isinstance(v, str) else list(v))
    return reads, writes


def model_inputs(model) -> list[str]:
    """The input columns a fitted pipeline needs: what its stages read and no earlier stage
    writes."""
    reads, _ = stage_io(model)
    return list(dict.fromkeys(c for c in reads if not c.startswith(INTERNAL)))
