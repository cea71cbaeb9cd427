"""trainModel: a Spark MLlib model trained on the current DataFrame, evaluated on a held-back
part of it, saved (a path, MLflow's registry, or both) with the fitted features before it.

Its output is the held-back rows scored; its metrics go to MLflow with its params and to
Dagster as the model asset's metadata."""
from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import Field
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import (
    DecisionTreeClassifier,
    GBTClassifier,
    LogisticRegression,
    RandomForestClassifier,
)
from pyspark.ml.evaluation import (
    BinaryClassificationEvaluator,
    MulticlassClassificationEvaluator,
    RegressionEvaluator,
)
from pyspark.ml.feature import IndexToString, VectorAssembler
from pyspark.ml.linalg import VectorUDT
from pyspark.ml.param import Param
from pyspark.ml.regression import (
    DecisionTreeRegressor,
    GBTRegressor,
    LinearRegression,
    RandomForestRegressor,
)
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import BooleanType, NumericType, StringType

from pipeline_defs.config.model import AssetKeyParts, StepModel
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.errors import StepDataError, missing_columns
from pipeline_defs.steps.ml import tracking
from pipeline_defs.steps.ml.features import feature_ids, fitted
from pipeline_defs.steps.ml.scoring import CLASSIFICATION, describe, scored
from pipeline_defs.steps.ml.stages import INTERNAL, ColumnOps
from pipeline_defs.steps.registry import step

Algorithm = Literal["randomForest", "gbt", "logisticRegression", "linearRegression",
                    "decisionTree"]
ESTIMATORS = {
    ("randomForest", "classification"): RandomForestClassifier,
    ("randomForest", "regression"): RandomForestRegressor,
    ("gbt", "classification"): GBTClassifier,
    ("gbt", "regression"): GBTRegressor,
    ("decisionTree", "classification"): DecisionTreeClassifier,
    ("decisionTree", "regression"): DecisionTreeRegressor,
    ("logisticRegression", "classification"): LogisticRegression,
    ("linearRegression", "regression"): LinearRegression,
}
_IMPLIED = {"logisticRegression": "classification", "linearRegression": "regression"}
_SET_BY_STEP = {"featuresCol", "labelCol", "predictionCol", "probabilityCol",
                "rawPredictionCol", "weightCol"}
FEATURES, LABEL, PREDICTION = f"{INTERNAL}features", f"{INTERNAL}label", f"{INTERNAL}prediction"


def param_names(cls) -> list[str]:
    """The estimator's own parameters (read from the class: no Spark needed)."""
    return sorted(n for n in dir(cls) if isinstance(getattr(cls, n, None), Param)
                  and n not in _SET_BY_STEP)


