"""Extract and load methods on local files and Delta tables, read back exactly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest

from pipeline_defs.common.errors import CredentialError
from pipeline_defs.steps import files, jdbc
from pipeline_defs.steps.errors import StepDataError
from pipeline_defs_tests.conftest import rows


def cfg(model, **kw):
    return model.model_validate(kw)


def written_elsewhere(fmt: str, path: Path) -> list[tuple]:
    """The rows of a partitioned (year=...) output as another reader sees them: pyarrow for
    Parquet, ORC and (the live files of) Delta, Python's csv and json modules, and for Avro
    the container's magic, codec and schema (no Avro reader here)."""
    out = []
    if fmt == "delta":
        live = [json.loads(line)["add"]["path"] for f in sorted((path / "_delta_log").glob(
            "*.json")) for line in f.read_text().splitlines() if line.startswith('{"add"')]
        parts = [path / p for p in live]
    else:
        parts = sorted(p for p in path.rglob("part-*") if not p.name.endswith(".crc"))
    assert parts, f"no {fmt} files under {path}"
    for f in parts:
        year = int(next(d.split("=")[1] for d in f.relative_to(path).parts if "=" in d))
        if fmt in ("parquet", "delta"):
            table = pq.read_table(f)
        elif fmt == "orc":
            table = orc.read_table(f)
        elif fmt == "csv":
            with f.open(newline="") as fh:
                out += [(int(r["id"]), r["name"], year) for r in csv.DictReader(fh)]
            continue
        elif fmt == "json":
            out += [(r["id"], r["name"], year) for r in map(json.loads, f.read_text().split())]
            continue
        else:  # avro: an Avro object container file with the schema in its header
            head = f.read_bytes()[:2000]
            assert head[:4] == b"Obj\x01" and b'"type":"record"' in head
            continue
        out += [(r["id"], r["name"], year) for r in table.to_pylist()]
    return sorted(out)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "json", "avro", "orc", "delta"])
def test_to_file_and_from_file_round_trip(yearly, ctx, tmp_path, fmt):
    path = str(tmp_path / fmt)
    res = files.to_file(
        yearly,
        cfg(files.ToFile, path=path, format=fmt, mode="overwrite", partitionBy=["year"]),
        ctx(),
    )
    assert (res.location, res.format, res.mode) == (path, fmt, "overwrite")
    if fmt != "avro":  # what was written is the format it claims, read by other readers
        assert written_elsewhere(fmt, tmp_path / fmt) == rows(yearly)
    else:
        written_elsewhere(fmt, tmp_path / fmt)
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
    # ignore: an existing target is left as it was (another DataFrame is not written)
    files.to_file(yearly.limit(1).selectExpr("id + 100 AS id", "name", "year"),
                  cfg(files.ToFile, path=str(tmp_path / "o"), mode="ignore"), ctx())
    assert sorted(pq.read_table(tmp_path / "o").column("id").to_pylist()) == [1, 2, 3]
    files.to_file(yearly, cfg(files.ToFile, path=str(tmp_path / "o"), mode="append"), ctx())
    assert sorted(pq.read_table(tmp_path / "o").column("id").to_pylist()) == [1, 1, 2, 2, 3, 3]


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
    # the container itself, not the product's reader: record name, namespace and codec
    heads = [f.read_bytes()[:2000] for f in Path(path).glob("part-*.avro")]
    assert heads and all(h[:4] == b"Obj\x01" for h in heads)
    assert all(b'"name":"Person"' in h and b'"namespace":"com.x"' in h for h in heads)
    assert all(b"avro.codec\x0csnappy" in h for h in heads)


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
