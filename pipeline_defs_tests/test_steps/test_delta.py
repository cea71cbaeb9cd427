"""fromDeltaLake / toDeltaLake on local tables: modes, time travel, merge, metadata."""

from __future__ import annotations

import pytest
from delta.tables import DeltaTable

from pipeline_defs.steps import delta
from pipeline_defs.steps.errors import StepDataError
from pipeline_defs_tests.conftest import rows


def cfg(model, **kw):
    return model.model_validate(kw)


def test_delta_write_modes_time_travel_and_metadata(spark, yearly, ctx, tmp_path):
    path = str(tmp_path / "delta")
    r0 = delta.to_delta_lake(yearly, cfg(delta.ToDeltaLake, path=path, partitionBy=["year"]), ctx())
    assert r0.metadata["delta_version"] == 0 and r0.metadata["delta_numOutputRows"] == 3
    more = spark.createDataFrame([(4, "dan", 2025)], "id long, name string, year int")
    r1 = delta.to_delta_lake(more, cfg(delta.ToDeltaLake, path=path, mode="append"), ctx())
    assert r1.metadata["delta_version"] == 1
    now = delta.from_delta_lake(None, cfg(delta.FromDeltaLake, path=path), ctx())
    assert len(rows(now)) == 4
    v0 = delta.from_delta_lake(None, cfg(delta.FromDeltaLake, path=path, version=0), ctx())
    assert rows(v0) == rows(yearly)
    # replaceWhere: replace only 2025
    new_2025 = spark.createDataFrame([(9, "zed", 2025)], "id long, name string, year int")
    delta.to_delta_lake(
        new_2025,
        cfg(delta.ToDeltaLake, path=path, mode="overwrite", replaceWhere="year = 2025"),
        ctx(),
    )
    assert rows(delta.from_delta_lake(None, cfg(delta.FromDeltaLake, path=path), ctx())) == [
        (1, "ann", 2024),
        (9, "zed", 2025),
    ]
    # mergeSchema adds a column; overwriteSchema replaces the schema
    wider = spark.createDataFrame(
        [(5, "eve", 2026, "x")], "id long, name string, year int, tag string"
    )
    with pytest.raises(Exception, match="(?i)schema"):
        delta.to_delta_lake(wider, cfg(delta.ToDeltaLake, path=path, mode="append"), ctx())
    delta.to_delta_lake(
        wider, cfg(delta.ToDeltaLake, path=path, mode="append", mergeSchema=True), ctx()
    )
    assert DeltaTable.forPath(spark, path).toDF().columns == ["id", "name", "year", "tag"]
    other = spark.createDataFrame([("only",)], "c string")
    delta.to_delta_lake(
        other, cfg(delta.ToDeltaLake, path=path, mode="overwrite", overwriteSchema=True), ctx()
    )
    assert rows(DeltaTable.forPath(spark, path).toDF()) == [("only",)]


def test_delta_timestamp_time_travel(spark, yearly, ctx, tmp_path):
    path = str(tmp_path / "tt")
    delta.to_delta_lake(yearly, cfg(delta.ToDeltaLake, path=path), ctx())
    ts = DeltaTable.forPath(spark, path).history(1).first()["timestamp"]
    delta.to_delta_lake(yearly.limit(1), cfg(delta.ToDeltaLake, path=path, mode="overwrite"), ctx())
    back = delta.from_delta_lake(
        None,
        cfg(delta.FromDeltaLake, path=path, timestamp=ts.strftime("%Y-%m-%d %H:%M:%S.%f")),
        ctx(),
    )
    assert rows(back) == rows(yearly)


def test_delta_merge_upserts_and_creates_on_first_run(spark, ctx, tmp_path):
    path = str(tmp_path / "m")
    first = spark.createDataFrame([(1, "a", 1), (2, "b", 1)], "k long, v string, ts int")
    c = cfg(
        delta.ToDeltaLake, path=path, merge={"keyColumns": ["k"], "matchedCondition": "s.ts > t.ts"}
    )
    r = delta.to_delta_lake(first, c, ctx())
    assert r.mode == "overwrite" and r.metadata["delta_version"] == 0
    second = spark.createDataFrame(
        [(2, "B", 2), (3, "c", 1), (1, "stale", 0)], "k long, v string, ts int"
    )
    r = delta.to_delta_lake(second, c, ctx())
    assert r.mode == "merge" and r.metadata["delta_operation"] == "MERGE"
    assert r.metadata["delta_numTargetRowsInserted"] == 1
    assert r.metadata["delta_numTargetRowsUpdated"] == 1
    assert rows(DeltaTable.forPath(spark, path).toDF()) == [(1, "a", 1), (2, "B", 2), (3, "c", 1)]


