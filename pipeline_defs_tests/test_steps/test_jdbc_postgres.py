"""fromPostgres / toPostgres against a real PostgreSQL server on loopback, credentials from
OpenBao (Vault's API) through real hvac."""

from __future__ import annotations

import pytest

from pipeline_defs.common.errors import CredentialError
from pipeline_defs.steps import jdbc, transform
from pipeline_defs.steps.jdbc import JdbcError
from pipeline_defs_tests.conftest import rows


@pytest.fixture
def db(pg, vault, vault_resource, ctx):
    """(database, credentialPath, StepContext factory reading Vault and auditing)."""
    path = vault.put("secret", "postgres/test", pg.secret())

    def make(method="test.method"):
        return ctx(
            method=method, read_secret=vault_resource.read_secret, audit=vault_resource.audit
        )

    pg.path, pg.ctx = path, make
    return pg


@pytest.fixture
def events(db):
    db.sql(
        "CREATE TABLE events (id int PRIMARY KEY, event_type text NOT NULL, "
        "amount numeric(10,2), ts timestamp)"
    )
    db.sql(
        "INSERT INTO events SELECT g, CASE WHEN g % 3 = 0 THEN 'purchase' ELSE 'view' END, "
        "g * 1.5, timestamp '2025-01-01' + g * interval '1 minute' "
        "FROM generate_series(1, 1000) g"
    )
    return db


def cfg(model, **kw):
    return model.model_validate(kw)


def test_reads_a_table_in_parallel_with_bounds_from_one_query(events):
    c = events.ctx("extract.fromPostgres")
    df = jdbc.from_postgres(
        None,
        cfg(
            jdbc.FromPostgres,
            table="events",
            credentialPath=events.path,
            partitionColumn="id",
            numPartitions=4,
        ),
        c,
    )
    assert df.rdd.getNumPartitions() == 4
    assert c.metadata["partition_bounds"] == "1 .. 1000"
    expected = events.sql("SELECT id, event_type, amount, ts FROM events")
    assert rows(df) == sorted(expected)
    # fetchSize reaches the JDBC relation (Spark's default 0 buffers whole results)
    rel = df._jdf.queryExecution().analyzed().collectLeaves().head().relation()
    assert rel.jdbcOptions().fetchSize() == 10_000


def test_reads_a_query_with_a_partition_column(events):
    c = events.ctx("extract.fromPostgres")
    df = jdbc.from_postgres(
        None,
        cfg(
            jdbc.FromPostgres,
            credentialPath=events.path,
            partitionColumn="id",
            numPartitions=3,
            query="SELECT id, amount FROM events WHERE event_type = 'purchase' ORDER BY id",
        ),
        c,
    )
    assert df.rdd.getNumPartitions() == 3
    assert c.metadata["partition_bounds"] == "3 .. 999"
    assert [r[0] for r in rows(df)] == list(range(3, 1000, 3))


def test_filters_and_columns_of_later_steps_are_pushed_to_postgres(events, spark):
    c = events.ctx("extract.fromPostgres")
    df = jdbc.from_postgres(
        None, cfg(jdbc.FromPostgres, table="events", credentialPath=events.path), c
    )
    df = transform.filter_rows(
        df, cfg(transform.FilterRows, condition="amount > 100 AND event_type = 'purchase'"), c
    )
    df = transform.select_columns(df, cfg(transform.SelectColumns, columns=["id", "amount"]), c)
    plan = df._jdf.queryExecution().executedPlan().toString()
    assert (
        "PushedFilters: [*IsNotNull(amount), *IsNotNull(event_type), "
        "*GreaterThan(amount,100.00), *EqualTo(event_type,pur"
    ) in plan
    assert "ReadSchema: struct<id:int,amount:decimal(10,2)>" in plan
    assert events.password not in plan
    assert len(df.collect()) == len([i for i in range(1, 1001) if i % 3 == 0 and i * 1.5 > 100])


