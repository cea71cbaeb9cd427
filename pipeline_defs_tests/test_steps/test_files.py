"""Extract and load methods on local files and Delta tables, read back exactly."""
from __future__ import annotations

import pytest
from delta.tables import DeltaTable

from pipeline_defs.steps import delta, files, jdbc
from pipeline_defs.errors import CredentialError
from pipeline_defs.steps.errors import StepDataError
from pipeline_defs_tests.conftest import rows


def cfg(model, **kw):
    return model.model_validate(kw)


@pytest.fixture
def people(spark):
    return spark.createDataFrame([(1, "ann", 2024), (2, "bob", 2025), (3, "cid", 2025)],
                                 "id long, name string, year int")


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json", "avro", "orc", "delta"])
def test_to_file_and_from_file_round_trip(people, ctx, tmp_path, fmt):
    path = str(tmp_path / fmt)
    res = files.to_file(people, cfg(files.ToFile, path=path, format=fmt, mode="overwrite",
                                partitionBy=["year"]), ctx())
    assert (res.location, res.format, res.mode) == (path, fmt, "overwrite")
    schema = "id BIGINT, name STRING, year INT" if fmt in ("csv", "json") else None
    back = files.from_file(None, cfg(files.FromFile, path=path, format=fmt, schema=schema), ctx())
    assert rows(back.select("id", "name", "year")) == rows(people)
    assert (tmp_path / fmt / "year=2025").is_dir()


def test_csv_defaults_header_and_inference(spark, ctx, tmp_path):
    (tmp_path / "a.csv").write_text("id,price,name\n1,2.5,x\n2,3.0,y\n")
    df = files.from_file(None, cfg(files.FromFile, path=str(tmp_path / "a.csv"), format="csv"), ctx())
    assert [(f.name, f.dataType.simpleString()) for f in df.schema.fields] == [
        ("id", "int"), ("price", "double"), ("name", "string")]
    assert rows(df) == [(1, 2.5, "x"), (2, 3.0, "y")]


def test_text_format_and_options(spark, ctx, tmp_path):
    (tmp_path / "t.txt").write_text("a;b\nc;d\n")
    df = files.from_file(None, cfg(files.FromFile, path=str(tmp_path / "t.txt"), format="text"), ctx())
    assert rows(df) == [("a;b",), ("c;d",)]
    df = files.from_file(None, cfg(files.FromFile, path=str(tmp_path / "t.txt"), format="csv",
                               options={"header": False, "sep": ";"}), ctx())
    assert rows(df) == [("a", "b"), ("c", "d")]


def test_write_mode_errorifexists_is_the_default(people, ctx, tmp_path):
    c = cfg(files.ToFile, path=str(tmp_path / "o"))
    files.to_file(people, c, ctx())
    with pytest.raises(Exception, match="already exists"):
        files.to_file(people, c, ctx())
    files.to_file(people, cfg(files.ToFile, path=str(tmp_path / "o"), mode="ignore"), ctx())
    files.to_file(people, cfg(files.ToFile, path=str(tmp_path / "o"), mode="append"), ctx())
    assert len(rows(files.from_file(None, cfg(files.FromFile, path=str(tmp_path / "o")), ctx()))) == 6


def test_partition_by_a_missing_column_names_it(people, ctx, tmp_path):
    with pytest.raises(StepDataError, match="partitionBy names 'month'"):
        files.to_file(people, cfg(files.ToFile, path=str(tmp_path / "o"), partitionBy=["month"]), ctx())


def test_avro_round_trip_with_record_name(people, ctx, tmp_path):
    path = str(tmp_path / "avro")
    files.to_avro(people, cfg(files.ToAvro, path=path, mode="overwrite", compression="snappy",
                          recordName="Person", recordNamespace="com.x"), ctx())
    assert rows(files.from_avro(None, cfg(files.FromAvro, path=path), ctx())) == rows(people)


def test_delta_write_modes_time_travel_and_metadata(spark, people, ctx, tmp_path):
    path = str(tmp_path / "delta")
    r0 = delta.to_delta_lake(people, cfg(delta.ToDeltaLake, path=path, partitionBy=["year"]), ctx())
    assert r0.metadata["delta_version"] == 0 and r0.metadata["delta_numOutputRows"] == 3
    more = spark.createDataFrame([(4, "dan", 2025)], "id long, name string, year int")
    r1 = delta.to_delta_lake(more, cfg(delta.ToDeltaLake, path=path, mode="append"), ctx())
    assert r1.metadata["delta_version"] == 1
    now = delta.from_delta_lake(None, cfg(delta.FromDeltaLake, path=path), ctx())
    assert len(rows(now)) == 4
    v0 = delta.from_delta_lake(None, cfg(delta.FromDeltaLake, path=path, version=0), ctx())
    assert rows(v0) == rows(people)
    # replaceWhere: replace only 2025
    new_2025 = spark.createDataFrame([(9, "zed", 2025)], "id long, name string, year int")
    delta.to_delta_lake(new_2025, cfg(delta.ToDeltaLake, path=path, mode="overwrite",
                                  replaceWhere="year = 2025"), ctx())
    assert rows(delta.from_delta_lake(None, cfg(delta.FromDeltaLake, path=path), ctx())) == [
        (1, "ann", 2024), (9, "zed", 2025)]
    # mergeSchema adds a column; overwriteSchema replaces the schema
    wider = spark.createDataFrame([(5, "eve", 2026, "x")], "id long, name string, year int, "
                                                          "tag string")
    with pytest.raises(Exception, match="(?i)schema"):
        delta.to_delta_lake(wider, cfg(delta.ToDeltaLake, path=path, mode="append"), ctx())
    delta.to_delta_lake(wider, cfg(delta.ToDeltaLake, path=path, mode="append", mergeSchema=True),
                    ctx())
    assert DeltaTable.forPath(spark, path).toDF().columns == ["id", "name", "year", "tag"]
    other = spark.createDataFrame([("only",)], "c string")
    delta.to_delta_lake(other, cfg(delta.ToDeltaLake, path=path, mode="overwrite",
                               overwriteSchema=True), ctx())
    assert rows(DeltaTable.forPath(spark, path).toDF()) == [("only",)]


