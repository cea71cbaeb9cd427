"""ML pipelines run for real through Dagster: Spark MLlib models compared with scikit-learn on
the same rows, tracked and registered in a real MLflow store (read back with MLflow's own
client), scored by alias from another process, checked by evaluateModel, shown as assets."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.metrics import accuracy_score, r2_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.steps.ml.train import RandomForestClassifier, param_names
from pipeline_defs_tests.conftest import REPO, run_job, step_failures, write_json

PIPELINE = str(Path(sys.executable).parent / "pipeline")
CANCER = ["mean_radius", "mean_texture", "mean_smoothness", "mean_compactness",
          "mean_concavity", "mean_symmetry", "worst_area", "worst_smoothness"]


@pytest.fixture
def store(tmp_path, monkeypatch) -> mlflow.MlflowClient:
    """A local MLflow store of this test's own (the product's default layout under it)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("PIPELINE_MLFLOW_DIR", str(tmp_path / "mlruns"))
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _csv(frame: pd.DataFrame, path: Path) -> str:
    frame.to_csv(path, index=False)
    return str(path)


def _extract(path: str) -> dict:
    return {"type": "extract", "method": "fromFile", "config": {
        "path": path, "format": "csv", "options": {"header": "true", "inferSchema": "true"}}}


def _cancer() -> pd.DataFrame:
    d = load_breast_cancer(as_frame=True).frame
    d.columns = [c.replace(" ", "_") for c in d.columns]
    return d.assign(id=range(len(d)))


def _materialized(result, key: str) -> dict:
    (m,) = [e.event_specific_data.materialization for e in result.all_events
            if e.event_type_value == "ASSET_MATERIALIZATION"
            and e.event_specific_data.materialization.asset_key.to_user_string() == key]
    return {k: getattr(v, "value", v) for k, v in m.metadata.items()}


