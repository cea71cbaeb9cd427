"""The database servers of the tests, each owned by the test session (owned.py): PostgreSQL and
MariaDB, initdb'd in directories of their own, on ports proven held by them. Each test gets its
own database, user and password (`pg`, `mysql`), created here and dropped afterwards;
`restart()` restarts the session's server under a test (a fast shutdown cuts every session),
for the faults a real restart makes."""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline_defs_tests.owned import Owned, remove, session_dir, start_on_port, wait_for
from pipeline_defs_tests.servers import _chown, _installed, _name


# ---------------------------------------------------------------- PostgreSQL
@dataclass
class PostgresServer:
    port: int
    ca: Path  # the server's self-signed TLS certificate (sslrootcert)
    restart: Callable[[], None] = field(repr=False, default=lambda: None)


def _restarter(what: str, owned: Owned, launch, ready, port: int, sig: int):
    def restart() -> None:
        """Stops the server (`sig`: its fast shutdown) and starts it again on its port."""
        owned.stop(sig)
        proc = launch([port])
        wait_for(what, lambda: ready([port]), proc, owned.log, timeout=60)
    return restart


def _pg_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not found:
        pytest.fail("PostgreSQL is missing: `make test` installs it (scripts/services.sh "
                    "install: Debian's postgresql)")
    return found[-1]