def test_delta_timestamp_time_travel(spark, people, ctx, tmp_path):
    path = str(tmp_path / "tt")
    delta.to_delta_lake(people, cfg(delta.ToDeltaLake, path=path), ctx())
    ts = DeltaTable.forPath(spark, path).history(1).first()["timestamp"]
    delta.to_delta_lake(people.limit(1), cfg(delta.ToDeltaLake, path=path, mode="overwrite"), ctx())
    back = delta.from_delta_lake(None, cfg(delta.FromDeltaLake, path=path,
                                       timestamp=ts.strftime("%Y-%m-%d %H:%M:%S.%f")), ctx())
    assert rows(back) == rows(people)


def test_delta_merge_upserts_and_creates_on_first_run(spark, ctx, tmp_path):
    path = str(tmp_path / "m")
    first = spark.createDataFrame([(1, "a", 1), (2, "b", 1)], "k long, v string, ts int")
    c = cfg(delta.ToDeltaLake, path=path, merge={"keyColumns": ["k"],
                                             "matchedCondition": "s.ts > t.ts"})
    r = delta.to_delta_lake(first, c, ctx())
    assert r.mode == "overwrite" and r.metadata["delta_version"] == 0
    second = spark.createDataFrame([(2, "B", 2), (3, "c", 1), (1, "stale", 0)],
                                   "k long, v string, ts int")
    r = delta.to_delta_lake(second, c, ctx())
    assert r.mode == "merge" and r.metadata["delta_operation"] == "MERGE"
    assert r.metadata["delta_numTargetRowsInserted"] == 1
    assert r.metadata["delta_numTargetRowsUpdated"] == 1
    assert rows(DeltaTable.forPath(spark, path).toDF()) == [(1, "a", 1), (2, "B", 2),
                                                            (3, "c", 1)]


def test_delta_merge_delete_and_duplicate_keys(spark, ctx, tmp_path):
    path = str(tmp_path / "md")
    base = spark.createDataFrame([(1, "a"), (2, "b")], "k long, v string")
    delta.to_delta_lake(base, cfg(delta.ToDeltaLake, path=path), ctx())
    gone = spark.createDataFrame([(1, "x")], "k long, v string")
    delta.to_delta_lake(gone, cfg(delta.ToDeltaLake, path=path, merge={
        "keyColumns": ["k"], "whenMatched": "delete", "whenNotMatched": "ignore"}), ctx())
    assert rows(DeltaTable.forPath(spark, path).toDF()) == [(2, "b")]
    dup = spark.createDataFrame([(2, "x"), (2, "y")], "k long, v string")
    with pytest.raises(StepDataError, match="several input rows share a merge key \\(k\\)"):
        delta.to_delta_lake(dup, cfg(delta.ToDeltaLake, path=path, merge={"keyColumns": ["k"]}), ctx())


def test_delta_by_table_name(spark, people, ctx):
    delta.to_delta_lake(people, cfg(delta.ToDeltaLake, table="people_t", mode="overwrite"), ctx())
    back = delta.from_delta_lake(None, cfg(delta.FromDeltaLake, table="people_t"), ctx())
    assert rows(back) == rows(people)
    spark.sql("DROP TABLE people_t")


def test_credential_path_without_vault_is_a_clear_error(people, ctx):
    c = cfg(jdbc.FromPostgres, table="t", credentialPath="secret/data/pg")
    with pytest.raises(CredentialError, match="credentialPath 'secret/data/pg' needs Vault"):
        jdbc.from_postgres(None, c, ctx())


def test_missing_credential_keys_are_named_never_shown(ctx):
    secret = {"host": "db", "username": "u", "password": "s3cr3t-value"}
    c = cfg(jdbc.FromPostgres, table="t", credentialPath="secret/data/pg")
    with pytest.raises(CredentialError) as e:
        jdbc.from_postgres(None, c, ctx(read_secret=lambda p: secret))
    assert "Vault secret 'secret/data/pg' lacks database" in str(e.value)
    assert "s3cr3t-value" not in str(e.value)
