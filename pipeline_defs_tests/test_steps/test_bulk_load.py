"""The JVM bulk loaders (COPY into PostgreSQL, LOAD DATA LOCAL INFILE into MariaDB) and the
overwrite-by-swap publish, against the real servers: values arrive exactly as Spark held them,
and a swapped table keeps everything the old one had."""
from __future__ import annotations

import logging
import re
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from pipeline_defs.steps import jdbc

# the awkward values of both text formats: delimiters, quotes, escapes, line breaks, empty
# string vs NULL, non-ASCII, a backslash before a quote, a literal \N
TEXTS = ["plain", "a,b", 'say "hi"', "line\nbreak", "cr\rlf", "tab\there", "back\\slash",
         "", None, "żółć 東京 🚀", '\\"', "\\N", "  padded  "]
SCHEMA = ("id int, txt string, amount decimal(12,3), ratio double, flag boolean, "
          "ts timestamp, day date, big bigint")


def _rows():
    return [(i, t, Decimal("1234.567") if i % 2 else Decimal("-0.001"),
             1 / 3 if i % 3 else 1e-300, i % 2 == 0,
             datetime(2024, 3, 31, 23, 59, 58, 123456, tzinfo=UTC), date(1999, 12, 31),
             9007199254740993 + i)
            for i, t in enumerate(TEXTS)]


def _cfg(model, **kw):
    return model.model_validate(kw)


@pytest.fixture
def pgdb(pg, vault, vault_resource, ctx):
    pg.path = vault.put("secret", "postgres/bulk", pg.secret())
    pg.ctx = lambda: ctx(method="load.toPostgres", read_secret=vault_resource.read_secret,
                         audit=vault_resource.audit)
    return pg


@pytest.fixture
def mydb(mysql, vault, vault_resource, ctx):
    mysql.path = vault.put("secret", "mysql/bulk", mysql.secret())
    mysql.ctx = lambda: ctx(method="load.toMySQL", read_secret=vault_resource.read_secret,
                            audit=vault_resource.audit)
    return mysql


def test_copy_carries_every_value_exactly(pgdb, spark):
    pgdb.sql("CREATE TABLE vals (id int PRIMARY KEY, txt text, amount numeric(12,3), "
             "ratio double precision, flag boolean, ts timestamptz, day date, big bigint)")
    df = spark.createDataFrame(_rows(), SCHEMA).repartition(3)
    r = jdbc.to_postgres(df, _cfg(jdbc.ToPostgres, table="vals", credentialPath=pgdb.path),
                         pgdb.ctx())
    assert (r.rows, r.metadata["write_path"]) == (len(TEXTS), "copy-binary")
    got = pgdb.sql("SELECT * FROM vals ORDER BY id")
    assert got == _rows()


def test_load_data_carries_every_value_exactly(mydb, spark):
    mydb.sql("CREATE TABLE vals (id int PRIMARY KEY, txt text, amount decimal(12,3), "
             "ratio double, flag boolean, ts datetime(6), day date, big bigint)")
    df = spark.createDataFrame(_rows(), SCHEMA).repartition(3)
    r = jdbc.to_mysql(df, _cfg(jdbc.ToMySQL, table="vals", credentialPath=mydb.path),
                      mydb.ctx())
    assert (r.rows, r.metadata["write_path"]) == (len(TEXTS), "load-data")
    got = mydb.sql("SELECT * FROM vals ORDER BY id")
    # MariaDB: booleans are tinyint, datetime has no zone (the session's UTC wall time)
    want = [(i, t, a, ratio, int(flag), ts.replace(tzinfo=None), d, big)
            for i, t, a, ratio, flag, ts, d, big in _rows()]
    assert got == want