@pytest.mark.parametrize("pushdown", [True, False])
def test_hints_pushdown_decides_who_filters(db, pushdown):
    """The column's collation makes PostgreSQL compare case-insensitively; Spark compares
    exactly. So the filter's result tells where it ran: in PostgreSQL (hints.pushdown true,
    Spark's default) or in Spark (false)."""
    db.sql("CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', "
           "deterministic = false)")
    db.sql("CREATE TABLE codes (id int, code text COLLATE ci)")
    db.sql("INSERT INTO codes VALUES (1, 'AB'), (2, 'abc')")
    c = db.ctx("extract.fromPostgres")
    df = jdbc.from_postgres(None, cfg(jdbc.FromPostgres, table="codes", credentialPath=db.path,
                                      hints={"pushdown": pushdown, "columnPruning": True}), c)
    assert c.metadata["pushdown"] == ("on" if pushdown else "off")
    got = transform.filter_rows(df, cfg(transform.FilterRows, condition="code = 'ab'"), c)
    plan = got._jdf.queryExecution().executedPlan().toString()
    assert ("*EqualTo(code,ab)" in plan) is pushdown
    assert [r.id for r in got.collect()] == ([1] if pushdown else [])


def _customers(db, grant_to: str):
    db.sql("CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, score int DEFAULT 0)")
    db.sql("CREATE INDEX customers_name ON customers (name)")
    db.sql(f"CREATE ROLE {grant_to}")
    db.sql(f"GRANT SELECT ON customers TO {grant_to}")
    db.sql("INSERT INTO customers VALUES (1, 'ada', 5), (2, 'bob', 7)")


def _grants(db, table="customers"):
    return db.sql(
        "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
        f"WHERE table_name = '{table}' AND grantee LIKE 'reader%'"
    )


def test_append_overwrite_upsert_keep_ddl_and_grants(db, spark):
    reader = f"reader_{db.database}"
    _customers(db, reader)
    load = lambda data, **kw: jdbc.to_postgres(  # noqa: E731
        spark.createDataFrame(data, "id int, name string, score int"),
        cfg(jdbc.ToPostgres, table="customers", credentialPath=db.path, **kw),
        db.ctx("load.toPostgres"),
    )
    r = load([(3, "cy", 1)], mode="append")
    assert r.rows == 1 and r.metadata["write_path"] == "copy-binary"
    assert db.sql("SELECT * FROM customers ORDER BY id") == [
        (1, "ada", 5),
        (2, "bob", 7),
        (3, "cy", 1),
    ]
    load([(10, "dee", 2), (11, "eve", 3)], mode="overwrite", batchSize=5000)
    assert db.sql("SELECT * FROM customers ORDER BY id") == [(10, "dee", 2), (11, "eve", 3)]
    assert _grants(db) == [(reader, "SELECT")]
    assert db.sql("SELECT indexname FROM pg_indexes WHERE tablename = 'customers' ORDER BY 1") == [
        ("customers_name",),
        ("customers_pkey",),
    ]
    load([(11, "EVE", 9), (12, "fay", 4)], mode="upsert", keyColumns=["id"])
    assert db.sql("SELECT * FROM customers ORDER BY id") == [
        (10, "dee", 2),
        (11, "EVE", 9),
        (12, "fay", 4),
    ]
    with pytest.raises(JdbcError, match="already exists.*mode is 'errorifexists'"):
        load([(1, "x", 1)], mode="errorifexists")
    assert (
        db.sql(
            "SELECT table_name FROM information_schema.tables WHERE table_name LIKE "
            "'\\_pd\\_stage%'"
        )
        == []
    )


def test_overwrite_with_recreate_takes_the_new_schema(db, spark):
    _customers(db, f"reader_{db.database}")
    df = spark.createDataFrame([(1, "x", 2.5)], "id long, label string, weight double")
    jdbc.to_postgres(
        df,
        cfg(
            jdbc.ToPostgres,
            table="customers",
            mode="overwrite",
            recreate=True,
            credentialPath=db.path,
        ),
        db.ctx("load.toPostgres"),
    )
    assert db.sql("SELECT * FROM customers") == [(1, "x", 2.5)]
    assert _grants(db) == []  # a recreated table starts without the old grants (documented)


