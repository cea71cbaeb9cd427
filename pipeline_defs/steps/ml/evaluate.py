"""evaluateModel: a model's metric on scored rows held to a threshold, failing or warning like
any validation, and reported as an asset check of the model (see the Dagster layer).

accuracy and the regression metrics are aggregates counted in the validation group's one
Spark pass; f1, precision, recall and the areas under the curves come from Spark MLlib's
evaluators (one job each)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field
from pyspark.ml.evaluation import BinaryClassificationEvaluator, MulticlassClassificationEvaluator
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import NumericType

from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.errors import StepDataError, missing_columns
from pipeline_defs.steps.ml import tracking
from pipeline_defs.steps.ml.scoring import MODEL_META
from pipeline_defs.steps.registry import step
from pipeline_defs.steps.validate.engine import finish
from pipeline_defs.steps.validate.rules import DatasetRule, Validator

Metric = Literal["accuracy", "f1", "weightedPrecision", "weightedRecall", "areaUnderROC",
                 "areaUnderPR", "rmse", "mse", "mae", "r2"]
_AGGREGATES = {"accuracy", "rmse", "mse", "mae", "r2"}
_BINARY = {"areaUnderROC", "areaUnderPR"}


class EvaluateModel(Validator):
    """A model's metric on scored rows (trainModel's output, or predict's on labelled rows)
    within [min, max]: accuracy, f1, weightedPrecision, weightedRecall, areaUnderROC,
    areaUnderPR (classification); rmse, mse, mae, r2 (regression). An asset check of the
    model trained upstream; `promoteTo` moves an MLflow alias to it when it passes."""

    metric: Metric = Field(description="The metric (Spark MLlib's names).")
    min: float | None = Field(None, description="Lowest value that passes, e.g. 0.85.")
    max: float | None = Field(None, description="Highest value that passes (rmse, mae, ...).")
    label_column: str | None = Field(None, description="The true values (default: the "
                                     "target of the model that made the predictions).")
    prediction_column: str = Field("prediction", description="The predictions.")
    probability_column: str | None = Field(None, description="areaUnderROC/PR: the "
                                           "probability of the second class (default: the "
                                           "one the model wrote).")
    promote_to: str | None = Field(None, description="When the metric passes, point this MLflow"
                                   " alias (e.g. \"champion\") at the registered model version "
                                   "that made the predictions.")
    row_actions = False
    checks_model = True

    def problems(self):
        out = super().problems()
        if self.min is None and self.max is None:
            out.append(("min", "no threshold given.", "Add min (e.g. 0.85) or max."))
        return out


def _aggregate(metric: str, label: Column, pred: Column) -> callable:
    err = label.cast("double") - pred.cast("double")

    def value(seen: Column) -> Column:
        ok = seen & label.isNotNull() & pred.isNotNull()
        if metric == "accuracy":
            return F.avg(F.when(ok, (label == pred).cast("double")))
        mse = F.avg(F.when(ok, err * err))
        if metric == "mse":
            return mse
        if metric == "rmse":
            return F.sqrt(mse)
        if metric == "mae":
            return F.avg(F.when(ok, F.abs(err)))
        y = F.when(ok, label.cast("double"))
        total = F.sum(y * y) - F.sum(y) * F.sum(y) / F.count(y)
        return F.lit(1.0) - F.sum(F.when(ok, err * err)) / total
    return value


def _indexed(df: DataFrame, label: str, pred: str) -> DataFrame:
    """Label and prediction as class numbers (Spark's evaluators read numbers)."""
    if all(isinstance(df.schema[c].dataType, NumericType) for c in (label, pred)):
        return df.select(F.col(label).cast("double").alias("l"),
                         F.col(pred).cast("double").alias("p"))
    values = sorted({str(v) for r in df.select(label).union(df.select(pred)).distinct()
                     .collect() for v in r if v is not None})
    index = F.create_map(*[x for i, v in enumerate(values) for x in (F.lit(v), F.lit(float(i)))])
    return df.select(index[F.col(label).cast("string")].alias("l"),
                     index[F.col(pred).cast("string")].alias("p"))


def _evaluated(df: DataFrame, cfg: EvaluateModel, label: str, prob: str | None) -> float:
    rows = df.where(F.col(label).isNotNull() & F.col(cfg.prediction_column).isNotNull())
    if cfg.metric in _BINARY:
        if not prob or prob not in df.columns:
            raise StepDataError(f"probabilityColumn: {cfg.metric} needs the probability of "
                                "the second class; give probabilityColumn (trainModel writes "
                                "one; predict when given probabilityColumn).")
        # the second class in the labels' own order (numbers as numbers), as trainModel's
        classes = sorted(r[0] for r in rows.select(label).distinct().collect())
        if len(classes) != 2:
            raise StepDataError(f"metric: {cfg.metric} is for two classes; '{label}' has "
                                f"{len(classes)}. Use accuracy or f1.")
        positive = F.col(label) == F.lit(classes[-1])
        scored = rows.select(positive.cast("double").alias("l"),
                             F.col(prob).cast("double").alias("s"))
        return BinaryClassificationEvaluator(labelCol="l", rawPredictionCol="s",
                                             metricName=cfg.metric).evaluate(scored)
    return MulticlassClassificationEvaluator(labelCol="l", predictionCol="p",
                                             metricName=cfg.metric).evaluate(
        _indexed(rows, label, cfg.prediction_column))


@step("validate", "evaluateModel", EvaluateModel, row_level=False)
def evaluate_model(df: DataFrame, cfg: EvaluateModel, ctx: StepContext) -> DataFrame:
    missing_columns(df, [cfg.prediction_column], "predictionColumn")
    made_by = df.schema[cfg.prediction_column].metadata.get(MODEL_META, {})
    label = cfg.label_column or made_by.get("target")
    if not label:
        raise StepDataError("labelColumn: the predictions do not say which column holds the "
                            "true values (they do when trainModel or predict wrote them). "
                            "Give labelColumn.")
    missing_columns(df, [label], "labelColumn")
    prob = cfg.probability_column or made_by.get("probability")
    lo, hi = cfg.min, cfg.max
    text = " AND ".join(t for t in (f"{cfg.metric} >= {lo:g}" if lo is not None else "",
                                    f"{cfg.metric} <= {hi:g}" if hi is not None else "") if t)

    def judge(v, rows):
        if v is None:
            return 1, f"no scored rows with a {label} to compute {cfg.metric} on"
        v = float(v)
        ctx.metadata.setdefault("measured", {})[cfg.metric] = v
        bad = (lo is not None and v < lo) or (hi is not None and v > hi)
        return (1 if bad else 0), f"{cfg.metric} {v:.4f}"

    if cfg.metric in _AGGREGATES:
        value = _aggregate(cfg.metric, F.col(label), F.col(cfg.prediction_column))
    else:
        ctx.activity = f"computing {cfg.metric}"
        computed = _evaluated(df, cfg, label, prob)
        value = lambda seen: F.lit(computed)  # noqa: E731
    ctx.metadata["model"] = made_by.get("model_uri")
    ctx.metadata["threshold"] = text

    def promote(results, rows):
        if not cfg.promote_to or any(r.violations for r in results):
            return
        if not made_by.get("version"):
            raise StepDataError("promoteTo: the predictions come from no registered model "
                                "version (trainModel with registeredModelName, or predict "
                                "with a models:/ URI, makes them).")
        tracking.set_alias(made_by["name"], cfg.promote_to, made_by["version"])
        ctx.metadata["promoted_to"] = cfg.promote_to
        ctx.metadata["promoted"] = f"models:/{made_by['name']}@{cfg.promote_to} -> version " \
                                   f"{made_by['version']}"
        ctx.log.info(f"{cfg.metric} passed: alias '{cfg.promote_to}' of model "
                     f"'{made_by['name']}' now points at version {made_by['version']}")
    rule = DatasetRule(cfg.metric, text, value, judge, (label, cfg.prediction_column))
    return finish(df, cfg, ctx, [], None, [rule], promote)
