"""profileData: exact profile of a tiny DataFrame, one Spark pass, suggestions that pass."""
from __future__ import annotations

from pipeline_defs.steps import profile
from pipeline_defs.steps.validate import rows


def test_profile_values_and_suggestions(spark, ctx, tmp_path):
    df = spark.createDataFrame([(1, "a", 10.0), (2, "b", None), (3, "a", 30.0),
                                (4, None, 40.0)], "id long, tag string, amount double")
    c = ctx()
    c.run_id = "r1"
    out = profile.profile_data(df, profile.ProfileData.model_validate(
        {"quantiles": [0.5], "outputPath": str(tmp_path / "prof")}), c)
    assert out is df
    prof = {p["column"]: p for p in c.metadata["profile"]}
    assert prof["id"] == {"column": "id", "type": "bigint", "count": 4, "nulls": 0,
                          "approx_distinct": 4, "min": 1, "max": 4, "mean": 2.5,
                          "stddev": prof["id"]["stddev"], "quantiles": {"0.5": 2}}
    assert round(prof["id"]["stddev"], 6) == 1.290994
    assert (prof["tag"]["nulls"], prof["tag"]["approx_distinct"], prof["tag"]["min"],
            prof["tag"]["mean"]) == (1, 2, "a", None)
    assert (prof["amount"]["nulls"], prof["amount"]["mean"], prof["amount"]["min"]) == \
        (1, 80.0 / 3, 10.0)
    assert c.metadata["suggested_validators"] == [
        {"type": "validate", "method": "validateNulls", "config": {"notNullColumns": ["id"]}},
        {"type": "validate", "method": "validateRanges", "config": {"ranges": {
            "id": {"min": 1, "max": 4}, "amount": {"min": 10.0, "max": 40.0}}}},
        {"type": "validate", "method": "validateUnique", "config": {"columns": ["id"]}}]
    saved = spark.read.format("delta").load(str(tmp_path / "prof"))
    assert sorted(r.column for r in saved.collect()) == ["amount", "id", "tag"]
    assert {r.run_id for r in saved.collect()} == {"r1"}


def test_suggested_validators_pass_on_the_profiled_data(spark, ctx):
    df = spark.range(50).selectExpr("id", "id * 2.5 AS x", "CAST(id % 3 AS STRING) AS g")
    c = ctx()
    profile.profile_data(df, profile.ProfileData(), c)
    fns = {"validateNulls": (rows.validate_nulls, rows.ValidateNulls),
           "validateRanges": (rows.validate_ranges, rows.ValidateRanges),
           "validateUnique": (rows.validate_unique, rows.ValidateUnique)}
    suggested = c.metadata["suggested_validators"]
    assert sorted(s["method"] for s in suggested) == sorted(fns)  # one of each, none missing
    for s in suggested:
        fn, model = fns[s["method"]]
        v = ctx()
        fn(df, model.model_validate(s["config"]), v)
        assert v.metadata["passed"] is True


def test_profile_reads_the_data_once(spark, ctx, counted_reads):
    from pyspark.sql import functions as F
    counted, reads = counted_reads
    df = spark.range(300).select(counted("id").alias("id"), (F.col("id") % 7).alias("g"),
                                 F.col("id").cast("string").alias("s"))
    c = ctx()
    profile.profile_data(df, profile.ProfileData(), c)
    assert reads.value == 300
    assert c.metadata["profile"][1]["approx_distinct"] == 7