def _keys(result) -> set[str]:
    return {e.event_specific_data.materialization.asset_key.to_user_string()
            for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"}


def test_logistic_regression_agrees_with_scikit_learn_on_the_same_rows(tmp_path, registry,
                                                                       store):
    # classes 2 and 10: Spark's labels are 0 and 1 whatever the values, "the second class"
    # is the larger number (not "2" after "10" as text)
    data = _cancer().assign(target=lambda d: np.where(d["target"] == 1, 10, 2))
    lam = 0.01
    f = write_json(tmp_path / "cancer.json", {"name": "cancer", "steps": [
        _extract(_csv(data, tmp_path / "cancer.csv")),
        {"type": "transform", "method": "trainModel", "name": "train", "config": {
            "algorithm": "logisticRegression", "target": "target", "features": CANCER,
            "params": {"regParam": lam, "maxIter": 500, "tol": 1e-9}, "testFraction": 0.3,
            "seed": 3, "registeredModelName": "cancer", "alias": "candidate"}},
        {"type": "validate", "method": "evaluateModel", "name": "good_enough",
         "config": {"metric": "areaUnderROC", "min": 0.9}},
        {"type": "load", "method": "toDeltaLake", "config": {"path": str(tmp_path / "held")}}]})
    result = run_job(load_pipeline(f, registry))
    held = pd.read_parquet(tmp_path / "held").sort_values("id")  # one commit: the Parquet
    train = data[~data["id"].isin(held["id"])]
    assert len(held) + len(train) == len(data) and 130 < len(held) < 210

    # scikit-learn on the same training rows: Spark's objective (mean loss + lam/2 |w|^2 on
    # standardized features) is C = 1 / (lam * n) on a StandardScaler's output
    sk = make_pipeline(StandardScaler(), LogisticRegression(C=1 / (lam * len(train)),
                                                            max_iter=5000, tol=1e-10))
    sk.fit(train[CANCER], train["target"])
    assert set(held["prediction"]) == {2, 10}  # in the target's own values
    ours = accuracy_score(held["target"], held["prediction"])
    theirs = accuracy_score(held["target"], sk.predict(held[CANCER]))
    assert abs(ours - theirs) <= 0.02 and ours > 0.9
    # the probability column is P(target = 10): scikit-learn's, nearly to the digit
    assert list(sk.classes_) == [2, 10]
    assert np.allclose(held["probability"], sk.predict_proba(held[CANCER])[:, 1], atol=0.02)
    auc = roc_auc_score(held["target"] == 10, held["probability"])

    # the model asset: metrics as computed here, MLflow's run and version
    meta = _materialized(result, "models/cancer")
    assert meta["metric/accuracy"] == pytest.approx(ours, abs=5e-5)  # shown to 4 places
    assert meta["metric/areaUnderROC"] == pytest.approx(auc, abs=5e-5)
    assert (meta["version"], meta["aliases"], meta["rows_test"]) == ("1", "candidate", len(held))
    version = store.get_model_version_by_alias("cancer", "candidate")
    assert str(version.version) == "1" and version.run_id == meta["mlflow_run_id"]
    run = store.get_run(version.run_id)
    assert run.data.metrics["accuracy"] == pytest.approx(ours)
    assert run.data.params["regParam"] == str(lam)
    assert (run.data.params["pipeline.target"], run.data.params["pipeline.seed"]) == \
        ("target", "3")
    assert run.data.tags["dagster.run_id"] == result.run_id
    # evaluateModel is an asset check of the model, with the metric it computed
    (check,) = [e.event_specific_data for e in result.all_events
                if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert (check.asset_key.to_user_string(), check.check_name, check.passed) == \
        ("models/cancer", "good_enough", True)
    assert check.metadata["areaUnderROC"].value == pytest.approx(auc)
    assert check.metadata["threshold"].value == "areaUnderROC >= 0.9"
    assert "failing_rows" not in check.metadata  # a model's metric: no rows pass or fail


def test_linear_regression_agrees_with_scikit_learn(tmp_path, registry, store, spark):
    d = load_diabetes(as_frame=True).frame.assign(id=range(442))
    cols = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
    f = write_json(tmp_path / "diabetes.json", {"name": "diabetes", "steps": [
        _extract(_csv(d, tmp_path / "d.csv")),
        {"type": "transform", "method": "trainModel", "config": {
            "algorithm": "linearRegression", "target": "target", "features": cols,
            "modelPath": str(tmp_path / "model")}},
        {"type": "validate", "method": "evaluateModel", "config": {"metric": "r2", "min": 0.3}},
        {"type": "load", "method": "toDeltaLake",
         "config": {"path": str(tmp_path / "held"), "mode": "overwrite"}}]})
    run_job(load_pipeline(f, registry))
    result = run_job(load_pipeline(f, registry))  # again: the saved model is replaced whole
    (check,) = [e.event_specific_data for e in result.all_events
                if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert check.passed and check.asset_key == dg.AssetKey(["models", "model"])
    held = spark.read.format("delta").load(str(tmp_path / "held")).toPandas()  # version 1
    train = d[~d["id"].isin(held["id"])]
    sk = LinearRegression().fit(train[cols], train["target"])
    assert np.allclose(held["prediction"], sk.predict(held[cols]), atol=1e-6)
    meta = _materialized(result, "models/model")
    assert meta["metric/r2"] == pytest.approx(r2_score(held["target"], held["prediction"]),
                                              abs=5e-5)
    rmse = float(np.sqrt(((held["target"] - held["prediction"]) ** 2).mean()))
    assert meta["metric/rmse"] == pytest.approx(rmse, abs=5e-5)
    assert meta["model_path"] == str(tmp_path / "model") and "mlflow_run_id" not in meta
    assert (tmp_path / "model" / "stages").is_dir()  # a Spark ML pipeline, nothing beside it
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("model")] == ["model"]
    from pyspark.ml import PipelineModel
    saved = PipelineModel.load(str(tmp_path / "model"))  # the model saved, read back by Spark
    coefficients = saved.stages[-2].coefficients.toArray()  # [assembler, model, description]
    assert np.allclose(coefficients, sk.coef_, atol=1e-6)


def _churn(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "family", "pro"], n)
    tenure = rng.integers(1, 72, n).astype(float)
    spend = np.round(rng.gamma(2, 30, n), 2)
    risk = 1.5 - tenure / 24 + (plan == "basic") * 1.2 - spend / 80
    churned = (rng.random(n) < 1 / (1 + np.exp(-risk))).astype(int)
    return pd.DataFrame({"id": range(n), "plan": plan, "tenure": tenure, "spend": spend,
                         "churned": churned})


def _cli(f: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME",
                                                             "MLFLOW_TRACKING_URI")},
           "SPARK_MASTER": "local[2]", "DAGSTER_HOME": str(tmp_path / "home")}
    return subprocess.run([PIPELINE, "run", str(f)], env=env, cwd=REPO, text=True,
                          capture_output=True, timeout=600)