def test_delta_merge_delete_and_duplicate_keys(spark, ctx, tmp_path):
    path = str(tmp_path / "md")
    base = spark.createDataFrame([(1, "a"), (2, "b")], "k long, v string")
    delta.to_delta_lake(base, cfg(delta.ToDeltaLake, path=path), ctx())
    gone = spark.createDataFrame([(1, "x")], "k long, v string")
    delta.to_delta_lake(
        gone,
        cfg(
            delta.ToDeltaLake,
            path=path,
            merge={"keyColumns": ["k"], "whenMatched": "delete", "whenNotMatched": "ignore"},
        ),
        ctx(),
    )
    assert rows(DeltaTable.forPath(spark, path).toDF()) == [(2, "b")]
    dup = spark.createDataFrame([(2, "x"), (2, "y")], "k long, v string")
    with pytest.raises(StepDataError, match="several input rows share a merge key \\(k\\)"):
        delta.to_delta_lake(
            dup, cfg(delta.ToDeltaLake, path=path, merge={"keyColumns": ["k"]}), ctx()
        )


def test_delta_by_table_name(spark, yearly, ctx):
    delta.to_delta_lake(yearly, cfg(delta.ToDeltaLake, table="people_t", mode="overwrite"), ctx())
    back = delta.from_delta_lake(None, cfg(delta.FromDeltaLake, table="people_t"), ctx())
    assert rows(back) == rows(yearly)
    spark.sql("DROP TABLE people_t")




def test_the_load_reads_its_commit_from_the_log_without_a_spark_job(spark, ctx, tmp_path):
    """The load's metadata comes from the commit file (no `history()` job): same values as
    Delta's own history, for a write, an append and a merge, and no Spark job runs for it."""
    path = str(tmp_path / "lc")
    df = spark.createDataFrame([(1, "a"), (2, "b")], "k long, v string")
    delta.to_delta_lake(df, cfg(delta.ToDeltaLake, path=path), ctx())
    delta.to_delta_lake(df.limit(1), cfg(delta.ToDeltaLake, path=path, mode="append"), ctx())
    table = DeltaTable.forPath(spark, path)
    tracker = spark.sparkContext.statusTracker()
    group = "last-commit-test"
    spark.sparkContext.setJobGroup(group, "last_commit")
    try:
        got = delta.last_commit(spark, table)
    finally:
        spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)
    assert tracker.getJobIdsForGroup(group) == []
    want = table.history(1).select("version", "operation", "operationMetrics").first()
    assert got == want.asDict() and got["version"] == 1 and got["operation"] == "WRITE"
    assert got["operationMetrics"]["numOutputRows"] == "1"
    c = cfg(delta.ToDeltaLake, path=path, merge={"keyColumns": ["k"]})
    r = delta.to_delta_lake(spark.createDataFrame([(2, "B"), (3, "c")], "k long, v string"),
                            c, ctx())
    assert r.metadata["delta_version"] == 2 and r.metadata["delta_operation"] == "MERGE"
    assert (r.metadata["delta_numTargetRowsUpdated"], r.metadata["delta_numTargetRowsInserted"]
            ) == (1, 1)