def test_load_data_refuses_a_duplicate_key_instead_of_skipping_it(mydb, spark):
    """LOCAL makes MySQL skip refused rows with a warning; the loader fails the load."""
    mydb.sql("CREATE TABLE k (id int PRIMARY KEY, v text)")
    mydb.sql("INSERT INTO k VALUES (1, 'old')")
    dup = spark.createDataFrame([(5, "a"), (5, "b")], "id int, v string").coalesce(1)
    with pytest.raises(jdbc.JdbcError, match=r"row refused by MySQL: .*Duplicate entry '5'.*"
                       r"The target was not changed"):
        jdbc.to_mysql(dup, _cfg(jdbc.ToMySQL, table="k", mode="overwrite",
                                credentialPath=mydb.path), mydb.ctx())
    assert mydb.sql("SELECT * FROM k") == [(1, "old")]


def test_overwrite_swaps_in_a_table_with_everything_the_old_one_had(pgdb, spark, caplog):
    reader, writer = f"reader_{pgdb.database}", f"reader_{pgdb.database}_w"
    pgdb.sql(f"CREATE ROLE {reader}")
    pgdb.sql(f"CREATE ROLE {writer}")
    pgdb.sql("CREATE TABLE acct (id serial PRIMARY KEY, email text NOT NULL, "
             "balance numeric(10,2) DEFAULT 0 CHECK (balance >= 0), region text, "
             "CONSTRAINT acct_email_key UNIQUE (email) DEFERRABLE INITIALLY DEFERRED) "
             "WITH (fillfactor = 70)")
    pgdb.sql("CREATE INDEX acct_region ON acct (lower(region)) WHERE region IS NOT NULL")
    pgdb.sql("COMMENT ON TABLE acct IS 'customer accounts'")
    pgdb.sql("COMMENT ON COLUMN acct.email IS 'login'")
    pgdb.sql(f"GRANT SELECT ON acct TO {reader}")
    pgdb.sql(f"GRANT INSERT, UPDATE ON acct TO {writer} WITH GRANT OPTION")
    pgdb.sql("INSERT INTO acct (email, balance, region) VALUES ('a@x', 1, 'EU'), ('b@x', 2, NULL)")

    def shape():
        return {
            "columns": pgdb.sql("SELECT column_name, data_type, is_nullable, column_default "
                                "FROM information_schema.columns WHERE table_name = 'acct' "
                                "ORDER BY ordinal_position"),
            "constraints": pgdb.sql("SELECT conname, contype, condeferrable, condeferred, "
                                    "pg_get_constraintdef(oid) FROM pg_constraint WHERE "
                                    "conrelid = 'acct'::regclass ORDER BY 1"),
            "indexes": pgdb.sql("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = "
                                "'acct' ORDER BY 1"),
            "grants": pgdb.sql("SELECT grantee, privilege_type, is_grantable FROM "
                               "information_schema.role_table_grants WHERE table_name = 'acct' "
                               "AND grantee LIKE 'reader%' ORDER BY 1, 2"),
            "comments": pgdb.sql("SELECT obj_description('acct'::regclass, 'pg_class'), "
                                 "col_description('acct'::regclass, 2)"),
            "options": pgdb.sql("SELECT reloptions FROM pg_class WHERE oid = 'acct'::regclass"),
            "sequence": pgdb.sql("SELECT pg_get_serial_sequence('acct', 'id')"),
        }
    before = shape()
    df = spark.createDataFrame([(10, "c@x", Decimal("3.50"), "US"), (11, "d@x", None, "eu")],
                               "id int, email string, balance decimal(10,2), region string")
    with caplog.at_level(logging.INFO):
        r = jdbc.to_postgres(df, _cfg(jdbc.ToPostgres, table="acct", mode="overwrite",
                                      credentialPath=pgdb.path), pgdb.ctx())
    assert (r.rows, r.metadata["publish"]) == (2, "swap")
    assert shape() == before
    assert pgdb.sql("SELECT id, email, balance, region FROM acct ORDER BY id") == [
        (10, "c@x", Decimal("3.50"), "US"), (11, "d@x", None, "eu")]
    # the serial's sequence lives on with the new table (not dropped with the old one)
    pgdb.sql("INSERT INTO acct (email) VALUES ('e@x')")
    assert pgdb.sql("SELECT id FROM acct WHERE email = 'e@x'") == [(3,)]
    # constraints of the old table hold on the new one
    with pytest.raises(Exception, match="acct_balance_check"):
        pgdb.sql("INSERT INTO acct (email, balance) VALUES ('f@x', -1)")
    assert pgdb.sql("SELECT count(*) FROM pg_class WHERE relname LIKE '\\_pd\\_stage%'") == [(0,)]


