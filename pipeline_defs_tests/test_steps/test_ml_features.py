"""featureEngineering on Spark MLlib, each feature against an independent computation (pandas,
numpy), and the fitted features reused, not refitted, on new rows."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.ml.functions import vector_to_array

from pipeline_defs.steps.errors import StepDataError
from pipeline_defs.steps.ml.features import (
    FeatureEngineering,
    feature_engineering,
    feature_ids,
    fitted,
)


def _fe(spark, ctx, pdf: pd.DataFrame, features: list[dict]):
    cfg = FeatureEngineering.model_validate({"features": features})
    return feature_engineering(spark.createDataFrame(pdf), cfg, ctx())


def test_binning_agrees_with_pandas_cut(spark, ctx):
    rng = np.random.default_rng(11)
    x = np.round(rng.uniform(0, 100, 400), 1)
    x[:4] = [0.0, 18.0, 35.0, 100.0]  # on the edges
    edges = [0, 18, 35, 65, 100]
    labels = ["child", "young", "adult", "senior"]
    pdf = pd.DataFrame({"id": range(len(x)), "age": x})
    out = _fe(spark, ctx, pdf, [
        {"name": "age_bucket", "type": "binning", "column": "age", "bins": edges},
        {"name": "age_group", "type": "binning", "column": "age", "bins": edges,
         "labels": labels}]).toPandas().sort_values("id")
    want = pd.cut(pdf["age"], edges, right=False, labels=False)
    # Spark's last bucket is closed ([65, 100]); pandas' right=False leaves 100 out
    want[pdf["age"] == 100] = 3
    assert out["age_bucket"].tolist() == want.astype(float).tolist()
    assert out["age_group"].tolist() == [labels[int(i)] for i in want]
    assert set(out["age_group"]) == set(labels)  # every bucket occurs


def test_binning_keeps_nulls_in_a_bucket_of_their_own_with_a_null_label(spark, ctx):
    pdf = pd.DataFrame({"v": [1.0, None, 5.0]})
    out = _fe(spark, ctx, pdf, [{"name": "b", "type": "binning", "column": "v",
                                 "bins": ["-inf", 2, "inf"], "labels": ["low", "high"]}])
    assert [r.b for r in out.collect()] == ["low", None, "high"]


def test_kmeans_ids_are_stable_with_a_seed_and_find_the_clusters(spark, ctx):
    rng = np.random.default_rng(5)
    centres = np.array([[0, 0], [10, 10], [0, 10]])
    blob = np.repeat(np.arange(3), 60)
    pts = centres[blob] + rng.normal(0, 0.8, (len(blob), 2))
    pdf = pd.DataFrame({"id": range(len(blob)), "a": pts[:, 0], "b": pts[:, 1]})
    spec = [{"name": "segment", "type": "clustering", "algorithm": "kmeans",
             "columns": ["a", "b"], "k": 3, "seed": 17}]
    out = _fe(spark, ctx, pdf, spec)
    first = out.toPandas().sort_values("id")
    again = _fe(spark, ctx, pdf, spec).toPandas().sort_values("id")
    assert first["segment"].tolist() == again["segment"].tolist()
    (uid,) = feature_ids(out, ["segment"])
    (kmeans,) = [st for st in fitted(uid)[0].stages if type(st).__name__ == "KMeansModel"]
    assert kmeans.getOrDefault("seed") == 17  # the seed given, not Spark's default
    # new points near each centre get that blob's cluster id; a point with a gap gets none
    new = spark.createDataFrame(pd.DataFrame({"id": [1, 2, 3, 4], "a": [0.3, 9.6, 0.2, None],
                                              "b": [-0.2, 10.4, 9.7, 3.0]}))
    ids = {r.id: r.segment for r in fitted(uid)[0].transform(new).collect()}
    by_blob = dict(zip(blob, first["segment"], strict=True))
    assert ids == {1: by_blob[0], 2: by_blob[1], 3: by_blob[2], 4: None}
    # each true blob is one cluster, and the three clusters differ
    pairs = set(zip(blob, first["segment"], strict=True))
    assert len(pairs) == 3 and len({c for _, c in pairs}) == 3
    assert "__pd_f0" not in first.columns  # the assembled vector is dropped


def test_scaling_imputation_aggregation_and_one_hot(spark, ctx):
    pdf = pd.DataFrame({"customer": ["a", "a", "b", "c", "c", "c"],
                        "amount": [10.0, None, 30.0, 5.0, 7.0, None],
                        "visits": [1, 2, 3, 4, 5, 6],
                        "plan": ["gold", "free", "free", "pro", "gold", "free"]})
    out = _fe(spark, ctx, pdf, [
        {"name": "filled", "type": "imputation", "columns": ["amount"], "strategy": "median"},
        {"name": "scaled", "type": "scaling", "columns": ["amount", "visits"]},
        {"name": "mm", "type": "scaling", "columns": ["visits"], "method": "minmax"},
        {"name": "orders", "type": "aggregation", "groupBy": "customer", "expr": "count(*)"},
        {"name": "plan_vec", "type": "oneHot", "column": "plan"}])
    got = out.withColumn("s", vector_to_array("scaled")).withColumn(
        "m", vector_to_array("mm")).withColumn("p", vector_to_array("plan_vec")).toPandas()
    got = got.sort_values(["customer", "visits"]).reset_index(drop=True)
    # Spark's median is a value of the column (the lower middle one of an even count),
    # not pandas' interpolated 8.5
    median = np.quantile(pdf["amount"].dropna(), 0.5, method="inverted_cdf")
    assert median == 7.0
    filled = pdf["amount"].fillna(median)
    assert got["amount"].tolist() == filled.tolist()
    for j, col in enumerate([filled, pdf["visits"].astype(float)]):
        z = (col - col.mean()) / col.std()  # Spark's StandardScaler: the sample stddev
        assert np.allclose(got["s"].map(lambda v, j=j: v[j]), z)
    v = pdf["visits"]
    assert np.allclose(got["m"].map(lambda a: a[0]), (v - v.min()) / (v.max() - v.min()))
    assert got["orders"].tolist() == pdf.groupby("customer")["customer"].transform("size") \
        .tolist()
    # one slot per category, in alphabetical order (free, gold, pro)
    one_hot = {"free": [1.0, 0.0, 0.0], "gold": [0.0, 1.0, 0.0], "pro": [0.0, 0.0, 1.0]}
    assert [list(p) for p in got["p"]] == [one_hot[c] for c in got["plan"]]


def test_the_fitted_features_are_named_on_their_columns_and_apply_to_new_rows(spark, ctx):
    train = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0]})
    out = _fe(spark, ctx, train, [{"name": "z", "type": "scaling", "columns": ["x"]}])
    (uid,) = feature_ids(out, ["z"])
    model, needs = fitted(uid)
    assert needs == ()
    new = spark.createDataFrame(pd.DataFrame({"x": [100.0]}))
    (z,) = model.transform(new).select(vector_to_array("z")[0]).first()
    assert z == pytest.approx((100 - 2.5) / train["x"].std())  # the training mean and stddev


def test_imputation_fills_new_rows_with_the_training_value(spark, ctx):
    train = pd.DataFrame({"x": [1.0, None, 3.0, 10.0, None]})
    out = _fe(spark, ctx, train, [{"name": "f", "type": "imputation", "columns": ["x"]}])
    (uid,) = feature_ids(out, ["x"])
    new = spark.createDataFrame(pd.DataFrame({"x": [None, 100.0, None]}), "x double")
    got = [r.x for r in fitted(uid)[0].transform(new).collect()]
    assert got == [train["x"].mean(), 100.0, train["x"].mean()]  # 14/3, not the new rows'


def test_a_feature_on_a_string_column_names_the_feature_and_the_fix(spark, ctx):
    pdf = pd.DataFrame({"plan": ["a", "b"], "v": [1.0, 2.0]})
    with pytest.raises(StepDataError, match=r"features\[0\] \(scaling 's'\): column 'plan' "
                       r"is string, not a number.*oneHot"):
        _fe(spark, ctx, pdf, [{"name": "s", "type": "scaling", "columns": ["v", "plan"]}])
    with pytest.raises(StepDataError, match="features names 'gone'"):
        _fe(spark, ctx, pdf, [{"name": "s", "type": "oneHot", "column": "gone"}])


def test_config_errors_say_what_to_fix():
    with pytest.raises(ValueError, match="bins must increase strictly"):
        FeatureEngineering.model_validate({"features": [
            {"name": "b", "type": "binning", "column": "x", "bins": [0, 5, 5]}]})
    cfg = FeatureEngineering.model_validate({"features": [
        {"name": "b", "type": "binning", "column": "x", "bins": [0, 5, 9], "labels": ["a"]},
        {"name": "b", "type": "oneHot", "column": "y"}]})
    assert [p[0] for p in cfg.problems()] == ["features[0].labels", "features"]
    # a later feature may read an earlier one's column, which the input need not have
    assert cfg.needed_columns() == [("features[0]", ["x"]), ("features[1]", ["y"])]