class TrainModel(StepModel):
    """Train a Spark MLlib model (randomForest, gbt, logisticRegression, linearRegression,
    decisionTree) on the current DataFrame, evaluate it on a held-back part, and save it
    (modelPath and/or MLflow's registry) with the fitted features before it. The output is
    the held-back rows, scored."""

    algorithm: Algorithm = Field(description="randomForest, gbt, logisticRegression, "
                                 "linearRegression or decisionTree.")
    task: Literal["classification", "regression"] | None = Field(
        None, description="classification or regression (implied by logisticRegression and "
        "linearRegression).")
    target: str = Field(description="The column to predict (classification: numbers or "
                        "strings; regression: numbers).")
    features: list[str] = Field(min_length=1, description="Input columns: numbers, booleans "
                                "or vectors (a featureEngineering oneHot for a category); "
                                "assembled into one vector for you.")
    params: dict[str, Any] = Field(default_factory=dict, description="The algorithm's own "
                                   "parameters, as Spark names them: {\"numTrees\": 100, "
                                   "\"maxDepth\": 5, \"seed\": 7}.")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="Rows held back to evaluate on "
                                 "(0: evaluate on the training rows, said in the metrics).")
    seed: int = Field(42, description="Seed of the train/test split.")
    model_path: str | None = Field(None, description="Save the fitted Spark ML pipeline here "
                                   "(replaced only once the new one is whole).")
    registered_model_name: str | None = Field(
        None, description="Register a new version of this model in MLflow "
        "(MLFLOW_TRACKING_URI, default a local store under ./mlruns).")
    alias: str | None = Field(None, description="Point this MLflow alias (e.g. \"candidate\") "
                              "at the new version. To move an alias only when the model is "
                              "good enough, use evaluateModel's promoteTo.")
    experiment: str | None = Field(None, description="MLflow experiment (default: the "
                                   "pipeline's name).")
    output_column: str = Field("prediction", description="The prediction column of the "
                               "output.")
    probability_column: str | None = Field(
        "probability", description="Classification: the probability column of the output "
        "(binary: of the second class in sorted order, 1 for 0/1 labels; else of the "
        "predicted class); null for none.")
    asset_key: AssetKeyParts | None = Field(
        None, description="Dagster asset key of the model: \"churn\", \"ml/churn\" or "
        "[\"ml\", \"churn\"]. Default: models/<registeredModelName, else the modelPath's "
        "last segment>.")

    def kind(self) -> str:
        return self.task or _IMPLIED.get(self.algorithm, "")

    def problems(self):
        out = []
        if self.task is None and self.algorithm not in _IMPLIED:
            out.append(("task", f"{self.algorithm} can classify or regress.",
                        "Add \"task\": \"classification\" or \"regression\"."))
        elif (self.algorithm, self.kind()) not in ESTIMATORS:
            out.append(("task", f"{self.algorithm} does no {self.kind()}.",
                        f"Use task {_IMPLIED[self.algorithm]}, or another algorithm."))
        else:
            known = param_names(ESTIMATORS[(self.algorithm, self.kind())])
            for k in self.params:
                if k in _SET_BY_STEP:
                    out.append((f"params.{k}", "is set by the step.", "Remove it."))
                elif k not in known:
                    import difflib
                    near = difflib.get_close_matches(k, known, 1)
                    out.append((f"params.{k}", f"is not a parameter of {self.algorithm} "
                                f"{self.kind()}" + (f": did you mean '{near[0]}'?" if near
                                                    else "."),
                                f"Its parameters: {', '.join(known)}."))
        if not self.model_path and not self.registered_model_name:
            out.append(("modelPath", "the model is saved nowhere.",
                        "Give modelPath, registeredModelName, or both."))
        if self.alias and not self.registered_model_name:
            out.append(("alias", "an alias needs a registered model.",
                        "Add registeredModelName."))
        if self.target in self.features:
            out.append(("features", f"'{self.target}' is the target.", "Remove it."))
        return out

    def location(self) -> str | None:
        if self.registered_model_name:
            return f"models:/{self.registered_model_name}"
        return self.model_path

    def table_name(self) -> str | None:
        return self.registered_model_name or super().table_name()

    def default_asset_key(self) -> list[str] | None:
        return ["models", self.table_name() or "model"]

    def needed_columns(self):
        return [("target", [self.target]), ("features", list(self.features))]

    def input_problems(self, columns):
        out = super().input_problems(columns)
        for c in self.features:
            if (columns.get(c.lower()) or "").upper() in ("STRING", "VARCHAR", "TEXT"):
                out.append(("features", f"'{c}' is a string column; a model needs numbers.",
                            f"Add a featureEngineering step before with {{\"name\": "
                            f"\"{c}_vec\", \"type\": \"oneHot\", \"column\": \"{c}\"}} and "
                            f"use '{c}_vec' here."))
        return out

    writes_asset = True


def _check_types(df: DataFrame, cfg: TrainModel) -> None:
    for c in cfg.features:
        t = df.schema[c].dataType
        if isinstance(t, StringType):
            raise StepDataError(
                f"features: '{c}' is a string column; a model needs numbers. Add a "
                f"featureEngineering step before with {{\"name\": \"{c}_vec\", \"type\": "
                f"\"oneHot\", \"column\": \"{c}\"}} and use '{c}_vec' here.")
        if not isinstance(t, (NumericType, BooleanType, VectorUDT)):
            raise StepDataError(f"features: '{c}' is {t.simpleString()}; a model needs "
                                "numbers, booleans or vectors.")
    t = df.schema[cfg.target].dataType
    ok = (NumericType, BooleanType, StringType) if cfg.kind() == CLASSIFICATION else \
        (NumericType,)
    if not isinstance(t, ok):
        raise StepDataError(f"target: '{cfg.target}' is {t.simpleString()}, which "
                            f"{cfg.kind()} cannot predict" + (" (it needs numbers)."
                                                               if cfg.kind() != CLASSIFICATION
                                                               else "."))