def test_a_dependent_view_keeps_the_classic_publish(pgdb, spark, caplog):
    pgdb.sql("CREATE TABLE t (k int PRIMARY KEY, v text)")
    pgdb.sql("INSERT INTO t VALUES (1, 'old')")
    pgdb.sql("CREATE VIEW t_view AS SELECT k, v FROM t")
    df = spark.createDataFrame([(2, "new")], "k int, v string")
    with caplog.at_level(logging.INFO):
        r = jdbc.to_postgres(df, _cfg(jdbc.ToPostgres, table="t", mode="overwrite",
                                      credentialPath=pgdb.path), pgdb.ctx())
    assert r.metadata["publish"] == "insert"
    assert "not a table swap, because view t_view depends on it" in caplog.text
    assert pgdb.sql("SELECT * FROM t_view") == [(2, "new")]


def test_mysql_overwrite_swap_keeps_indexes_and_grants_and_a_trigger_blocks_it(mydb, spark,
                                                                                caplog):
    mydb.sql("CREATE TABLE u (id int PRIMARY KEY AUTO_INCREMENT, name varchar(20) NOT NULL, "
             "UNIQUE KEY by_name (name)) COMMENT 'users'")
    mydb.sql("INSERT INTO u (name) VALUES ('a'), ('b')")
    ddl = mydb.sql("SHOW CREATE TABLE u")[0][1]
    df = spark.createDataFrame([(7, "x"), (8, "y")], "id int, name string")
    r = jdbc.to_mysql(df, _cfg(jdbc.ToMySQL, table="u", mode="overwrite",
                               credentialPath=mydb.path), mydb.ctx())
    assert r.metadata["publish"] == "swap"
    def strip(ddl: str) -> str:  # the counter differs, nothing else may
        return re.sub(r" AUTO_INCREMENT=\d+", "", ddl)
    assert strip(mydb.sql("SHOW CREATE TABLE u")[0][1]) == strip(ddl)
    assert mydb.sql("SELECT * FROM u ORDER BY id") == [(7, "x"), (8, "y")]
    mydb.sql("CREATE TABLE audit (n int)")
    mydb.sql("CREATE TRIGGER u_ins AFTER INSERT ON u FOR EACH ROW INSERT INTO audit VALUES (1)")
    with caplog.at_level(logging.INFO):
        r = jdbc.to_mysql(df.limit(1), _cfg(jdbc.ToMySQL, table="u", mode="overwrite",
                                            credentialPath=mydb.path), mydb.ctx())
    assert r.metadata["publish"] == "insert" and "because of trigger u_ins" in caplog.text
    assert mydb.sql("SELECT * FROM u") == [(7, "x")]
    assert mydb.sql("SELECT count(*) FROM audit") == [(1,)]  # the trigger is still there


def test_load_data_into_a_table_spark_created_bit_booleans_and_timestamps(mydb, spark):
    """A missing target is created by Spark's JDBC writer (booleans become BIT(1)); LOAD DATA
    fills it, and a TIMESTAMP column holds the same instant whatever the server's zone."""
    df = spark.createDataFrame(
        [(1, True, datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)), (2, False, None), (3, None, None)],
        "id int, active boolean, seen timestamp")
    r = jdbc.to_mysql(df, _cfg(jdbc.ToMySQL, table="made", credentialPath=mydb.path),
                      mydb.ctx())
    assert (r.rows, r.metadata["write_path"], r.metadata["created"]) == (3, "load-data", True)
    assert "bit(1)" in mydb.sql("SHOW CREATE TABLE made")[0][1]
    assert mydb.sql("SELECT id, active + 0 FROM made ORDER BY id") == [(1, 1), (2, 0), (3, None)]
    mydb.sql("CREATE TABLE stamped (id int, at timestamp NULL)")
    jdbc.to_mysql(df.select("id", df.seen.alias("at")),
                  _cfg(jdbc.ToMySQL, table="stamped", credentialPath=mydb.path), mydb.ctx())
    mydb.sql("SET time_zone = '+05:00'")
    assert mydb.sql("SELECT UNIX_TIMESTAMP(at) FROM stamped WHERE id = 1") == [
        (int(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()),)]


