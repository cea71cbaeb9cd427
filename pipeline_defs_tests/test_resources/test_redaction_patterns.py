"""The patterns that keep secrets out of messages: the product's scrub() for text bound for
logs, events and errors, and Spark's redaction settings for plans, options and the UI."""
from __future__ import annotations

import pytest

from pipeline_defs.common import secrets


@pytest.mark.parametrize(("text", "want"), [
    ("jdbc:postgresql://etl:hunter2pw@db:5432/sales", "jdbc:postgresql://etl:***@db:5432/sales"),
    ("s3a://AKIAXYZ:wJalrXUtnFEMI@bucket/key", "s3a://AKIAXYZ:***@bucket/key"),
    ("user=etl password=hunter2pw host=db", "user=etl password=*** host=db"),
    ("PASSWORD=hunter2pw;", "PASSWORD=***;"),
    ("secret_access_key=wJalrXUt, region=eu", "secret_access_key=***, region=eu"),
    ("token=hvs.abcdef&x=1", "token=***&x=1"),
    ("(password=p4ss)", "(password=***)"),
    # what must stay: names errors need
    ("user=etl host=db database=sales", "user=etl host=db database=sales"),
    ("http://db:5432/x", "http://db:5432/x"),
])
def test_scrub_patterns(text, want):
    assert secrets.scrub(text) == want


def test_remembered_values_are_masked_wherever_they_appear():
    secrets.remember_values_of({"password": "Pw-0987-xyz", "host": "db.internal",
                                "sasl.jaas.config": 'PlainLoginModule required password="j4as"',
                                "username": "etl-user"})
    text = ("login etl-user@db.internal with Pw-0987-xyz failed; "
            'config PlainLoginModule required password="j4as"')
    out = secrets.scrub(text)
    assert "Pw-0987-xyz" not in out and "j4as" not in out
    assert "etl-user" in out and "db.internal" in out  # not secrets: errors name them
    secrets.remember("abc")  # too short to mask without masking ordinary words
    assert secrets.scrub("abc def") == "abc def"


def test_spark_redacts_secret_settings_and_read_options(spark, tmp_path):
    """Spark's own redaction with the product's regexes: a secret in a Hadoop setting is
    hidden from the environment Spark reports, credentials in a source's options from the
    plan."""
    from pipeline_defs.spark.session import OPTION_REGEX, SECRET_REGEX
    assert spark.conf.get("spark.redaction.regex") == SECRET_REGEX
    assert spark.conf.get("spark.sql.redaction.options.regex") == OPTION_REGEX
    jvm = spark._jvm
    conf = spark.sparkContext._jsc.sc().conf()
    pairs = jvm.java.util.ArrayList()
    for k, v in (("spark.hadoop.fs.s3a.secret.key", "wJalr-SECRET"),
                 ("spark.hadoop.fs.s3a.access.key", "AKIA-ACCESS"),
                 ("spark.hadoop.fs.s3a.endpoint", "http://s3:9000")):
        pairs.add(jvm.scala.Tuple2(k, v))
    seq = jvm.scala.jdk.javaapi.CollectionConverters.asScala(pairs).toSeq()
    shown = str(jvm.org.apache.spark.util.Utils.redact(conf, seq))  # as the UI shows them
    assert "wJalr-SECRET" not in shown and "AKIA-ACCESS" not in shown
    assert "http://s3:9000" in shown  # not a secret

    # options of a table (as a catalog shows them: DESCRIBE, the UI's SQL tab)
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "t.csv").write_text("a\n1\n")
    spark.sql(f"CREATE TABLE redact_t (a string) USING csv OPTIONS (header 'true', "
              f"password 'opt-PASSWORD-1', url 'jdbc:x://u:p@h/db', token 'tok-123456') "
              f"LOCATION '{tmp_path / 't'}'")
    try:
        shown = "\n".join(f"{r[0]} {r[1]}" for r in
                          spark.sql("DESCRIBE TABLE EXTENDED redact_t").collect())
    finally:
        spark.sql("DROP TABLE redact_t")
    assert "header=true" in shown  # options are shown...
    for value in ("opt-PASSWORD-1", "jdbc:x://u:p@h/db", "tok-123456"):
        assert value not in shown, shown  # ...but not these
    assert "redacted" in shown
