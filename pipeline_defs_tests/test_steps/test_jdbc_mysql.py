"""fromMySQL / toMySQL through MySQL Connector/J against a real MariaDB server on loopback."""
from __future__ import annotations

import pytest

from pipeline_defs.common.errors import CredentialError
from pipeline_defs.steps import jdbc, transform
from pipeline_defs.steps.jdbc import JdbcError
from pipeline_defs_tests.conftest import rows


def cfg(model, **kw):
    return model.model_validate(kw)


@pytest.fixture
def db(mysql, vault, vault_resource, ctx):
    mysql.path = vault.put("secret", "mysql", mysql.secret())
    mysql.ctx = lambda method="test.method": ctx(method=method,
                                                 read_secret=vault_resource.read_secret,
                                                 audit=vault_resource.audit)
    return mysql


def test_reads_table_and_query_in_parallel_with_pushdown(db):
    db.sql("CREATE TABLE orders (order_id int PRIMARY KEY, user_id int, amount decimal(10,2))")
    db.sql("INSERT INTO orders VALUES " + ", ".join(
        f"({i}, {i % 7}, {i}.25)" for i in range(1, 501)))
    c = db.ctx("extract.fromMySQL")
    df = jdbc.from_mysql(None, cfg(jdbc.FromMySQL, table="orders", credentialPath=db.path,
                                partitionColumn="order_id", numPartitions=3), c)
    assert df.rdd.getNumPartitions() == 3 and c.metadata["partition_bounds"] == "1 .. 500"
    assert rows(df) == sorted(db.sql("SELECT * FROM orders"))
    f = transform.filter_rows(df, cfg(transform.FilterRows, condition="user_id = 3"), c)
    assert "PushedFilters: [*IsNotNull(user_id), *EqualTo(user_id,3)]" in \
        f._jdf.queryExecution().executedPlan().toString()
    q = jdbc.from_mysql(None, cfg(jdbc.FromMySQL, credentialPath=db.path, query=
                               "SELECT user_id, sum(amount) AS total FROM orders GROUP BY "
                               "user_id"), db.ctx())
    assert sorted((r.user_id, float(r.total)) for r in q.collect()) == sorted(
        (u, float(t)) for u, t in db.sql("SELECT user_id, sum(amount) FROM orders GROUP BY 1"))


def test_load_modes_are_atomic_and_keep_the_table(db, spark):
    db.sql("CREATE TABLE users (user_id int PRIMARY KEY, name varchar(40) NOT NULL, "
           "score int DEFAULT 0, KEY by_name (name))")
    db.sql("INSERT INTO users VALUES (1, 'ada', 1), (2, 'bob', 2)")
    load = lambda data, **kw: jdbc.to_mysql(  # noqa: E731
        spark.createDataFrame(data, "user_id int, name string, score int"),
        cfg(jdbc.ToMySQL, table="users", credentialPath=db.path, **kw), db.ctx("load.toMySQL"))
    r = load([(3, "cy", 3)], mode="append", batchSize=500)
    assert r.rows == 1 and r.metadata["write_path"] == "load-data"
    assert r.metadata["publish"] == "insert"
    r = load([(7, "gus", 7), (8, "hal", 8)], mode="overwrite")
    assert (r.rows, r.metadata["write_path"], r.metadata["publish"]) == (2, "load-data", "swap")
    assert db.sql("SELECT * FROM users ORDER BY 1") == [(7, "gus", 7), (8, "hal", 8)]
    assert ("by_name",) in db.sql("SELECT index_name FROM information_schema.statistics WHERE "
                                  "table_schema = database() AND table_name = 'users'")
    load([(8, "HAL", 80), (9, "ivy", 9)], mode="upsert", keyColumns=["user_id"])
    assert db.sql("SELECT * FROM users ORDER BY 1") == [(7, "gus", 7), (8, "HAL", 80),
                                                       (9, "ivy", 9)]
    bad = [(20, "ok", 1), (21, None, 1)]  # NOT NULL violated in the staging table
    with pytest.raises(JdbcError, match=r"writing the rows for users into MySQL at .* failed: "
                       r"row refused by MySQL: .*NULL supplied to NOT NULL column 'name'.*"
                       r"The target was not changed"):
        load(bad, mode="overwrite")
    assert db.sql("SELECT * FROM users ORDER BY 1") == [(7, "gus", 7), (8, "HAL", 80),
                                                       (9, "ivy", 9)]
    load([(1, "new", 1)], mode="overwrite", recreate=True)
    assert db.sql("SELECT user_id, name FROM users") == [(1, "new")]
    assert db.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = "
                  "database()") == [("users",)]


def test_wrong_password_and_unknown_database(db, vault, vault_resource, ctx):
    c = ctx(read_secret=vault_resource.read_secret)
    wrong = vault.put("secret", "mysql/wrong", {**db.secret(), "password": "nope-1234y"})
    with pytest.raises(CredentialError) as e:
        jdbc.from_mysql(None, cfg(jdbc.FromMySQL, table="t", credentialPath=wrong), c)
    msg = str(e.value)
    assert f"MySQL at 127.0.0.1:{db.port}, database '{db.database}', user '{db.username}'" in msg
    assert "the login was rejected" in msg and "nope-1234y" not in msg
    nodb = vault.put("secret", "mysql/nodb", {**db.secret(), "database": "no_such_db"})
    with pytest.raises(JdbcError, match="database 'no_such_db'"):
        jdbc.from_mysql(None, cfg(jdbc.FromMySQL, table="t", credentialPath=nodb), c)