def test_a_missing_target_is_created_and_upsert_refuses_duplicate_keys(db, spark):
    df = spark.createDataFrame([(1, "a"), (2, "b")], "k int, v string")
    r = jdbc.to_postgres(
        df, cfg(jdbc.ToPostgres, table="fresh", credentialPath=db.path), db.ctx("load.toPostgres")
    )
    assert r.metadata["created"] is True and db.sql("SELECT * FROM fresh ORDER BY k") == [
        (1, "a"),
        (2, "b"),
    ]
    dup = spark.createDataFrame([(1, "x"), (1, "y")], "k int, v string")
    with pytest.raises(JdbcError, match=r"2 rows for key \{'k': '1'\}.*target was not changed"):
        jdbc.to_postgres(
            dup,
            cfg(
                jdbc.ToPostgres,
                table="fresh",
                mode="upsert",
                keyColumns=["k"],
                credentialPath=db.path,
            ),
            db.ctx("load.toPostgres"),
        )
    assert db.sql("SELECT * FROM fresh ORDER BY k") == [(1, "a"), (2, "b")]


def test_a_failed_load_leaves_the_target_as_it_was(db, spark):
    _customers(db, f"reader_{db.database}")
    bad = spark.createDataFrame([(5, "ok", 1), (6, None, 1)], "id int, name string, score int")
    with pytest.raises(JdbcError, match=r'writing the rows for customers into PostgreSQL at '
                       r'.* failed: null value in column "name" of relation "customers" violates '
                       r'not-null constraint. The target '
                       r'was not changed'):
        jdbc.to_postgres(
            bad.repartition(2),
            cfg(jdbc.ToPostgres, table="customers", mode="overwrite", credentialPath=db.path),
            db.ctx("load.toPostgres"),
        )
    assert db.sql("SELECT * FROM customers ORDER BY id") == [(1, "ada", 5), (2, "bob", 7)]
    assert db.sql(
        "SELECT count(*) FROM information_schema.tables WHERE table_name LIKE '\\_pd\\_stage%'"
    ) == [(0,)]


def test_batched_insert_path_and_fallback_for_nested_columns(db, spark):
    df = spark.createDataFrame([(1, "a"), (2, "b")], "k int, v string")
    r = jdbc.to_postgres(
        df,
        cfg(jdbc.ToPostgres, table="plain", fastPath=False, credentialPath=db.path),
        db.ctx("load.toPostgres"),
    )
    assert r.metadata["write_path"] == "jdbc-batch-insert" and r.rows == 2
    arr = spark.createDataFrame([(1, [1, 2])], "k int, xs array<int>")
    r = jdbc.to_postgres(
        arr, cfg(jdbc.ToPostgres, table="arrays", credentialPath=db.path), db.ctx("load.toPostgres")
    )
    assert r.metadata["write_path"] == "jdbc-batch-insert"
    assert db.sql("SELECT k, xs FROM arrays") == [(1, [1, 2])]


def test_leftovers_of_a_killed_load_are_dropped_by_the_next(db, spark):
    db.sql("CREATE TABLE t (k int)")
    db.sql("CREATE TABLE _pd_stage_t_deadbeef00 (k int)")
    jdbc.to_postgres(
        spark.createDataFrame([(1,)], "k int"),
        cfg(jdbc.ToPostgres, table="t", credentialPath=db.path),
        db.ctx("load.toPostgres"),
    )
    assert db.sql(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
    ) == [("t",)]


# ---------------------------------------------------------------- errors name everything
@pytest.fixture
def backoffs(monkeypatch):
    """The waits between connection attempts, recorded instead of slept."""
    from pipeline_defs.steps.jdbc import connection
    delays: list[float] = []
    real = connection.with_backoff
    monkeypatch.setattr(connection, "with_backoff",
                        lambda fn, transient, retries, first: real(fn, transient, retries,
                                                                   first, sleep=delays.append))
    return delays


