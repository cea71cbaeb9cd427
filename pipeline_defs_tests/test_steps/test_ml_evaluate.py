"""evaluateModel's metrics against scikit-learn's on the same scored rows; trainModel's and the
registry's refusals; MLflow URIs shown without credentials."""
from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sk

from pipeline_defs.steps.errors import StepDataError
from pipeline_defs.steps.ml import tracking
from pipeline_defs.steps.ml.evaluate import EvaluateModel, evaluate_model
from pipeline_defs.steps.ml.train import TrainModel, train_model

RNG = np.random.default_rng(3)
N = 300
TRUTH = RNG.integers(0, 2, N)
SCORE = np.clip(TRUTH * 0.35 + RNG.random(N) * 0.65, 0, 1)  # informative, not perfect
GUESS = (SCORE > 0.5).astype(int)


def _measure(spark, ctx, pdf: pd.DataFrame, **cfg) -> float:
    c = ctx()
    evaluate_model(spark.createDataFrame(pdf), EvaluateModel.model_validate(
        {"min": 0, "onFailure": "warn", **cfg}), c)
    return c.metadata["measured"][cfg["metric"]]


@pytest.mark.parametrize("metric, theirs", [
    ("accuracy", lambda: sk.accuracy_score(TRUTH, GUESS)),
    ("f1", lambda: sk.f1_score(TRUTH, GUESS, average="weighted")),
    ("weightedPrecision", lambda: sk.precision_score(TRUTH, GUESS, average="weighted")),
    ("weightedRecall", lambda: sk.recall_score(TRUTH, GUESS, average="weighted")),
    ("areaUnderROC", lambda: sk.roc_auc_score(TRUTH, SCORE))])
def test_classification_metrics_equal_scikit_learns(spark, ctx, metric, theirs):
    pdf = pd.DataFrame({"y": TRUTH, "prediction": GUESS, "p": SCORE})
    assert _measure(spark, ctx, pdf, metric=metric, labelColumn="y",
                    probabilityColumn="p") == pytest.approx(theirs(), abs=1e-9)


def test_string_classes_and_the_area_under_pr(spark, ctx):
    words = np.array(["stays", "leaves"])
    pdf = pd.DataFrame({"y": words[TRUTH], "prediction": words[GUESS], "p": SCORE})
    f1 = _measure(spark, ctx, pdf, metric="f1", labelColumn="y")
    assert f1 == pytest.approx(sk.f1_score(TRUTH, GUESS, average="weighted"), abs=1e-9)
    # "stays" sorts after "leaves": the probability is of the second class, "stays" (= 0)
    pr = _measure(spark, ctx, pdf.assign(p=1 - SCORE), metric="areaUnderPR", labelColumn="y",
                  probabilityColumn="p")
    assert pr == pytest.approx(sk.average_precision_score(1 - TRUTH, 1 - SCORE), abs=0.02)


@pytest.mark.parametrize("metric", ["rmse", "mse", "mae", "r2"])
def test_regression_metrics_equal_scikit_learns(spark, ctx, metric):
    y = RNG.normal(10, 3, N)
    pred = y + RNG.normal(0, 1, N)
    theirs = {"rmse": np.sqrt(sk.mean_squared_error(y, pred)),
              "mse": sk.mean_squared_error(y, pred), "mae": sk.mean_absolute_error(y, pred),
              "r2": sk.r2_score(y, pred)}[metric]
    pdf = pd.DataFrame({"y": y, "prediction": pred})
    assert _measure(spark, ctx, pdf, metric=metric, labelColumn="y") == \
        pytest.approx(theirs, rel=1e-9)


def test_evaluation_errors_name_the_field(spark, ctx):
    three = pd.DataFrame({"y": [0, 1, 2], "prediction": [0, 1, 1], "p": [0.1, 0.5, 0.9]})
    with pytest.raises(StepDataError, match="labelColumn: the predictions do not say"):
        _measure(spark, ctx, three, metric="accuracy")
    with pytest.raises(StepDataError, match="metric: areaUnderROC is for two classes; 'y' "
                       "has 3"):
        _measure(spark, ctx, three, metric="areaUnderROC", labelColumn="y",
                 probabilityColumn="p")
    with pytest.raises(StepDataError, match="probabilityColumn: areaUnderROC needs"):
        _measure(spark, ctx, three, metric="areaUnderROC", labelColumn="y")
    assert EvaluateModel.model_validate({"metric": "f1"}).problems()[-1][0] == "min"


def test_training_refuses_gaps_one_class_and_too_many(spark, ctx):
    def train(pdf, **cfg):
        return train_model(spark.createDataFrame(pdf), TrainModel.model_validate({
            "algorithm": "logisticRegression", "target": "y", "features": ["x"],
            "modelPath": "/nowhere", **cfg}), ctx())
    gaps = pd.DataFrame({"x": [1.0, None, 3.0, np.nan] * 5, "y": [0, 1] * 10})
    with pytest.raises(StepDataError, match=r"features: 'x' is missing in \d+ of \d+ training "
                       "rows.*imputation"):
        train(gaps, testFraction=0)
    with pytest.raises(StepDataError, match="target: 'y' has 1 distinct value"):
        train(pd.DataFrame({"x": [1.0, 2.0], "y": [1, 1]}))
    with pytest.raises(StepDataError, match="target: 'y' is string, which regression cannot"):
        train(pd.DataFrame({"x": [1.0], "y": ["a"]}), algorithm="linearRegression")


def test_the_registry_says_what_it_has(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PIPELINE_MLFLOW_DIR", str(tmp_path))
    c = tracking.client()
    c.create_registered_model("churn")
    with pytest.raises(StepDataError, match=r"registered model 'churn' has no alias 'champion' "
                       r"\(its aliases: none\)"):
        tracking.resolve(tracking.ModelRef.parse("models:/churn@champion"))
    with pytest.raises(StepDataError, match=r"registered model 'churn' has no version latest"):
        tracking.resolve(tracking.ModelRef.parse("models:/churn/latest"))
    with pytest.raises(StepDataError, match=r"has no registered model 'chrun' \(some it has: "
                       r"churn\)"):
        tracking.resolve(tracking.ModelRef.parse("models:/chrun/3"))
    assert tracking.resolve(tracking.ModelRef.parse("/models/m")) == ("/models/m", None, None)
    assert mlflow.get_tracking_uri()  # MLflow itself untouched by the product's client


def test_references_and_uris_as_shown():
    ref = tracking.ModelRef.parse("models:/churn@champion")
    assert (ref.name, ref.alias, ref.location) == ("churn", "champion", "models:/churn")
    assert tracking.ModelRef.parse("models:/churn").version == "latest"
    for bad in ("models:/", "models:churn", "models:/a/b/c"):
        with pytest.raises(ValueError):
            tracking.ModelRef.parse(bad)
    assert tracking.shown("https://u:s3cret@mlflow.example:5000/p") == \
        "https://mlflow.example:5000/p"
    assert tracking.shown("https://mlflow.example/?token=s3cret") == "https://mlflow.example/"
    assert tracking.shown("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"