MAX_CLASSES = 1000


def _labelled(rows: DataFrame, cfg: TrainModel, task: str) -> tuple[DataFrame, list | None]:
    """The rows with Spark's label column, and (classification) the classes in their own
    sorted order (numbers as numbers): class i is label i, whatever the values (0/1, 1/2,
    "no"/"yes"), so "the second class" is the larger one."""
    if task != CLASSIFICATION:
        return rows.withColumn(LABEL, F.col(cfg.target).cast("double")), None
    found = rows.select(cfg.target).distinct().limit(MAX_CLASSES + 1).collect()
    if len(found) > MAX_CLASSES:
        raise StepDataError(f"target: '{cfg.target}' has more than {MAX_CLASSES} distinct "
                            "values, too many classes to learn. Did you mean \"task\": "
                            "\"regression\"?")
    if len(found) < 2:
        raise StepDataError(f"target: '{cfg.target}' has {len(found)} distinct value(s); a "
                            "classifier needs at least two classes to tell apart.")
    classes = sorted(r[0] for r in found)
    index = F.create_map(*[x for i, c in enumerate(classes) for x in (F.lit(c),
                                                                       F.lit(float(i)))])
    return rows.withColumn(LABEL, index[F.col(cfg.target)]), classes


def _count_checked(train: DataFrame, cfg: TrainModel) -> int:
    """The training rows, counted in the same pass as the nulls of each feature: a model
    cannot learn from a missing value (Spark would stop with a message naming no column)."""
    types = dict(train.dtypes)
    missing = [F.count(F.when(F.col(c).isNull() | (F.isnan(c) if types[c] in ("double", "float")
                                                    else F.lit(False)), 1)).alias(c)
               for c in cfg.features]
    got = train.agg(F.count(F.lit(1)).alias("__rows"), *missing).first().asDict()
    n = got.pop("__rows")
    if n == 0:
        raise StepDataError(f"target: no row has a value of '{cfg.target}' to learn from.")
    nulls = {c: k for c, k in got.items() if k}
    if nulls:
        raise StepDataError("features: " + ", ".join(f"'{c}' is missing in {k} of {n} "
                                                      "training rows" for c, k in nulls.items())
                            + ". Fill them first (an imputation feature in featureEngineering)"
                            " or filter those rows.")
    return n


def _feature_stages(df: DataFrame, cfg: TrainModel, ctx: StepContext) -> list:
    stages = []
    for uid in feature_ids(df, cfg.features):
        entry = fitted(uid)
        if entry is None:  # fitted by another run (read back from a table): data here
            ctx.log.warning(f"trainModel: columns {', '.join(cfg.features)} name features "
                            f"fitted by another run ({uid}); the model takes them as they are, "
                            "so scoring needs them as columns (their fitting is not saved "
                            "with it)")
            continue
        stages.append(entry[0])
    return stages


def _metrics(scored_test: DataFrame, cfg: TrainModel, binary: bool) -> dict[str, float]:
    if cfg.kind() == CLASSIFICATION:
        ev = MulticlassClassificationEvaluator(labelCol=LABEL, predictionCol=PREDICTION)
        out = {m: ev.setMetricName(m).evaluate(scored_test) for m in
               ("accuracy", "f1", "weightedPrecision", "weightedRecall")}
        if binary:
            bev = BinaryClassificationEvaluator(labelCol=LABEL,
                                                rawPredictionCol=f"{INTERNAL}raw")
            out.update({m: bev.setMetricName(m).evaluate(scored_test)
                        for m in ("areaUnderROC", "areaUnderPR")})
        return out
    ev = RegressionEvaluator(labelCol=LABEL, predictionCol=PREDICTION)
    return {m: ev.setMetricName(m).evaluate(scored_test) for m in ("rmse", "mse", "mae", "r2")}


@step("transform", "trainModel", TrainModel, row_level=False,
      asset_kind=lambda cfg: "mlflow" if cfg.registered_model_name else "spark-ml")