def test_wrong_password_names_host_database_user_never_the_password(db, vault, ctx, vault_resource,
                                                                    backoffs):
    wrong = vault.put("secret", "postgres/wrong", {**db.secret(), "password": "nope-4242x"})
    c = ctx(read_secret=vault_resource.read_secret)
    with pytest.raises(CredentialError) as e:
        jdbc.from_postgres(None, cfg(jdbc.FromPostgres, table="t", credentialPath=wrong), c)
    msg = str(e.value)
    assert backoffs == [] and "attempts" not in msg  # authentication failures are not retried
    assert f"PostgreSQL at 127.0.0.1:{db.port}, database '{db.database}'" in msg
    assert f"user '{db.username}'" in msg and "Vault secret 'secret/data/postgres/wrong'" in msg
    assert "the password was rejected" in msg and "28P01" in msg
    assert "nope-4242x" not in msg and db.password not in msg


def test_unknown_database_and_unreachable_host(db, vault, ctx, vault_resource, backoffs):
    c = ctx(read_secret=vault_resource.read_secret)
    nodb = vault.put("secret", "pg/nodb", {**db.secret(), "database": "no_such_db"})
    with pytest.raises(JdbcError, match="database 'no_such_db'.*the database does not exist"):
        jdbc.from_postgres(None, cfg(jdbc.FromPostgres, table="t", credentialPath=nodb), c)
    assert backoffs == []  # a missing database is not retried either
    down = vault.put("secret", "pg/down", {**db.secret(), "port": 9})
    with pytest.raises(JdbcError, match=r"127.0.0.1:9.*could not be reached after 4 attempts"):
        jdbc.from_postgres(None, cfg(jdbc.FromPostgres, table="t", credentialPath=down), c)
    # 0.5, 1 and 2 s (plus up to 25% jitter) between the attempts
    assert len(backoffs) == 3
    assert all(d <= b <= d * 1.25 for b, d in zip(backoffs, (0.5, 1, 2), strict=True))


def test_a_missing_table_names_it(db):
    with pytest.raises(JdbcError, match="cannot read table nope from PostgreSQL at .*nope"):
        jdbc.from_postgres(
            None, cfg(jdbc.FromPostgres, table="nope", credentialPath=db.path), db.ctx()
        )


def _other_ca(tmp_path) -> str:
    """A self-signed certificate that did not sign the server's."""
    import subprocess
    crt = tmp_path / "other-ca.crt"
    subprocess.run(["openssl", "req", "-new", "-x509", "-days", "1", "-nodes", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(tmp_path / "other.key"), "-out", str(crt)],
                   check=True, capture_output=True)
    return str(crt)