@pytest.fixture(scope="session")
def postgres_server():
    """This session's PostgreSQL: initdb'd in a new directory, TLS on (a self-signed
    certificate, copied out as the CA), admin `postgres` trusted on loopback, every other
    user by password (scram-sha-256)."""
    import psycopg
    bin_, root = _pg_bin(), session_dir("postgres")
    data = root / "data"
    _chown(root, "postgres")
    subprocess.run(["runuser", "-u", "postgres", "--"] * (os.geteuid() == 0) + [
        str(bin_ / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
        "--locale=C.UTF-8", "--auth-local=trust", "--auth-host=scram-sha-256"],
        check=True, capture_output=True)
    (data / "pg_hba.conf").write_text("local all all trust\nhost all postgres 127.0.0.1/32 "
                                      "trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
    subprocess.run(["openssl", "req", "-new", "-x509", "-days", "30", "-nodes", "-subj",
                    "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(data / "server.key"), "-out", str(data / "server.crt")],
                   check=True, capture_output=True)
    (data / "server.key").chmod(0o600)
    for f in ("pg_hba.conf", "server.key", "server.crt"):
        _chown(data / f, "postgres")
    ca = root / "postgres-ca.crt"
    shutil.copy(data / "server.crt", ca)
    ca.chmod(0o644)
    owned = Owned("postgres", root)

    def ready(ports):
        try:
            with psycopg.connect(host="127.0.0.1", port=ports[0], user="postgres",
                                 dbname="postgres", connect_timeout=2) as c:
                return c.execute("SHOW data_directory").fetchone()[0] == str(data)
        except psycopg.Error:
            return False
    def launch(ports):
        return owned.popen(
            [str(bin_ / "postgres"), "-D", str(data), "-p", str(ports[0]), "-k", str(data),
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c",
             "synchronous_commit=off", "-c", "full_page_writes=off", "-c",
             "max_connections=200", "-c", "ssl=on"], user="postgres")
    (port,) = start_on_port("PostgreSQL", owned, 1, launch, ready)
    yield PostgresServer(port, ca, _restarter("PostgreSQL", owned, launch, ready, port,
                                              signal.SIGINT))
    owned.stop(signal.SIGINT)  # PostgreSQL's fast shutdown
    remove(root)


# ---------------------------------------------------------------- MariaDB
@pytest.fixture(scope="session")
def mariadb_server():
    """This session's MariaDB (MySQL protocol): a new data directory; root by socket, and
    `pipeline_admin` (no password, loopback only) for the tests' set-up."""
    mariadbd = _installed("mariadbd", "mariadb-server")
    root = session_dir("mariadb")
    data, sock = root / "data", root / "mysql.sock"
    _chown(root, "mysql")
    subprocess.run(["mariadb-install-db", "--user=mysql", f"--datadir={data}",
                    "--auth-root-authentication-method=socket", "--skip-test-db"],
                   check=True, capture_output=True)
    owned = Owned("mariadb", root)

    def ping(_ports) -> bool:
        return subprocess.run(["mariadb-admin", f"--socket={sock}", "-uroot", "ping"],
                              capture_output=True).returncode == 0
    def launch(ports):
        return owned.popen([
            mariadbd, "--user=mysql", f"--datadir={data}", f"--port={ports[0]}",
            "--bind-address=127.0.0.1", f"--socket={sock}",
            f"--pid-file={root / 'mariadb.pid'}", "--skip-name-resolve",
            "--innodb-flush-log-at-trx-commit=0", "--innodb-buffer-pool-size=256M",
            # a shutdown does not wait for cut transactions to roll back (a big LOAD DATA
            # takes a minute): they roll back after the restart, like PostgreSQL's fast mode
            "--innodb-fast-shutdown=3", "--max-connections=200"])
    (port,) = start_on_port("MariaDB", owned, 1, launch, ping)
    try:
        subprocess.run(["mariadb", f"--socket={sock}", "-uroot", "-e",
                        "CREATE USER 'pipeline_admin'@'127.0.0.1'; GRANT ALL PRIVILEGES ON *.* "
                        "TO 'pipeline_admin'@'127.0.0.1' WITH GRANT OPTION;"], check=True)
        yield MariaDbServer(port, _restarter("MariaDB", owned, launch, ping, port,
                                             signal.SIGTERM))
    finally:
        owned.stop()
        remove(root)


class MariaDbServer(int):
    """The session's MariaDB port, with `restart()` (SIGTERM; with innodb_fast_shutdown=3,
    open transactions roll back after the restart)."""
    def __new__(cls, port: int, restart: Callable[[], None]):
        obj = super().__new__(cls, port)
        obj.restart = restart
        return obj



@dataclass
class Database:
    dialect: str
    host: str
    port: int
    database: str
    username: str
    password: str
    admin: object = field(repr=False, default=None)
    ca: Path | None = None  # PostgreSQL's: the CA its TLS certificate verifies with
    connect: Callable[[], object] | None = field(repr=False, default=None)  # a new admin
    restart_server: Callable[[], None] | None = field(repr=False, default=None)

    def restart(self) -> None:
        """Restarts the session's server under this test (every session is cut, the admin's
        too), then connects the admin again."""
        self.restart_server()
        self.admin = self.connect()

    def secret(self) -> dict:
        """The JDBC secret shape of the original format."""
        return {"host": self.host, "port": self.port, "database": self.database,
                "username": self.username, "password": self.password}

    def sql(self, statement: str, params=None) -> list[tuple]:
        """Runs one statement as the admin; returns its rows (empty for DDL/DML)."""
        with self.admin.cursor() as cur:
            cur.execute(statement, params)
            try:
                return [tuple(r) for r in cur.fetchall()]
            except Exception:  # noqa: BLE001 - statement without a result set
                return []


@pytest.fixture
def pg(postgres_server):
    """A fresh PostgreSQL database owned by a fresh user with a random password."""
    import psycopg
    port = postgres_server.port
    db, user, pw = _name("t"), _name("u"), "pg-" + secrets.token_urlsafe(12)
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                         autocommit=True) as c:
        c.execute(f"CREATE USER {user} PASSWORD '{pw}' CREATEROLE")
        c.execute(f"CREATE DATABASE {db} OWNER {user}")

    def connect():
        admin = psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname=db,
                                autocommit=True)
        admin.execute(f"SET ROLE {user}")  # what the test creates belongs to the pipeline's user
        return admin
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname=db,
                         autocommit=True) as c:
        c.execute(f"ALTER SCHEMA public OWNER TO {user}")
    database = Database("postgres", "127.0.0.1", port, db, user, pw, connect(),
                        postgres_server.ca, connect, postgres_server.restart)
    yield database
    database.admin.close()
    with psycopg.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres",
                         autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        c.execute(f"DROP ROLE IF EXISTS reader_{db}")
        c.execute(f"DROP USER IF EXISTS {user}")


@pytest.fixture
def mysql(mariadb_server):
    """A fresh MariaDB database with a user (and random password) allowed only on it."""
    import pymysql
    port = int(mariadb_server)
    db, user, pw = _name("t"), _name("u"), "my-" + secrets.token_urlsafe(12)
    root = pymysql.connect(host="127.0.0.1", port=port, user="pipeline_admin", autocommit=True)
    with root.cursor() as cur:
        cur.execute(f"CREATE DATABASE {db}")
        cur.execute(f"CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{pw}'")
        cur.execute(f"GRANT ALL PRIVILEGES ON {db}.* TO '{user}'@'127.0.0.1'")

    def connect():
        return pymysql.connect(host="127.0.0.1", port=port, user="pipeline_admin",
                               database=db, autocommit=True)
    database = Database("mysql", "127.0.0.1", port, db, user, pw, connect(), None, connect,
                        mariadb_server.restart)
    yield database
    database.admin.close()
    root.ping(reconnect=True)
    with root.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {db}")
        cur.execute(f"DROP USER IF EXISTS '{user}'@'127.0.0.1'")
    root.close()