def test_copy_falls_back_to_csv_for_pairs_without_an_exact_binary_form(pgdb, spark):
    """A Spark date into a timestamp column has no exact binary form: the JVM loader writes
    CSV, whose quoting must carry every awkward string."""
    from pipeline_defs.steps.jdbc.bulk import binary_types
    from pipeline_defs.steps.jdbc.connection import Connection, endpoint
    pgdb.sql("CREATE TABLE csvvals (id int PRIMARY KEY, txt text, day timestamp)")
    df = spark.createDataFrame([(i, t, date(1999, 12, 31)) for i, t in enumerate(TEXTS)],
                               "id int, txt string, day date")
    ep = endpoint("postgres", pgdb.secret(), {}, "the test")
    with Connection(spark, ep) as conn:
        assert binary_types(conn, "csvvals", df) is None
    r = jdbc.to_postgres(df, _cfg(jdbc.ToPostgres, table="csvvals", credentialPath=pgdb.path),
                         pgdb.ctx())
    assert (r.rows, r.metadata["write_path"]) == (len(TEXTS), "copy-csv")
    assert pgdb.sql("SELECT * FROM csvvals ORDER BY id") == [
        (i, t, datetime(1999, 12, 31)) for i, t in enumerate(TEXTS)]


@pytest.mark.parametrize("dialect", ["postgres", "mysql"])
def test_a_partition_an_earlier_attempt_committed_is_not_loaded_again(pgdb, mydb, spark,
                                                                       dialect):
    """A task retried after its partition committed (its marker row is there) returns the
    committed count and loads nothing: partition 1's rows, already in the table from the
    'earlier attempt', are there once, and the count is the table's."""
    from pipeline_defs.steps.jdbc.bulk import bulk_load
    from pipeline_defs.steps.jdbc.connection import Connection, endpoint
    db = pgdb if dialect == "postgres" else mydb
    db.sql("CREATE TABLE staged (id bigint, v bigint)")  # no key: a reload would show twice
    df = spark.range(0, 30, numPartitions=3).selectExpr("id", "id * 7 AS v")
    first = [(r.id, r.v) for r in df.rdd.mapPartitionsWithIndex(
        lambda i, it: it if i == 1 else iter(())).collect()]
    assert len(first) == 10
    # what the earlier attempt of partition 1's task committed: its rows and its marker
    for i, v in first:
        db.sql(f"INSERT INTO staged VALUES ({i}, {v})")
    db.sql("CREATE TABLE staged_parts (part int PRIMARY KEY, n bigint)")
    db.sql("INSERT INTO staged_parts VALUES (1, 10)")
    ep = endpoint(dialect, db.secret(), {}, "the test")
    with Connection(spark, ep) as conn:
        how, rows = bulk_load(spark, df, ep, "staged", conn)
    assert how == ("copy-binary" if dialect == "postgres" else "load-data")
    assert rows == 30
    assert db.sql("SELECT id, v FROM staged ORDER BY id") == [(i, i * 7) for i in range(30)]
    schema = "current_schema()" if dialect == "postgres" else "DATABASE()"
    assert db.sql("SELECT count(*) FROM information_schema.tables WHERE table_name = "
                  f"'staged_parts' AND table_schema = {schema}") == [(0,)]  # gone with it
