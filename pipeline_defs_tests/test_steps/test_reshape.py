"""Joins, unions, aggregations, pivot/unpivot and Avro schemas on tiny DataFrames, exact rows."""

from __future__ import annotations

import json

import pytest

from pipeline_defs.steps import reshape, transform
from pipeline_defs.steps.errors import StepDataError
from pipeline_defs_tests.conftest import rows


def cfg(model, **kw):
    return model.model_validate(kw)


@pytest.mark.parametrize(
    "how,expected",
    [
        ("inner", [(1, "ann", 10, 20.0), (1, "ann", 11, 5.5), (3, "cid", 12, 7.0)]),
        (
            "left",
            [
                (1, "ann", 10, 20.0),
                (1, "ann", 11, 5.5),
                (2, "bob", None, None),
                (3, "cid", 12, 7.0),
                (4, "dan", None, None),
            ],
        ),
        (
            "right",
            [(1, "ann", 10, 20.0), (1, "ann", 11, 5.5), (3, "cid", 12, 7.0), (9, None, 13, 1.0)],
        ),
        (
            "full",
            [
                (1, "ann", 10, 20.0),
                (1, "ann", 11, 5.5),
                (2, "bob", None, None),
                (3, "cid", 12, 7.0),
                (4, "dan", None, None),
                (9, None, 13, 1.0),
            ],
        ),
    ],
)
def test_join_with_conditions_drops_duplicate_key(people, orders, ctx, how, expected):
    users = people.select("id", "name")
    ords = orders.withColumnRenamed("user_id", "id").select("id", "order_id", "amount")
    c = cfg(
        reshape.JoinDataFrames,
        inputDataFrames=["users", "orders"],
        joinConditions=["users.id = orders.id"],
        joinType=how,
    )
    out = reshape.join_data_frames(None, c, ctx({"users": users, "orders": ords}))
    assert out.columns == ["id", "name", "order_id", "amount"]
    assert rows(out) == expected


def test_join_with_differently_named_keys_and_semi_anti(people, orders, ctx):
    frames = {"users": people.select("id", "name"), "orders": orders}
    c = cfg(
        reshape.JoinDataFrames,
        inputDataFrames=["users", "orders"],
        joinConditions=["users.id = orders.user_id AND orders.amount > 6"],
    )
    out = reshape.join_data_frames(None, c, ctx(frames))
    assert rows(out.select("id", "order_id")) == [(1, 10), (3, 12)]
    for how, ids in (("semi", [1, 3]), ("anti", [2, 4])):
        c = cfg(
            reshape.JoinDataFrames,
            inputDataFrames=["users", "orders"],
            joinConditions=["users.id = orders.user_id"],
            joinType=how,
        )
        out = reshape.join_data_frames(None, c, ctx(frames))
        assert out.columns == ["id", "name"] and [r.id for r in out.orderBy("id").collect()] == ids


def test_join_column_form_and_three_way_join(spark, ctx):
    a = spark.createDataFrame([(1, "x"), (2, "y")], "k long, a string")
    b = spark.createDataFrame([(1, "p"), (2, "q")], "k long, b string")
    c = spark.createDataFrame([(1, True)], "k long, c boolean")
    out = reshape.join_data_frames(
        None,
        cfg(
            reshape.JoinDataFrames, inputDataFrames=["a", "b", "c"], joinColumn="k", joinType="left"
        ),
        ctx({"a": a, "b": b, "c": c}),
    )
    assert out.columns == ["k", "a", "b", "c"]
    assert rows(out) == [(1, "x", "p", True), (2, "y", "q", None)]


def test_union_by_name_distinct_and_missing_columns(spark, ctx):
    cur = spark.createDataFrame([(1, "a"), (2, "b")], "id long, v string")
    other = spark.createDataFrame([("b", 2), ("c", 3)], "v string, id long")
    out = reshape.union_data_frames(
        cur, cfg(reshape.UnionDataFrames, inputDataFrames=["o"]), ctx({"o": other})
    )
    assert rows(out) == [(1, "a"), (2, "b"), (2, "b"), (3, "c")]
    out = reshape.union_data_frames(
        cur, cfg(reshape.UnionDataFrames, inputDataFrames=["o"], distinct=True), ctx({"o": other})
    )
    assert rows(out) == [(1, "a"), (2, "b"), (3, "c")]
    narrow = spark.createDataFrame([(5,)], "id long")
    out = reshape.union_data_frames(
        cur,
        cfg(reshape.UnionDataFrames, inputDataFrames=["n"], allowMissingColumns=True),
        ctx({"n": narrow}),
    )
    assert rows(out) == [(1, "a"), (2, "b"), (5, None)]


