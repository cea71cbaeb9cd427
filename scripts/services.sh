#!/usr/bin/env bash
# The real servers for a local try-out (`make services-up`), on loopback only; `install` only
# installs what the tests need (each test session starts servers of its own):
#   PostgreSQL, MariaDB and Prometheus's Pushgateway from Debian's packages (installed if
#   missing), moto's S3 server.
#
#   scripts/services.sh up [tools|postgres|mariadb|s3|pushgateway ...]  start (idempotent;
#                                                         all by default)
#   scripts/services.sh down                            stop all
#   scripts/services.sh status
#
# Data lives under $PIPELINE_SERVICES_DIR (default /tmp/pipeline_defs-services), never in the
# working tree. Ports: PIPELINE_PG_PORT (55432), PIPELINE_MYSQL_PORT (53306),
# PIPELINE_S3_PORT (55900), PIPELINE_PUSHGATEWAY_PORT (29091). Admin access: user `postgres` (trust on loopback) and
# PostgreSQL has TLS on (self-signed; the CA for sslrootcert is $PIPELINE_SERVICES_DIR/postgres-ca.crt).
# `pipeline_admin` (MariaDB, no password, loopback only); the tests create their own users
# with passwords, so password checks are real.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DIR=${PIPELINE_SERVICES_DIR:-/tmp/pipeline_defs-services}
PG_PORT=${PIPELINE_PG_PORT:-55432}
MYSQL_PORT=${PIPELINE_MYSQL_PORT:-53306}
S3_PORT=${PIPELINE_S3_PORT:-55900}
PUSH_PORT=${PIPELINE_PUSHGATEWAY_PORT:-29091}
mkdir -p "$DIR"; chmod 755 "$DIR"

as_user() {  # servers refuse to run as root: run them as their own system user
  local user=$1; shift
  if [ "$(id -u)" = 0 ]; then runuser -u "$user" -- "$@"; else "$@"; fi
}

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "services: $* is not installed; install it (apt-get install $*) and retry" >&2; exit 1
  fi
  echo "services: installing $* from Debian's packages"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive \
         apt-get install -y -q --no-install-recommends "$@" >/dev/null; }
}

# ---------------------------------------------------------------- PostgreSQL
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

postgres_up() {
  [ -n "$(pg_bin)" ] || apt_install postgresql
  local bin data=$DIR/postgres; bin=$(pg_bin)
  if [ ! -f "$data/PG_VERSION" ]; then
    mkdir -p "$data"; chown postgres: "$data" 2>/dev/null || true
    as_user postgres "$bin/initdb" -D "$data" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=trust --auth-host=scram-sha-256 >"$DIR/postgres-init.log"
    cat >"$data/pg_hba.conf" <<EOF
local all all trust
host  all postgres 127.0.0.1/32 trust
host  all all      127.0.0.1/32 scram-sha-256
EOF
  fi
  # TLS as production servers have it (clients choose with sslmode): a self-signed
  # certificate for 127.0.0.1/localhost, copied out as the CA clients verify it with.
  if [ ! -f "$data/server.crt" ]; then
    command -v openssl >/dev/null || apt_install openssl
    as_user postgres openssl req -new -x509 -days 3650 -nodes -subj "/CN=127.0.0.1" \
      -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -keyout "$data/server.key" \
      -out "$data/server.crt" >/dev/null 2>&1
    chmod 600 "$data/server.key"
  fi
  cp "$data/server.crt" "$DIR/postgres-ca.crt"; chmod 644 "$DIR/postgres-ca.crt"
  if as_user postgres "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then return; fi
  touch "$DIR/postgres.log"; chown postgres: "$DIR/postgres.log" 2>/dev/null || true
  if ! as_user postgres "$bin/pg_ctl" -D "$data" -l "$DIR/postgres.log" -w -t 60 start -o \
    "-p $PG_PORT -k $data -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
     -c full_page_writes=off -c max_connections=200 -c ssl=on" >/dev/null; then
    echo "services: PostgreSQL did not start on 127.0.0.1:$PG_PORT; from $DIR/postgres.log:" >&2
    grep -E "FATAL|HINT|ERROR" "$DIR/postgres.log" | tail -3 >&2
    echo "(a server of another services directory on that port? stop it, or set" \
         "PIPELINE_PG_PORT)" >&2
    exit 1
  fi
  echo "services: PostgreSQL on 127.0.0.1:$PG_PORT"
}

