"""Extract and load methods on local files and Delta tables, read back exactly."""

from __future__ import annotations

import pytest

from pipeline_defs.errors import CredentialError
from pipeline_defs.steps import files, jdbc
from pipeline_defs.steps.errors import StepDataError
from pipeline_defs_tests.conftest import rows


def cfg(model, **kw):
    return model.model_validate(kw)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json", "avro", "orc", "delta"])
def test_to_file_and_from_file_round_trip(yearly, ctx, tmp_path, fmt):
    path = str(tmp_path / fmt)
    res = files.to_file(
        yearly,
        cfg(files.ToFile, path=path, format=fmt, mode="overwrite", partitionBy=["year"]),
        ctx(),
    )
    assert (res.location, res.format, res.mode) == (path, fmt, "overwrite")
    schema = "id BIGINT, name STRING, year INT" if fmt in ("csv", "json") else None
    back = files.from_file(None, cfg(files.FromFile, path=path, format=fmt, schema=schema), ctx())
    assert rows(back.select("id", "name", "year")) == rows(yearly)
    assert (tmp_path / fmt / "year=2025").is_dir()


def test_csv_defaults_header_and_inference(spark, ctx, tmp_path):
    (tmp_path / "a.csv").write_text("id,price,name\n1,2.5,x\n2,3.0,y\n")
    df = files.from_file(
        None, cfg(files.FromFile, path=str(tmp_path / "a.csv"), format="csv"), ctx()
    )
    assert [(f.name, f.dataType.simpleString()) for f in df.schema.fields] == [
        ("id", "int"),
        ("price", "double"),
        ("name", "string"),
    ]
    assert rows(df) == [(1, 2.5, "x"), (2, 3.0, "y")]


def test_text_format_and_options(spark, ctx, tmp_path):
    (tmp_path / "t.txt").write_text("a;b\nc;d\n")
    df = files.from_file(
        None, cfg(files.FromFile, path=str(tmp_path / "t.txt"), format="text"), ctx()
    )
    assert rows(df) == [("a;b",), ("c;d",)]
    df = files.from_file(
        None,
        cfg(
            files.FromFile,
            path=str(tmp_path / "t.txt"),
            format="csv",
            options={"header": False, "sep": ";"},
        ),
        ctx(),
    )
    assert rows(df) == [("a", "b"), ("c", "d")]


def test_write_mode_errorifexists_is_the_default(yearly, ctx, tmp_path):
    c = cfg(files.ToFile, path=str(tmp_path / "o"))
    files.to_file(yearly, c, ctx())
    with pytest.raises(Exception, match="already exists"):
        files.to_file(yearly, c, ctx())
    files.to_file(yearly, cfg(files.ToFile, path=str(tmp_path / "o"), mode="ignore"), ctx())
    files.to_file(yearly, cfg(files.ToFile, path=str(tmp_path / "o"), mode="append"), ctx())
    assert (
        len(rows(files.from_file(None, cfg(files.FromFile, path=str(tmp_path / "o")), ctx()))) == 6
    )


def test_partition_by_a_missing_column_names_it(yearly, ctx, tmp_path):
    with pytest.raises(StepDataError, match="partitionBy names 'month'"):
        files.to_file(
            yearly, cfg(files.ToFile, path=str(tmp_path / "o"), partitionBy=["month"]), ctx()
        )


def test_avro_round_trip_with_record_name(yearly, ctx, tmp_path):
    path = str(tmp_path / "avro")
    files.to_avro(
        yearly,
        cfg(
            files.ToAvro,
            path=path,
            mode="overwrite",
            compression="snappy",
            recordName="Person",
            recordNamespace="com.x",
        ),
        ctx(),
    )
    assert rows(files.from_avro(None, cfg(files.FromAvro, path=path), ctx())) == rows(yearly)


def test_credential_path_without_vault_is_a_clear_error(yearly, ctx):
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