def test_aggregate_both_forms(orders, ctx):
    short = reshape.aggregate_data(
        orders,
        cfg(
            reshape.AggregateData,
            groupBy=["category"],
            aggregations={"amount": "sum", "order_id": "count", "user_id": "countDistinct"},
        ),
        ctx(),
    )
    assert short.columns == ["category", "amount_sum", "order_id_count", "user_id_countDistinct"]
    assert rows(short) == [("books", 27.0, 2, 2), ("toys", 6.5, 2, 2)]
    long = reshape.aggregate_data(
        orders,
        cfg(
            reshape.AggregateData,
            groupBy=["category"],
            aggregations={"n": "count(*)", "big": "sum(CASE WHEN amount > 6 THEN 1 ELSE 0 END)"},
        ),
        ctx(),
    )
    assert rows(long) == [("books", 2, 2), ("toys", 2, 0)]


def test_pivot_sum_with_and_without_values_and_count(orders, ctx):
    for values in (None, ["books", "toys"]):
        out = reshape.reshape_data(
            orders,
            cfg(
                reshape.ReshapeData,
                operation="pivot",
                pivotColumn="category",
                pivotValues=values,
                groupByColumns=["user_id"],
                aggregateColumn="amount",
            ),
            ctx(),
        )
        assert out.columns == ["user_id", "books", "toys"]
        assert rows(out) == [(1, 20.0, 5.5), (3, 7.0, None), (9, None, 1.0)]
    counted = reshape.reshape_data(
        orders,
        cfg(
            reshape.ReshapeData,
            operation="pivot",
            pivotColumn="category",
            groupByColumns=["user_id"],
        ),
        ctx(),
    )
    assert rows(counted) == [(1, 1, 1), (3, 1, None), (9, None, 1)]


def test_unpivot(spark, ctx):
    wide = spark.createDataFrame([(1, 2.0, 3.0)], "id long, q1 double, q2 double")
    out = reshape.reshape_data(
        wide,
        cfg(
            reshape.ReshapeData,
            operation="unpivot",
            idCols=["id"],
            variableColName="quarter",
            valueColName="sales",
        ),
        ctx(),
    )
    assert out.columns == ["id", "quarter", "sales"]
    assert rows(out) == [(1, "q1", 2.0), (1, "q2", 3.0)]


def test_to_avro_schema_reports_schema(people, ctx):
    c = ctx()
    out = reshape.to_avro_schema(
        people, cfg(reshape.ToAvroSchema, name="Person", namespace="com.x"), c
    )
    assert out is people
    schema = c.metadata["avro_schema"]
    assert schema["name"] == "Person" and schema["namespace"] == "com.x"
    assert [f["name"] for f in schema["fields"]] == people.columns


def test_evolve_avro_schema(spark, ctx):
    df = spark.createDataFrame(
        [(1, "click", 2), (2, "buy", 3)], "id int, event_type string, extra int"
    )
    target = {
        "type": "record",
        "name": "E",
        "fields": [
            {"name": "id", "type": "long"},
            {"name": "event_type", "type": "string"},
            {"name": "new_field", "type": ["null", "string"], "default": None},
            {"name": "score", "type": "double", "default": 1.5},
        ],
    }
    c = ctx()
    out = reshape.evolve_avro_schema(
        df, cfg(reshape.EvolveAvroSchema, targetSchema=json.dumps(target)), c
    )
    assert [(f.name, f.dataType.simpleString()) for f in out.schema.fields] == [
        ("id", "bigint"),
        ("event_type", "string"),
        ("new_field", "string"),
        ("score", "double"),
    ]
    assert rows(out) == [(1, "click", None, 1.5), (2, "buy", None, 1.5)]
    assert c.metadata == {
        "added_columns": ["new_field", "score"],
        "cast_columns": ["id"],
        "dropped_columns": ["extra"],
    }
    target["fields"].append({"name": "required", "type": "long"})
    with pytest.raises(
        StepDataError, match="field 'required' is missing from the data and has no default"
    ):
        reshape.evolve_avro_schema(df, cfg(reshape.EvolveAvroSchema, targetSchema=target), ctx())