def test_trained_in_one_process_scored_by_alias_in_another(tmp_path, registry, store):
    (tmp_path / "home").mkdir()
    data = _churn(3000, 1)
    features = {"name": "churn_features", "method": "featureEngineering", "type": "transform",
                "config": {"features": [
                    {"name": "plan_vec", "type": "oneHot", "column": "plan"},
                    {"name": "usage", "type": "scaling", "columns": ["tenure", "spend"]},
                    {"name": "tenure_band", "type": "binning", "column": "tenure",
                     "bins": [0, 12, 36, "inf"]}]}}
    defs = tmp_path / "defs"
    defs.mkdir()
    write_json(defs / "train.json", {"name": "churn-train", "steps": [
        _extract(_csv(data, tmp_path / "customers.csv")), features,
        {"type": "transform", "method": "trainModel", "config": {
            "algorithm": "randomForest", "task": "classification", "target": "churned",
            "features": ["plan_vec", "usage", "tenure_band"],
            "params": {"numTrees": 20, "maxDepth": 5, "seed": 7},
            "registeredModelName": "churn"}},
        {"type": "validate", "method": "evaluateModel",
         "config": {"metric": "accuracy", "min": 0.6, "promoteTo": "champion"}},
        {"type": "load", "method": "toDeltaLake", "config": {"path": str(tmp_path / "held")}}]})
    new = data.sample(400, random_state=2)
    new.loc[new.index[:5], "plan"] = "enterprise"  # a plan never seen in training
    new.loc[new.index[200:], "spend"] *= 3  # spending as never seen in training
    write_json(defs / "score.json", {"name": "churn-score", "steps": [
        _extract(_csv(new.drop(columns="churned"), tmp_path / "new.csv")),
        {"type": "transform", "method": "predict", "config": {
            "model": "models:/churn@champion", "outputColumn": "will_churn",
            "probabilityColumn": "p"}},
        {"type": "load", "method": "toDeltaLake", "config": {"path": str(tmp_path / "scored")}}]})
    run_job(load_pipeline(defs / "train.json", registry))  # here, in the test's process
    assert str(store.get_model_version_by_alias("churn", "champion").version) == "1"
    # a second version, trained differently, that fails its check: registered, not champion
    raw = json.loads((defs / "train.json").read_text())
    raw["steps"][2]["config"]["params"] = {"numTrees": 3, "maxDepth": 2, "seed": 1}
    raw["steps"][3]["config"]["min"] = 0.999
    write_json(tmp_path / "retrain.json", {**raw, "name": "churn-retrain"})
    run_job(load_pipeline(tmp_path / "retrain.json", registry), expect_success=False)
    assert sorted(str(v.version) for v in store.search_model_versions("name = 'churn'")) == \
        ["1", "2"]
    assert str(store.get_model_version_by_alias("churn", "champion").version) == "1"
    r = _cli(defs / "score.json", tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Traceback" not in r.stdout + r.stderr

    scored = pd.read_parquet(tmp_path / "scored").set_index("id").sort_index()
    assert len(scored) == 400 and set(scored["will_churn"]) <= {0, 1}
    assert scored["p"].between(0, 1).all()
    # the scaler is the one fitted at training: the training rows' mean and stddev
    held = pd.read_parquet(tmp_path / "held")
    trained_on = data  # featureEngineering ran before the split: fitted on all rows
    z = (scored["spend"] - trained_on["spend"].mean()) / trained_on["spend"].std()
    assert np.allclose(scored["usage"].map(lambda v: v["values"][1]
                                           if isinstance(v, dict) else v[1]), z)
    # an unseen plan: no slot set; the others: their own slot, as at training (alphabetical)
    vec = scored["plan_vec"].map(lambda v: list(v["indices"]))
    slot = {"basic": [0], "family": [1], "pro": [2], "enterprise": []}
    assert (vec == scored["plan"].map(slot)).all()
    # the rows it also scored at training, unchanged: the same predictions, the same
    # probabilities (version 1, the champion, not the newer 2; features not refitted)
    both = held.set_index("id").join(scored[["will_churn", "p"]], how="inner")
    both = both[both.index.isin(new["id"].iloc[5:200])]
    assert len(both) > 10
    assert (both["prediction"] == both["will_churn"]).all()
    assert np.allclose(both["probability"], both["p"])

    # Dagster: the model is an asset between the training table and the scored table
    from pipeline_defs.definitions import build_definitions
    graph = build_definitions(defs).resolve_asset_graph()
    model = graph.get(dg.AssetKey(["models", "churn"]))
    assert model.kinds == {"spark", "mlflow"}
    assert [k.to_user_string() for k in model.parent_keys] == ["sources/customers"]
    assert dg.AssetKey(["models", "churn"]) in graph.get(dg.AssetKey(["scored"])).parent_keys
    # the held-back rows trainModel scored come from the model too
    assert dg.AssetKey(["models", "churn"]) in graph.get(dg.AssetKey(["held"])).parent_keys
    assert [c.name for c in model.check_keys] == ["s04_evaluateModel"]
    spec = build_definitions(defs).resolve_assets_def(dg.AssetKey(["models", "churn"])) \
        .specs_by_key[dg.AssetKey(["models", "churn"])]
    assert spec.metadata["dagster/uri"] == "models:/churn"


def test_a_failing_evaluation_fails_the_run_and_moves_no_alias(tmp_path, registry, store):
    data = _churn(600, 4)
    src = _csv(data, tmp_path / "c.csv")

    def pipeline(name, on_failure):
        return load_pipeline(write_json(tmp_path / f"{name}.json", {"name": name, "steps": [
            _extract(src),
            {"type": "transform", "method": "trainModel", "config": {
                "algorithm": "decisionTree", "task": "classification", "target": "churned",
                "features": ["tenure", "spend"], "registeredModelName": "churn",
                "params": {"maxDepth": 3}}},
            {"type": "validate", "method": "evaluateModel", "name": "gate", "config": {
                "metric": "accuracy", "min": 0.99, "onFailure": on_failure,
                "promoteTo": "champion"}},
            {"type": "load", "method": "toDeltaLake",
             "config": {"path": str(tmp_path / name)}}]}), registry)

    result = run_job(pipeline("strict", "fail"), expect_success=False)
    (line,) = step_failures(result)
    assert line.startswith("pipeline 'strict', step 3 (validate.evaluateModel) failed")
    assert "accuracy" in line and "0.99" in line
    (check,) = [e.event_specific_data for e in result.all_events
                if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert (check.passed, check.severity.value, check.check_name) == (False, "ERROR", "gate")
    assert not (tmp_path / "strict").exists()
    # a model that fails a blocking check is no asset of Dagster's (MLflow keeps the version)
    assert "models/churn" not in _keys(result)
    result = run_job(pipeline("lenient", "warn"))
    assert "models/churn" in _keys(result)
    checks = [e.event_specific_data for e in result.all_events
              if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert [(c.passed, c.severity.value) for c in checks] == [(False, "WARN")]
    versions = store.search_model_versions("name = 'churn'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]  # both registered...
    assert "champion" not in store.get_registered_model("churn").aliases  # ...none promoted


def test_bad_input_names_the_step_and_the_field(tmp_path, registry, store):
    src = _csv(_churn(50, 5), tmp_path / "c.csv")

    def failure(step: dict) -> str:
        f = write_json(tmp_path / "bad.json", {"name": "bad", "steps": [
            _extract(src), step, {"type": "load", "method": "toDeltaLake",
                                  "config": {"path": str(tmp_path / "out")}}]})
        (line,) = step_failures(run_job(load_pipeline(f, registry), expect_success=False))
        return line

    train = {"type": "transform", "method": "trainModel", "config": {
        "algorithm": "gbt", "task": "classification", "target": "churned",
        "features": ["tenure"], "modelPath": str(tmp_path / "m")}}
    line = failure({**train, "config": {**train["config"], "target": "churn"}})
    assert "step 2 (transform.trainModel) failed: target names 'churn', which the input " \
           "does not have" in line
    line = failure({**train, "config": {**train["config"], "features": ["tenure", "plan"]}})
    assert "step 2 (transform.trainModel) failed: features: 'plan' is a string column" in line
    assert "\"type\": \"oneHot\", \"column\": \"plan\"" in line
    line = failure({"type": "transform", "method": "predict",
                    "config": {"model": "models:/nope@champion"}})
    assert "step 2 (transform.predict) failed: model 'models:/nope@champion': MLflow's " \
           "registry at sqlite:///" in line and "has no registered model 'nope'" in line
    line = failure({"type": "transform", "method": "predict",
                    "config": {"model": str(tmp_path / "no-model")}})
    assert f"model '{tmp_path / 'no-model'}': no Spark ML model can be read there" in line



def test_pipeline_validate_finds_bad_ml_config_before_spark_starts(tmp_path, registry):
    from pipeline_defs.common.errors import ConfigError
    declared = {"type": "extract", "method": "fromFile", "config": {
        "path": str(tmp_path / "c.csv"), "format": "csv",
        "schema": "id INT, plan STRING, tenure DOUBLE, spend DOUBLE, churned INT"}}
    f = write_json(tmp_path / "bad.json", {"name": "bad", "steps": [
        declared,
        {"type": "transform", "method": "featureEngineering", "config": {"features": [
            {"name": "spend_band", "type": "binning", "column": "spend", "bins": [0, 50, "inf"],
             "labels": ["low", "high"]}]}},
        {"type": "transform", "method": "trainModel", "config": {
            "algorithm": "randomForest", "task": "classification", "target": "churn",
            "features": ["tenure", "plan", "spend_band"], "params": {"numTree": 5},
            "alias": "champion", "modelPath": str(tmp_path / "m")}}]})
    with pytest.raises(ConfigError) as e:
        load_pipeline(f, registry)
    where = f"{f}, step 3 (transform.trainModel), config."
    assert [line.strip() for line in str(e.value).splitlines()[1:]] == [
        f"- {where}params.numTree: is not a parameter of randomForest classification: did you "
        f"mean 'numTrees'? Its parameters: " + ", ".join(param_names(RandomForestClassifier))
        + ".",
        f"- {where}alias: an alias needs a registered model. Add registeredModelName.",
        f"- {where}target: names 'churn', which the input does not have (its declared "
        "columns: id, plan, tenure, spend, churned, spend_band). Fix the name, or the schema "
        "that declares the columns.",
        f"- {where}features: 'plan' is a string column; a model needs numbers. Add a "
        "featureEngineering step before with {\"name\": \"plan_vec\", \"type\": \"oneHot\", "
        "\"column\": \"plan\"} and use 'plan_vec' here.",
        f"- {where}features: 'spend_band' is a string column; a model needs numbers. Add a "
        "featureEngineering step before with {\"name\": \"spend_band_vec\", \"type\": "
        "\"oneHot\", \"column\": \"spend_band\"} and use 'spend_band_vec' here."]


def test_predict_scores_a_stream_as_it_scores_a_batch(tmp_path, registry, store, spark):
    data = _churn(800, 6)
    spark.createDataFrame(data).write.format("delta").save(str(tmp_path / "events"))
    train = write_json(tmp_path / "train.json", {"name": "t", "steps": [
        {"type": "extract", "method": "fromDeltaLake", "config": {"path": str(tmp_path /
                                                                              "events")}},
        {"type": "transform", "method": "trainModel", "config": {
            "algorithm": "gbt", "task": "classification", "target": "churned",
            "features": ["tenure", "spend"], "params": {"maxIter": 5, "seed": 1},
            "registeredModelName": "stream", "testFraction": 0}},
        {"type": "load", "method": "toDeltaLake", "config": {"path": str(tmp_path / "all")}}]})
    run_job(load_pipeline(train, registry))
    stream = write_json(tmp_path / "stream.json", {
        "name": "s", "mode": "streaming",
        "streaming": {"trigger": "availableNow", "checkpointRoot": str(tmp_path / "cp")},
        "steps": [{"type": "extract", "method": "fromDeltaLake",
                   "config": {"path": str(tmp_path / "events")}},
                  {"type": "transform", "method": "predict",
                   "config": {"model": "models:/stream/latest", "outputColumn": "p1"}},
                  {"type": "load", "method": "toDeltaLake",
                   "config": {"path": str(tmp_path / "streamed")}}]})
    run_job(load_pipeline(stream, registry))
    batch = pd.read_parquet(tmp_path / "all").set_index("id")["prediction"]
    streamed = pd.read_parquet(tmp_path / "streamed").set_index("id")["p1"]
    assert len(streamed) == 800
    assert (streamed.sort_index() == batch.sort_index()).all()
