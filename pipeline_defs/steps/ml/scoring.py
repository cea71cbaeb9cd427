"""predict, and what a model's output looks like: the input's columns plus a prediction (in
the target's own values) and, for a classifier, a probability; the model's working columns
dropped. The prediction column's metadata says which model made it, for evaluateModel."""
from __future__ import annotations

from pydantic import Field, field_validator
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import DataType, StringType

from pipeline_defs.config.model import StepModel
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.errors import StepDataError
from pipeline_defs.steps.ml import tracking
from pipeline_defs.steps.ml.stages import INTERNAL, ColumnOps, GroupAggregate, model_inputs
from pipeline_defs.steps.registry import step

CLASSIFICATION = "classification"
MODEL_META = "pipeline_defs.model"
"""Prediction column metadata: the model's target, task, probability column, URI."""


def describe(cfg, target_type: DataType, classes: list | None, binary: bool) -> dict:
    """What a saved model says about itself (its last stage holds it)."""
    return {"target": cfg.target, "task": cfg.kind(), "targetType": target_type.simpleString(),
            "classes": [str(c) for c in classes] if classes is not None else None,
            "binary": binary, "features": list(cfg.features)}


def model_meta(model) -> dict:
    last = model.stages[-1] if model.stages else None
    if isinstance(last, ColumnOps):
        return last._spec().get("model", {})
    return {}


def scored(df: DataFrame, meta: dict, output: str, probability: str | None,
           made_by: dict) -> DataFrame:
    """The model's output as users see it (see the module's doc)."""
    if f"{INTERNAL}prediction_label" in df.columns:  # a class, in the target's own values
        pred = F.col(f"{INTERNAL}prediction_label")
        if meta.get("targetType") not in (None, "string"):
            pred = pred.cast(meta["targetType"])
    else:
        pred = F.col(f"{INTERNAL}prediction")
    info = {"target": meta.get("target"), "task": meta.get("task"),
            "probability": probability, **made_by}
    cols = [F.col(c) for c in df.columns if not c.startswith(INTERNAL)
            and c not in (output, probability)]
    cols.append(pred.alias(output, metadata={MODEL_META: info}))
    if probability and f"{INTERNAL}probability" in df.columns:
        p = vector_to_array(F.col(f"{INTERNAL}probability"))
        cols.append((p[1] if meta.get("binary") else F.array_max(p)).alias(probability))
    return df.select(*cols)


def _has(model, cls) -> bool:
    return any(isinstance(st, cls) or (hasattr(st, "stages") and _has(st, cls))
               for st in model.stages)


class Predict(StepModel):
    """Score the current DataFrame with a trained model (its fitted features included):
    adds the prediction (and a probability) column. Batch and streaming."""

    model: str = Field(description="models:/NAME@ALIAS, models:/NAME/VERSION, "
                       "models:/NAME/latest (MLflow's registry), or the modelPath a trainModel "
                       "saved to.")
    output_column: str = Field("prediction", description="The prediction column.")
    probability_column: str | None = Field(None, description="Also a probability column "
                                           "(classifiers): binary, of the second class in "
                                           "sorted order; else of the predicted class.")
    passes_filters = True
    preserves_rows = True
    keeps_rows_identity = True
    reads_asset = True

    _ref = field_validator("model")(lambda v: (tracking.ModelRef.parse(v), v)[1])

    def location(self) -> str | None:
        return tracking.ModelRef.parse(self.model).location

    def table_name(self) -> str | None:
        ref = tracking.ModelRef.parse(self.model)
        return ref.name or super().table_name()

    def default_asset_key(self) -> list[str] | None:
        return ["models", self.table_name() or "model"]


@step("transform", "predict", Predict,
      asset_kind=lambda cfg: "mlflow" if cfg.model.startswith("models:/") else "spark-ml")
def predict(df: DataFrame, cfg: Predict, ctx: StepContext) -> DataFrame:
    ctx.activity = f"loading model {cfg.model}"
    ref = tracking.ModelRef.parse(cfg.model)
    model, version = tracking.load(ref, ctx.spark)
    meta = model_meta(model)
    if df.isStreaming and _has(model, GroupAggregate):
        raise StepDataError(f"model '{cfg.model}' has an aggregation feature (a value per "
                            "group of the rows it scores): it scores batches only, not a "
                            "stream. Score in a batch pipeline, or train without it.")
    needed = [c for c in model_inputs(model) if c != meta.get("target")]
    gone = [c for c in needed if c not in df.columns]
    if gone:
        raise StepDataError(f"model '{cfg.model}' needs columns {', '.join(map(repr, gone))}, "
                            f"which the input does not have. Columns: {', '.join(df.columns)}.")
    bad = [c for c in meta.get("features", []) if c in needed
           and isinstance(df.schema[c].dataType, StringType)]
    if bad:
        raise StepDataError(f"model '{cfg.model}' reads {', '.join(map(repr, bad))} as numbers; "
                            "the input has strings there.")
    ctx.metadata["model"] = cfg.model + (f" (version {version})" if version else "")
    ctx.activity = f"scoring with model {cfg.model}"
    made_by = {"model_uri": f"models:/{ref.name}/{version}" if version else cfg.model,
               **({"name": ref.name, "version": version} if version else {})}
    return scored(model.transform(df), meta, cfg.output_column, cfg.probability_column,
                  made_by)