def test_pivot_keeps_columns_that_are_constant_by_construction(spark, ctx):
    df = spark.createDataFrame(
        [(1, "a", 2.0, 7), (1, "b", 3.0, 8), (2, "a", 4.0, 9)],
        "c int, cat string, amt double, other int",
    )
    df = transform.enrich_data(
        df,
        transform.EnrichData.model_validate(
            {"columns": {"stamp": "current_date()", "src": "'crm'", "twice": "amt * 2"}}
        ),
        ctx(),
    )
    c = ctx()
    out = reshape.reshape_data(
        df,
        reshape.ReshapeData.model_validate(
            {
                "operation": "pivot",
                "pivotColumn": "cat",
                "groupByColumns": ["c"],
                "aggregateColumn": "amt",
            }
        ),
        c,
    )
    assert c.metadata["kept_constant_columns"] == ["stamp", "src"]
    assert out.columns == ["c", "stamp", "src", "a", "b"]
    assert sorted((r.c, r.src, r.a, r.b) for r in out.collect()) == [
        (1, "crm", 2.0, 3.0),
        (2, "crm", 4.0, None),
    ]


def test_aggregate_by_time_window(spark, ctx):
    df = spark.createDataFrame(
        [
            ("a", "2025-01-01 10:00:10", 1),
            ("a", "2025-01-01 10:00:50", 2),
            ("a", "2025-01-01 10:01:05", 4),
            ("b", "2025-01-01 10:00:30", 8),
        ],
        "k string, ts string, v int",
    ).selectExpr("k", "CAST(ts AS timestamp) AS ts", "v")
    out = reshape.aggregate_data(
        df,
        reshape.AggregateData.model_validate(
            {
                "groupBy": ["k"],
                "aggregations": {"total": "sum(v)"},
                "window": {"column": "ts", "duration": "1 minute"},
                "watermark": {"column": "ts", "delay": "5 minutes"},
            }
        ),
        ctx(),
    )
    assert out.columns == ["window_start", "window_end", "k", "total"]
    assert sorted((str(r.window_start)[11:16], r.k, r.total) for r in out.collect()) == [
        ("10:00", "a", 3),
        ("10:00", "b", 8),
        ("10:01", "a", 4),
    ]


def test_sum_and_avg_of_money_stay_decimal(spark, ctx):
    """Money in DECIMAL stays DECIMAL through aggregateData, in both forms: exact sums, no
    float noise such as 1619.0500000000002 (issue 9.7)."""
    from decimal import Decimal

    df = spark.createDataFrame(
        [
            ("a", Decimal("0.10")),
            ("a", Decimal("0.20")),
            ("a", Decimal("1618.75")),
            ("b", Decimal("3.33")),
        ],
        "k string, amount decimal(10,2)",
    )
    out = reshape.aggregate_data(
        df,
        reshape.AggregateData.model_validate(
            {
                "groupBy": ["k"],
                "aggregations": {
                    "amount": "sum",
                    "avg_amount": "avg(amount)",
                    "total": "sum(amount)",
                },
            }
        ),
        ctx(),
    )
    types = dict(out.dtypes)
    assert types["amount_sum"] == "decimal(20,2)" and types["total"] == "decimal(20,2)"
    assert types["avg_amount"] == "decimal(14,6)"
    got = {r.k: (r.amount_sum, r.total, r.avg_amount) for r in out.collect()}
    assert got == {
        "a": (Decimal("1619.05"), Decimal("1619.05"), Decimal("539.683333")),
        "b": (Decimal("3.33"), Decimal("3.33"), Decimal("3.330000")),
    }
