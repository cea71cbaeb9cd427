"""The original five validators: exact counts, fail and warn, one Spark job per step."""
from __future__ import annotations

import pytest

from pipeline_defs.steps import validate as V
from pipeline_defs.steps.validate import ValidationFailed


def cfg(model, **kw):
    return model.model_validate(kw)


@pytest.fixture
def tx(spark):
    return spark.createDataFrame(
        [(1, 10, 5.0, "completed"), (2, None, -1.0, "pending"), (3, 11, 2e6, "odd"),
         (4, 12, None, "failed")], "transaction_id long, customer_id long, amount double, "
                                   "status string")


def test_schema_pass_and_fail(tx, ctx):
    ok = cfg(V.ValidateSchema, expectedColumns=[{"name": "transaction_id", "type": "long"},
                                                 {"name": "amount", "type": "double"}])
    assert V.validate_schema(tx, ok, ctx()) is tx
    bad = cfg(V.ValidateSchema, expectedColumns=[{"name": "amount", "type": "int"},
                                                  {"name": "day", "type": "date"}])
    with pytest.raises(ValidationFailed, match="column 'amount' is double, expected int; "
                                               "column 'day' is missing"):
        V.validate_schema(tx, bad, ctx())


def test_nulls_counts_per_column(tx, ctx):
    c = ctx()
    with pytest.raises(ValidationFailed, match=r"not_null\(customer_id\): 1 of 4 rows violate "
                                               r"`customer_id IS NOT NULL`; not_null\(amount\)"):
        V.validate_nulls(tx, cfg(V.ValidateNulls, notNullColumns=["transaction_id",
                                                                  "customer_id", "amount"]), c)
    assert c.metadata["violations"] == {"not_null(transaction_id)": 0,
                                        "not_null(customer_id)": 1, "not_null(amount)": 1}


def test_ranges_ignore_nulls(tx, ctx):
    c = ctx()
    with pytest.raises(ValidationFailed):
        V.validate_ranges(tx, cfg(V.ValidateRanges, ranges={
            "amount": {"min": 0.01, "max": 1000000}, "customer_id": {"min": 1}}), c)
    assert c.metadata["violations"] == {"range(amount)": 2, "range(customer_id)": 0}


def test_business_rules_warn_goes_on(tx, ctx):
    c = ctx()
    out = V.validate_business_rules(tx, cfg(V.ValidateBusinessRules, onFailure="warn", rules=[
        "status IN ('pending', 'completed', 'failed')", "amount > 0"]), c)
    assert out is tx
    assert c.metadata["violations"] == {"rule[0]": 1, "rule[1]": 2}
    assert c.metadata["passed"] is False and c.metadata["rows"] == 4


def test_referential_integrity_null_keys_are_not_violations(spark, tx, ctx):
    customers = spark.createDataFrame([(10,), (11,)], "id long")
    c = ctx({"customers": customers})
    with pytest.raises(ValidationFailed, match=r"references\(customer_id\): 1 of 4 rows"):
        V.validate_referential_integrity(tx, cfg(
            V.ValidateReferentialIntegrity, foreignKey="customer_id",
            referencedDataFrame="customers", referencedColumn="id"), c)
    assert c.metadata["violations"] == {"references(customer_id)": 1}


def test_all_rules_of_a_step_read_the_data_once(spark, ctx):
    """Every source row is computed exactly once, however many rules the step has."""
    from pyspark.sql import functions as F
    reads = spark.sparkContext.accumulator(0)

    def touch(x):
        reads.add(1)
        return x

    counted = F.udf(touch, "long").asNondeterministic()
    df = spark.range(200).select(counted("id").alias("id"), (F.col("id") % 7).alias("g"))
    c = ctx()
    V.validate_business_rules(df, cfg(V.ValidateBusinessRules, onFailure="warn",
                                      rules=["id > 0", "g <> 3", "id < 150", "g + id > 2"]), c)
    assert reads.value == 200
    assert c.metadata["violations"] == {"rule[0]": 1, "rule[1]": 29, "rule[2]": 50,
                                        "rule[3]": 2}