def train_model(df: DataFrame, cfg: TrainModel, ctx: StepContext) -> DataFrame:
    missing_columns(df, [cfg.target], "target")
    missing_columns(df, cfg.features, "features")
    _check_types(df, cfg)
    task, started = cfg.kind(), time.perf_counter()
    est = ESTIMATORS[(cfg.algorithm, task)](featuresCol=FEATURES, labelCol=LABEL,
                                           predictionCol=PREDICTION)
    if task == CLASSIFICATION and est.hasParam("probabilityCol"):
        est.setProbabilityCol(f"{INTERNAL}probability").setRawPredictionCol(f"{INTERNAL}raw")
    est.setParams(**cfg.params)
    ttype = df.schema[cfg.target].dataType
    ctx.activity = "training its model"
    base = df.where(F.col(cfg.target).isNotNull()).persist()
    try:
        rows, classes = _labelled(base, cfg, task)
        if cfg.test_fraction > 0:
            train, test = rows.randomSplit([1 - cfg.test_fraction, cfg.test_fraction], cfg.seed)
        else:
            train, test = rows, rows
        n_train = _count_checked(train, cfg)
        assembler = VectorAssembler(inputCols=cfg.features, outputCol=FEATURES,
                                    handleInvalid="error")
        fit_started = time.perf_counter()
        core = Pipeline(stages=[assembler, est]).fit(train)
        fit_s = time.perf_counter() - fit_started
        binary = task == CLASSIFICATION and len(classes) == 2
        back = [IndexToString(inputCol=PREDICTION, outputCol=f"{INTERNAL}prediction_label",
                              labels=[str(c) for c in classes])] if classes is not None else []
        meta = describe(cfg, ttype, classes, binary)
        model = PipelineModel([*_feature_stages(df, cfg, ctx), *core.stages, *back,
                               ColumnOps(spec=json.dumps({"model": meta}))])
        ctx.activity = "evaluating its model"
        test_scored = PipelineModel([*core.stages, *back]).transform(test).persist()
        n_test = test_scored.count()
        metrics = _metrics(test_scored, cfg, binary)
        ctx.activity = "saving its model"
        save_started = time.perf_counter()
        saved = _save(model, cfg, ctx, metrics, n_train, n_test)
        save_s = time.perf_counter() - save_started
    finally:
        # the scored held-back rows stay cached: they are the output (its metrics' rows);
        # the run's SparkSession frees them when it ends
        base.unpersist()
    ctx.metadata.update({"algorithm": f"{cfg.algorithm} {task}", "rows_train": n_train,
                         "rows_test": n_test, "fit_s": round(fit_s, 3),
                         "save_s": round(save_s, 3),
                         **{k: round(v, 6) for k, v in metrics.items()}})
    ctx.produced = {**saved, "metrics": metrics, "rows_train": n_train, "rows_test": n_test,
                    "algorithm": f"{cfg.algorithm} {task}", "target": cfg.target,
                    "features": list(cfg.features), "params": dict(cfg.params),
                    "evaluated_on": "held-back rows" if cfg.test_fraction else "training rows",
                    "seconds": round(time.perf_counter() - started, 3)}
    return scored(test_scored.drop(LABEL), meta, cfg.output_column,
                  cfg.probability_column if task == CLASSIFICATION else None,
                  {k: v for k, v in saved.items() if k in ("model_uri", "name", "version")})


def _save(model: PipelineModel, cfg: TrainModel, ctx: StepContext, metrics: dict,
          n_train: int, n_test: int) -> dict:
    out: dict[str, Any] = {}
    if cfg.model_path:
        tracking.save_to_path(model, cfg.model_path, ctx.spark)
        out["model_path"] = cfg.model_path
        out["model_uri"] = cfg.model_path
    if cfg.registered_model_name:
        out.update(tracking.log_model(
            model, cfg.registered_model_name, cfg.alias, cfg.experiment or ctx.pipeline,
            run_name=f"{ctx.pipeline} step {ctx.step}",
            tags={"dagster.run_id": ctx.run_id, "pipeline": ctx.pipeline,
                  "pipeline.step": str(ctx.step)},
            # the estimator's own params as Spark names them; the step's under "pipeline."
            params={**cfg.params, "pipeline.algorithm": cfg.algorithm,
                    "pipeline.task": cfg.kind(), "pipeline.target": cfg.target,
                    "pipeline.features": ",".join(cfg.features),
                    "pipeline.testFraction": cfg.test_fraction, "pipeline.seed": cfg.seed},
            metrics={**metrics, "rows_train": n_train, "rows_test": n_test}))
    return out