postgres_down() {
  local bin; bin=$(pg_bin)
  [ -n "$bin" ] && [ -f "$DIR/postgres/PG_VERSION" ] || return 0
  as_user postgres "$bin/pg_ctl" -D "$DIR/postgres" -m fast -w stop >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------- MariaDB (MySQL protocol)
mysql_ping() { mariadb-admin --socket="$DIR/mariadb-run/mysql.sock" -uroot ping >/dev/null 2>&1; }

mariadb_up() {
  command -v mariadbd >/dev/null || apt_install mariadb-server mariadb-client
  local data=$DIR/mariadb
  if [ ! -d "$data/mysql" ]; then
    mkdir -p "$data"; chown mysql: "$data" 2>/dev/null || true
    mariadb-install-db --user=mysql --datadir="$data" --auth-root-authentication-method=socket \
      --skip-test-db >"$DIR/mariadb-init.log" 2>&1
  fi
  mysql_ping && return
  mkdir -p "$DIR/mariadb-run"; chown mysql: "$DIR/mariadb-run" 2>/dev/null || true
  setsid mariadbd --user=mysql --datadir="$data" --port="$MYSQL_PORT" --bind-address=127.0.0.1 \
    --socket="$DIR/mariadb-run/mysql.sock" --pid-file="$DIR/mariadb-run/mariadb.pid" --skip-name-resolve \
    --innodb-flush-log-at-trx-commit=0 --innodb-buffer-pool-size=256M --max-connections=200 \
    --log-error="$DIR/mariadb-run/mariadb.log" </dev/null >/dev/null 2>&1 &
  for _ in $(seq 120); do mysql_ping && break; sleep 0.5; done
  mysql_ping || { echo "services: MariaDB did not start, see $DIR/mariadb-run/mariadb.log" >&2; exit 1; }
  mariadb --socket="$DIR/mariadb-run/mysql.sock" -uroot -e "
    CREATE USER IF NOT EXISTS 'pipeline_admin'@'127.0.0.1';
    GRANT ALL PRIVILEGES ON *.* TO 'pipeline_admin'@'127.0.0.1' WITH GRANT OPTION;"
  echo "services: MariaDB on 127.0.0.1:$MYSQL_PORT"
}

mariadb_down() {
  mysql_ping || return 0
  mariadb-admin --socket="$DIR/mariadb-run/mysql.sock" -uroot shutdown >/dev/null 2>&1 || true
}

# ---------------------------------------------------------------- S3 (moto's server)
s3_ping() { curl -fsS -o /dev/null "http://127.0.0.1:$S3_PORT/moto-api/" 2>/dev/null; }

s3_up() {
  s3_ping && return
  [ -x "$ROOT/.venv/bin/moto_server" ] || { echo "services: run make setup first" >&2; exit 1; }
  setsid "$ROOT/.venv/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" </dev/null \
    >"$DIR/moto.log" 2>&1 &
  echo $! >"$DIR/moto.pid"
  for _ in $(seq 60); do s3_ping && break; sleep 0.5; done
  s3_ping || { echo "services: moto did not start, see $DIR/moto.log" >&2; exit 1; }
  echo "services: S3 (moto) on 127.0.0.1:$S3_PORT"
}

s3_down() {
  [ -f "$DIR/moto.pid" ] && kill "$(cat "$DIR/moto.pid")" 2>/dev/null || true
  rm -f "$DIR/moto.pid"
}

# ---------------------------------------------------------------- Prometheus Pushgateway
push_ping() { curl -fsS -o /dev/null "http://127.0.0.1:$PUSH_PORT/-/ready" 2>/dev/null; }

pushgateway_up() {
  push_ping && return
  command -v prometheus-pushgateway >/dev/null || apt_install prometheus-pushgateway
  # the package's own service (if the machine runs systemd) listens on :9091 of every
  # address; this one is the tests' and listens on loopback only
  setsid prometheus-pushgateway --web.listen-address="127.0.0.1:$PUSH_PORT" </dev/null \
    >"$DIR/pushgateway.log" 2>&1 &
  echo $! >"$DIR/pushgateway.pid"
  for _ in $(seq 60); do push_ping && break; sleep 0.5; done
  push_ping || { echo "services: the Pushgateway did not start, see $DIR/pushgateway.log" >&2
                 exit 1; }
  echo "services: Prometheus Pushgateway on 127.0.0.1:$PUSH_PORT"
}

pushgateway_down() {
  [ -f "$DIR/pushgateway.pid" ] && kill "$(cat "$DIR/pushgateway.pid")" 2>/dev/null || true
  rm -f "$DIR/pushgateway.pid"
}

# Tools the tests use beside the servers: docker-compose validates docker/ (no engine needed);
# Chromium and its WebDriver drive the Dagster UI in the browser tests.
tools_up() {
  command -v docker-compose >/dev/null || apt_install docker-compose
  command -v chromedriver >/dev/null || apt_install chromium chromium-driver
}

# What the tests need installed; they start their own servers (pipeline_defs_tests/servers.py).
install() {
  [ -n "$(pg_bin)" ] || apt_install postgresql
  command -v mariadbd >/dev/null || apt_install mariadb-server mariadb-client
  command -v prometheus-pushgateway >/dev/null || apt_install prometheus-pushgateway
  command -v openssl >/dev/null || apt_install openssl
  tools_up
}

cmd=${1:-up}; shift || true
names=${*:-tools postgres mariadb s3 pushgateway}
case $cmd in
  install) install ;;
  up)     for n in $names; do "${n}_up"; done ;;
  down)   pushgateway_down; s3_down; mariadb_down; postgres_down ;;
  status) s3_ping && echo "s3 up" || echo "s3 down"
          mysql_ping && echo "mariadb up" || echo "mariadb down"
          push_ping && echo "pushgateway up" || echo "pushgateway down"
          as_user postgres "$(pg_bin)/pg_ctl" -D "$DIR/postgres" status >/dev/null 2>&1 \
            && echo "postgres up" || echo "postgres down" ;;
  *) echo "usage: $0 install|up|down|status [tools postgres mariadb s3 pushgateway]" >&2
     exit 2 ;;
esac