def test_auto_optimize_writes_fewer_files_and_compacts_small_ones(spark, ctx, tmp_path):
    """autoOptimize (the improvement plan): optimized writes bin the data into few files, and
    auto compaction rewrites a table's small files (>= 50 of them) after the commit; both
    show in the load's metadata. The session's settings are back as they were after it."""
    path = str(tmp_path / "ao")
    df = spark.range(10_000).repartition(60)
    plain = delta.to_delta_lake(df, cfg(delta.ToDeltaLake, path=path, mode="overwrite"), ctx())
    assert plain.metadata["delta_numFiles"] == 60
    assert "delta_compacted_files" not in plain.metadata
    first = delta.to_delta_lake(df, cfg(delta.ToDeltaLake, path=path, mode="append",
                                        autoOptimize=True), ctx())
    assert first.metadata["delta_operation"] == "WRITE" and first.rows == 10_000
    assert first.metadata["delta_numFiles"] == 1  # 60 partitions, one optimized file
    assert first.metadata["delta_compacted_files"] == 61  # the 60 small ones and the new one
    assert first.metadata["delta_compacted_into"] == 1
    assert first.metadata["delta_auto_compaction_version"] == first.metadata["delta_version"] + 1
    assert len(spark.read.format("delta").load(path).inputFiles()) == 1
    again = delta.to_delta_lake(df, cfg(delta.ToDeltaLake, path=path, mode="append",
                                        autoOptimize=True), ctx())
    assert again.metadata["delta_numFiles"] == 1 and again.metadata["delta_compacted_files"] == 0
    assert spark.read.format("delta").load(path).count() == 30_000
    assert spark.conf.get("spark.databricks.delta.optimizeWrite.enabled", None) is None
    assert spark.conf.get("spark.databricks.delta.autoCompact.enabled", None) is None


def test_delta_merge_when_matched_ignore_only_inserts_new_keys(spark, ctx, tmp_path):
    path = str(tmp_path / "mi")
    delta.to_delta_lake(spark.createDataFrame([(1, "a"), (2, "b")], "k long, v string"),
                        cfg(delta.ToDeltaLake, path=path), ctx())
    r = delta.to_delta_lake(
        spark.createDataFrame([(2, "CHANGED"), (3, "c")], "k long, v string"),
        cfg(delta.ToDeltaLake, path=path, merge={"keyColumns": ["k"], "whenMatched": "ignore"}),
        ctx())
    assert r.metadata["delta_numTargetRowsInserted"] == 1
    assert r.metadata["delta_numTargetRowsUpdated"] == 0
    assert rows(DeltaTable.forPath(spark, path).toDF()) == [(1, "a"), (2, "b"), (3, "c")]


def test_delta_merge_into_a_catalog_table(spark, ctx):
    c = cfg(delta.ToDeltaLake, table="merged_t", merge={"keyColumns": ["k"]})
    try:
        r = delta.to_delta_lake(spark.createDataFrame([(1, "a")], "k long, v string"), c, ctx())
        assert r.mode == "overwrite"  # created by the first run
        r = delta.to_delta_lake(spark.createDataFrame([(1, "A"), (2, "b")], "k long, v string"),
                                c, ctx())
        assert r.mode == "merge" and r.metadata["delta_operation"] == "MERGE"
        assert rows(spark.table("merged_t")) == [(1, "A"), (2, "b")]
        assert spark.catalog.tableExists("merged_t")
    finally:
        spark.sql("DROP TABLE IF EXISTS merged_t")


def test_delta_merge_with_merge_schema_adds_the_new_column(spark, ctx, tmp_path):
    path = str(tmp_path / "ms")
    delta.to_delta_lake(spark.createDataFrame([(1, "a"), (2, "b")], "k long, v string"),
                        cfg(delta.ToDeltaLake, path=path), ctx())
    wider = spark.createDataFrame([(2, "B", 20), (3, "c", 30)], "k long, v string, extra int")
    merge = {"keyColumns": ["k"]}
    # without mergeSchema the table's schema wins: the new column is not added
    delta.to_delta_lake(wider, cfg(delta.ToDeltaLake, path=path, merge=merge), ctx())
    assert DeltaTable.forPath(spark, path).toDF().columns == ["k", "v"]
    assert rows(DeltaTable.forPath(spark, path).toDF()) == [(1, "a"), (2, "B"), (3, "c")]
    wider = spark.createDataFrame([(3, "C", 33), (4, "d", 40)], "k long, v string, extra int")
    delta.to_delta_lake(wider, cfg(delta.ToDeltaLake, path=path, merge=merge, mergeSchema=True),
                        ctx())
    table = DeltaTable.forPath(spark, path).toDF()
    assert table.columns == ["k", "v", "extra"]
    assert rows(table) == [(1, "a", None), (2, "B", None), (3, "C", 33), (4, "d", 40)]