def test_sslmode_and_sslrootcert_reach_the_driver(db, tmp_path):
    """The test server has TLS on (servers.py); PostgreSQL's own view of the connection
    Spark read through says whether it was encrypted."""

    def read(props):
        c = cfg(jdbc.FromPostgres, credentialPath=db.path, properties=props,
                query="SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        return jdbc.from_postgres(None, c, db.ctx("extract.fromPostgres")).collect()[0]

    verified = read({"sslmode": "verify-full", "sslrootcert": str(db.ca)})
    assert verified.ssl is True and verified.version.startswith("TLSv1.")
    assert read({"sslmode": "disable"}).ssl is False
    with pytest.raises(JdbcError) as e:  # another CA: the server's certificate is refused
        read({"sslmode": "verify-full", "sslrootcert": _other_ca(tmp_path)})
    msg = str(e.value)
    assert "the TLS handshake failed" in msg and "Check sslmode and sslrootcert" in msg
    assert "after" not in msg.split("[")[0]  # not retried: a refused certificate stays refused
    assert db.password not in msg


def test_explicit_bounds_split_the_read_without_asking_the_database(events):
    c = events.ctx("extract.fromPostgres")
    df = jdbc.from_postgres(None, cfg(jdbc.FromPostgres, table="events", credentialPath=events.path,
                                      partitionColumn="id", lowerBound=1, upperBound=101,
                                      numPartitions=4), c)
    assert "partition_bounds" not in c.metadata  # no min/max query ran
    # Spark's stride is (101 - 1) / 4 = 25; the first and last partitions are open-ended, so
    # rows outside the bounds are read too (by the last partition here)
    sizes = df.rdd.glom().map(len).collect()
    assert sizes == [25, 25, 25, 925]
    assert df.count() == 1000


def test_bounds_of_an_empty_table_read_it_in_one_task(db):
    db.sql("CREATE TABLE nothing (id int, v text)")
    c = db.ctx("extract.fromPostgres")
    df = jdbc.from_postgres(None, cfg(jdbc.FromPostgres, table="nothing", credentialPath=db.path,
                                      partitionColumn="id", numPartitions=4), c)
    assert c.metadata["partition_bounds"] == "none (no rows)"
    assert df.rdd.getNumPartitions() == 1 and df.count() == 0
    assert df.columns == ["id", "v"]


@pytest.mark.parametrize("mode", ["error", "errorifexists"])
def test_mode_error_refuses_an_existing_table_and_creates_a_missing_one(db, spark, mode):
    df = spark.createDataFrame([(9, "new")], "k int, v string")
    db.sql("CREATE TABLE kept (k int, v text)")
    db.sql("INSERT INTO kept VALUES (1, 'old')")
    with pytest.raises(JdbcError, match=rf"table kept already exists in PostgreSQL at .*mode is "
                       rf"'{mode}'\. Use append, overwrite or upsert"):
        jdbc.to_postgres(df, cfg(jdbc.ToPostgres, table="kept", mode=mode,
                                 credentialPath=db.path), db.ctx("load.toPostgres"))
    assert db.sql("SELECT * FROM kept") == [(1, "old")]
    r = jdbc.to_postgres(df, cfg(jdbc.ToPostgres, table="made", mode=mode,
                                 credentialPath=db.path), db.ctx("load.toPostgres"))
    assert r.rows == 1 and db.sql("SELECT * FROM made") == [(9, "new")]


def test_mode_ignore_leaves_an_existing_table_and_creates_a_missing_one(db, spark):
    df = spark.createDataFrame([(9, "new")], "k int, v string")
    db.sql("CREATE TABLE kept (k int, v text)")
    db.sql("INSERT INTO kept VALUES (1, 'old')")
    r = jdbc.to_postgres(df, cfg(jdbc.ToPostgres, table="kept", mode="ignore",
                                 credentialPath=db.path), db.ctx("load.toPostgres"))
    assert r.rows == 0 and r.metadata["skipped"] == "target exists (mode ignore)"
    assert db.sql("SELECT * FROM kept") == [(1, "old")]
    r = jdbc.to_postgres(df, cfg(jdbc.ToPostgres, table="made", mode="ignore",
                                 credentialPath=db.path), db.ctx("load.toPostgres"))
    assert r.rows == 1 and db.sql("SELECT * FROM made") == [(9, "new")]


def test_upsert_refusals(db, spark, registry, tmp_path):
    from pipeline_defs.common.errors import ConfigError
    from pipeline_defs.config.loader import load_pipeline
    from pipeline_defs_tests.conftest import write_json
    db.sql("CREATE TABLE accounts (id int PRIMARY KEY, v text)")
    db.sql("INSERT INTO accounts VALUES (1, 'old')")
    df = spark.createDataFrame([(1, "new")], "id int, v string")
    # a key column the target lacks: refused before anything is published
    with pytest.raises(JdbcError, match=r"upsert keyColumns \['account_id'\] are not all "
                       r"columns of accounts in PostgreSQL at"):
        jdbc.to_postgres(df, cfg(jdbc.ToPostgres, table="accounts", mode="upsert",
                                 keyColumns=["account_id"], credentialPath=db.path),
                         db.ctx("load.toPostgres"))
    assert db.sql("SELECT * FROM accounts") == [(1, "old")]
    # no keyColumns, recreate with upsert: refused when the file is read, naming the field
    for extra, field, fix in (({}, "config.keyColumns", "Set \"keyColumns\""),
                              ({"keyColumns": ["id"], "recreate": True}, "config.recreate",
                               "set \"mode\": \"overwrite\"")):
        f = write_json(tmp_path / "p.json", {"name": "p", "steps": [
            {"type": "extract", "method": "fromFile", "config": {"path": "x.csv"}},
            {"type": "load", "method": "toPostgres", "config": {
                "table": "accounts", "mode": "upsert", "credentialPath": db.path, **extra}}]})
        with pytest.raises(ConfigError) as e:
            load_pipeline(f, registry)
        assert f"step 2 (load.toPostgres), {field}" in str(e.value) and fix in str(e.value)
