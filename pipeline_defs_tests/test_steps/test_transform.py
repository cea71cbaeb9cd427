"""Every transform method on tiny DataFrames, compared row by row."""

from __future__ import annotations

import datetime as dt

import pytest

from pipeline_defs.steps import transform
from pipeline_defs.steps.errors import StepDataError
from pipeline_defs_tests.conftest import rows


def cfg(model, **kw):
    return model.model_validate(kw)


def test_filter_rows(people, ctx):
    out = transform.filter_rows(
        people, cfg(transform.FilterRows, condition="active = true AND age >= 18"), ctx()
    )
    assert rows(out) == [(1, "ann", 34, "DE", True)]


def test_enrich_data_in_order_later_columns_use_earlier(people, ctx):
    out = transform.enrich_data(
        people,
        cfg(
            transform.EnrichData,
            columns={"age2": "age * 2", "age4": "age2 * 2", "name": "upper(name)"},
        ),
        ctx(),
    )
    assert out.columns == ["id", "name", "age", "country", "active", "age2", "age4"]
    assert [(r.id, r.name, r.age4) for r in out.orderBy("id").collect()] == [
        (1, "ANN", 136),
        (2, "BOB", 68),
        (3, "CID", 208),
        (4, "DAN", None),
    ]


def test_select_drop_rename(people, ctx):
    sel = transform.select_columns(
        people, cfg(transform.SelectColumns, columns=["id", "age + 1 AS next_age"]), ctx()
    )
    assert rows(sel) == [(1, 35), (2, 18), (3, 53), (4, None)]
    dropped = transform.drop_columns(
        people, cfg(transform.DropColumns, columns=["age", "active"]), ctx()
    )
    assert dropped.columns == ["id", "name", "country"]
    renamed = transform.rename_columns(
        people, cfg(transform.RenameColumns, columns={"name": "first_name"}), ctx()
    )
    assert renamed.columns == ["id", "first_name", "age", "country", "active"]


def test_rename_or_drop_of_a_missing_column_says_which(people, ctx):
    with pytest.raises(
        StepDataError,
        match="columns names 'nmae', which the input does not "
        "have. Columns: id, name, age, country, active.",
    ):
        transform.rename_columns(people, cfg(transform.RenameColumns, columns={"nmae": "x"}), ctx())


def test_repartition_family(people, ctx):
    assert (
        transform.repartition(
            people, cfg(transform.Repartition, numPartitions=3), ctx()
        ).rdd.getNumPartitions()
        == 3
    )
    assert (
        transform.repartition_by_columns(
            people, cfg(transform.RepartitionByColumns, columns=["country"], numPartitions=4), ctx()
        ).rdd.getNumPartitions()
        == 4
    )
    assert (
        transform.coalesce(
            people.repartition(4), cfg(transform.Coalesce, numPartitions=1), ctx()
        ).rdd.getNumPartitions()
        == 1
    )
    out = transform.repartition(
        people, cfg(transform.Repartition, numPartitions=2, columns=["country"]), ctx()
    )
    assert rows(out) == rows(people)


def test_cache_persists_with_level(people, ctx):
    out = transform.cache(people, cfg(transform.Cache, storageLevel="DISK_ONLY"), ctx())
    assert out.storageLevel.useDisk and not out.storageLevel.useMemory
    out.unpersist()


def test_deduplicate_keeps_latest(spark, ctx):
    df = spark.createDataFrame(
        [(1, "old", 1), (1, "new", 2), (2, "only", 1), (2, "only", 1)], "k long, v string, ts int"
    )
    latest = transform.deduplicate(
        df, cfg(transform.Deduplicate, columns=["k"], orderBy=["ts DESC"]), ctx()
    )
    assert rows(latest) == [(1, "new", 2), (2, "only", 1)]
    assert rows(transform.deduplicate(df, cfg(transform.Deduplicate), ctx())) == [
        (1, "new", 2),
        (1, "old", 1),
        (2, "only", 1),
    ]


def test_sql_over_registered_views_and_this(people, orders, ctx):
    c = cfg(
        transform.Sql,
        query="SELECT u.name, sum(o.amount) AS total FROM users u JOIN orders o "
        "ON u.id = o.user_id GROUP BY u.name",
    )
    assert [n for _, n in c.named_inputs(["users", "orders", "other"])] == ["users", "orders"]
    out = transform.sql(None, c, ctx({"users": people, "orders": orders}))
    assert rows(out) == [("ann", 25.5), ("cid", 7.0)]
    this = transform.sql(
        people, cfg(transform.Sql, query="SELECT count(*) AS n FROM __THIS__ WHERE active"), ctx()
    )
    assert rows(this) == [(3,)]


def test_filter_on_dates(spark, ctx):
    df = spark.createDataFrame([(dt.date(2024, 1, 1),), (dt.date(2025, 6, 1),)], "d date")
    out = transform.filter_rows(
        df, cfg(transform.FilterRows, condition="d >= DATE'2025-01-01'"), ctx()
    )
    assert rows(out) == [(dt.date(2025, 6, 1),)]


