"""CSV is RFC 4180 by default in every CSV method (issue 9.5): a quote inside a quoted field
is doubled, fields may hold commas, line breaks and non-ASCII text. Files written by Python's
`csv` module (as PostgreSQL COPY, pandas, Excel and DuckDB write them) are read exactly, and
what the product writes is read exactly by Python's `csv` module: locally and on S3 (moto)."""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path

import pytest

from pipeline_defs.steps import files

ROWS = [
    (1, 'She said "hi", then left', "plain"),
    (2, "a, b, and c", 'ends with a quote"'),
    (3, "two\nlines", "Zürich — 東京 — naïve café"),
    (4, '""', ""),  # a value of two quotes; an empty string
    (5, 'back\\slash \\"escaped\\"', "tab\there"),
]
SCHEMA = "id BIGINT, text STRING, other STRING"


def cfg(model, **kw):
    return model.model_validate(kw)


def rfc4180(rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")  # Python's default dialect: RFC 4180
    w.writerow(["id", "text", "other"])
    w.writerows(rows)
    return buf.getvalue()


def read_back(texts: list[str]) -> list[tuple]:
    out = []
    for text in texts:
        r = csv.reader(io.StringIO(text, newline=""))
        assert next(r) == ["id", "text", "other"]
        out += [(int(a), b, c) for a, b, c in r]
    return sorted(out)


def spark_rows(df) -> list[tuple]:
    # Spark reads an empty quoted field as "" and an unquoted empty field as null; Python's
    # csv module writes "" for both, so compare with nulls as empty strings
    return sorted((r.id, r.text or "", r.other or "") for r in df.collect())


@pytest.mark.parametrize("schema", [SCHEMA, None], ids=["schema", "inferred"])
def test_files_written_by_python_csv_are_read_exactly(ctx, tmp_path, schema):
    f = tmp_path / "in.csv"
    f.write_text(rfc4180(ROWS), encoding="utf-8")
    kw = {"schema": schema} if schema else {}
    df = files.from_file(None, cfg(files.FromFile, path=str(f), format="csv", **kw), ctx())
    assert df.columns == ["id", "text", "other"]
    assert spark_rows(df) == sorted(ROWS)


def test_what_to_file_writes_python_csv_reads_exactly(ctx, spark, tmp_path):
    out = tmp_path / "out"
    df = spark.createDataFrame(ROWS, SCHEMA)
    files.to_file(df, cfg(files.ToFile, path=str(out), format="csv", mode="overwrite"), ctx())
    parts = sorted(Path(out).glob("part-*.csv"))
    assert parts
    assert read_back([p.read_text(encoding="utf-8") for p in parts]) == sorted(ROWS)
    # and the product reads its own output back exactly
    back = files.from_file(
        None, cfg(files.FromFile, path=str(out), format="csv", schema=SCHEMA), ctx()
    )
    assert spark_rows(back) == sorted(ROWS)


def test_options_still_override_the_defaults(ctx, tmp_path):
    f = tmp_path / "backslash.csv"
    f.write_text('id,text,other\n1,"say \\"x\\"",y\n', encoding="utf-8")
    df = files.from_file(
        None,
        cfg(files.FromFile, path=str(f), format="csv", schema=SCHEMA, options={"escape": "\\"}),
        ctx(),
    )
    assert [(r.text, r.other) for r in df.collect()] == [('say "x"', "y")]
    # a lower-case option name replaces the default of the same name (Spark ignores case)
    split = files.from_file(
        None,
        cfg(files.FromFile, path=str(f), format="csv", schema=SCHEMA, options={"multiline": False}),
        ctx(),
    )
    assert split.count() == 1


def test_s3_round_trip_is_rfc4180(s3, vault, vault_resource, ctx, spark):
    s3.client.create_bucket(Bucket="lake")
    path = vault.put("secret", "s3/csv", s3.secret())
    c = ctx(read_secret=vault_resource.read_secret, audit=vault_resource.audit)
    s3.client.put_object(Bucket="lake", Key="raw/in.csv", Body=rfc4180(ROWS).encode("utf-8"))
    df = files.from_s3(
        None,
        cfg(
            files.FromS3,
            bucket="lake",
            path="raw/in.csv",
            format="csv",
            schema=SCHEMA,
            credentialPath=path,
        ),
        c,
    )
    assert spark_rows(df) == sorted(ROWS)
    files.to_s3(
        df,
        cfg(
            files.ToS3,
            bucket="lake",
            path="out/",
            format="csv",
            mode="overwrite",
            credentialPath=path,
        ),
        c,
    )
    texts = [
        s3.client.get_object(Bucket="lake", Key=k)["Body"].read().decode("utf-8")
        for k in s3.keys("lake", "out/")
        if k.endswith(".csv")
    ]
    assert texts and read_back(texts) == sorted(ROWS)


# ---- local files read split when no quoted field holds a line break (csvsplit.py)
QUOTED = [(i, f'row "{i}", with a comma', "x" * (i % 7)) for i in range(1, 4001)]


def test_quoted_line_break_is_found_wherever_chunks_split(tmp_path, monkeypatch):
    from pipeline_defs.steps import csvsplit
    cases = {
        "no quotes": (b"a,b\n1,2\n", False),
        "quoted commas": (b'a,b\n1,"x, y"\n2,"z"\r\n', False),
        "doubled quote then break": (b'a,b\n1,"say ""hi"""\n2,3\n', False),
        "quoted LF": (b'a,b\n1,"two\nlines"\n', True),
        "quoted CR": (b'a,b\n1,"two\rlines"\n', True),
        "doubled quote inside a broken field": (b'a,b\n1,"""x""\ny"\n', True),
        "break late in the file": (b'a,b\n' + b'1,"q"\n' * 50 + b'2,"a\nb"\n', True),
        "empty": (b"", False),
    }
    for chunk in (1 << 25, 3, 4, 7):  # chunk edges land inside and outside quoted fields
        monkeypatch.setattr(csvsplit, "CHUNK", chunk)
        for name, (data, expected) in cases.items():
            f = tmp_path / "f.csv"
            f.write_bytes(data)
            assert csvsplit._quoted_line_break(f) is expected, (name, chunk)


def test_scan_agrees_with_a_byte_by_byte_reading(tmp_path, monkeypatch):
    """The bit-parallel scan against the plain definition, on random bytes made of quotes,
    line breaks and text, with chunks cut at word edges and off them."""
    from pipeline_defs.steps import csvsplit

    def by_hand(data: bytes) -> bool:
        inside = False
        for c in data:
            if c == 34:
                inside = not inside
            elif c in (10, 13) and inside:
                return True
        return False

    rnd = random.Random(4180)
    f = tmp_path / "f.csv"
    answers = set()
    for _ in range(300):
        alphabet = rnd.choice([b'a"\n', b'ab,"\n', b'a"\r\n', b'abcdefgh,"\n', b'a""\n\n'])
        data = bytes(rnd.choice(alphabet) for _ in range(rnd.choice([1, 63, 64, 65, 200, 999])))
        f.write_bytes(data)
        for chunk in (3, 64, 100, 1 << 25):
            monkeypatch.setattr(csvsplit, "CHUNK", chunk)
            assert csvsplit._quoted_line_break(f) is by_hand(data), (data, chunk)
        answers.add(by_hand(data))
    assert answers == {True, False}  # both answers met


def test_what_cannot_be_scanned_keeps_multiline(tmp_path):
    from pipeline_defs.steps import csvsplit
    f = tmp_path / "d" / "a.csv"
    f.parent.mkdir()
    f.write_text("a,b\n1,2\n")
    assert csvsplit.splittable(str(f), {})
    assert csvsplit.splittable(str(f.parent), {})  # a directory: every data file scanned
    assert csvsplit.splittable(f"file://{f}", {})
    (f.parent / "_SUCCESS").write_text("")
    (f.parent / "b.csv").write_text('a,b\n1,"x\ny"\n')
    assert not csvsplit.splittable(str(f.parent), {})  # one file needs multiLine: all read so
    assert not csvsplit.splittable(str(f), {"quote": "'"})
    assert not csvsplit.splittable(str(f), {"escape": "\\"})
    assert not csvsplit.splittable(str(f), {"encoding": "UTF-16"})
    assert not csvsplit.splittable(str(f), {"lineSep": ";"})
    assert not csvsplit.splittable("s3a://bucket/a.csv", {})
    assert not csvsplit.splittable(str(tmp_path / "d" / "*.csv"), {})
    assert not csvsplit.splittable(str(tmp_path / "missing.csv"), {})
    gz = tmp_path / "a.csv.gz"
    gz.write_bytes(b"")
    assert not csvsplit.splittable(str(gz), {})


@pytest.mark.parametrize("broken", [False, True], ids=["no-line-breaks", "a-quoted-line-break"])
def test_big_local_csv_is_read_in_parallel_only_when_that_keeps_every_row(
        ctx, spark, tmp_path, broken):
    rows = QUOTED + [(5000, "two\nlines", "z")] if broken else QUOTED
    f = tmp_path / "big.csv"
    f.write_text(rfc4180(rows), encoding="utf-8")
    old = spark.conf.get("spark.sql.files.maxPartitionBytes")
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(f.stat().st_size // 4))
    try:
        df = files.from_file(None, cfg(files.FromFile, path=str(f), format="csv", schema=SCHEMA),
                             ctx())
        assert spark_rows(df) == sorted(rows)
        parts = df.rdd.getNumPartitions()
        # split into several tasks, or one task per file when a field holds a line break
        assert (parts == 1) if broken else (parts >= 4), parts
    finally:
        spark.conf.set("spark.sql.files.maxPartitionBytes", old)


def test_answers_are_kept_per_version_of_a_file_and_prescanned(tmp_path):
    """A file is scanned once per version (size, mtime): a step finds the answer `pipeline
    run` started in the background; a changed file is scanned again."""
    import os

    from pipeline_defs.steps import csvsplit
    f = tmp_path / "p.csv"
    f.write_bytes(b'a,b\n1,"x, y"\n')
    t = csvsplit.prescan([(str(f), {}), ("s3a://bucket/x.csv", {})])  # s3a: not scanned
    t.join(30)
    st = f.stat()
    assert (str(f.resolve()), st.st_size, st.st_mtime_ns) in csvsplit._answers
    assert csvsplit.quoted_line_break(f) is False
    f.write_bytes(b'a,b\n1,"x\ny"\n')  # same size, other content, other mtime
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert csvsplit.quoted_line_break(f) is True
    assert csvsplit.prescan([("s3a://bucket/x.csv", {})]) is None
