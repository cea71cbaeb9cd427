#!/usr/bin/env bash
# A Spark standalone cluster on loopback, from the pyspark distribution in .venv: one master
# and one worker, each its own JVM (what `spark-submit --master spark://...` talks to).
#
#   scripts/spark.sh up      start (idempotent)
#   scripts/spark.sh down    stop both
#
# Master spark://127.0.0.1:$PIPELINE_SPARK_PORT (57077), its web UI on 127.0.0.1:58080
# (PIPELINE_SPARK_UI_PORT); the worker offers PIPELINE_SPARK_WORKER_CORES (1) cores and
# PIPELINE_SPARK_WORKER_MEMORY (1g). Logs and work directories under
# $PIPELINE_SERVICES_DIR/spark (default /tmp/pipeline_defs-services/spark).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DIR=${PIPELINE_SERVICES_DIR:-/tmp/pipeline_defs-services}/spark
PORT=${PIPELINE_SPARK_PORT:-57077}
UI_PORT=${PIPELINE_SPARK_UI_PORT:-58080}
CORES=${PIPELINE_SPARK_WORKER_CORES:-1}
MEMORY=${PIPELINE_SPARK_WORKER_MEMORY:-1g}
[ -x "$ROOT/.venv/bin/python" ] || { echo "spark: run make setup first" >&2; exit 1; }
SPARK_HOME=$("$ROOT/.venv/bin/python" -c "import pyspark,os;print(os.path.dirname(pyspark.__file__))")
export SPARK_HOME SPARK_LOCAL_IP=127.0.0.1 SPARK_LOG_DIR=$DIR
# executors run the project's Python (the same path on this machine)
export PYSPARK_PYTHON=$ROOT/.venv/bin/python

master_up() { curl -fsS -o /dev/null "http://127.0.0.1:$UI_PORT/json/" 2>/dev/null; }
workers() {
  curl -fsS "http://127.0.0.1:$UI_PORT/json/" 2>/dev/null \
    | "$ROOT/.venv/bin/python" -c "import json,sys;print(sum(w['state']=='ALIVE' for w in json.load(sys.stdin)['workers']))"
}
has_worker() { [ "$(workers)" -ge 1 ]; }
alive() { [ -f "$DIR/$1.pid" ] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

start() {  # name class args...
  local name=$1; shift
  setsid "$SPARK_HOME/bin/spark-class" "$@" </dev/null >"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

wait_for() {  # what, test command
  local what=$1; shift
  for _ in $(seq 120); do "$@" && return 0; sleep 0.5; done
  echo "spark: the $what did not start; the end of $DIR/$what.log:" >&2
  tail -5 "$DIR/$what.log" >&2
  exit 1
}

up() {
  mkdir -p "$DIR/work"
  if ! master_up; then
    alive master || start master org.apache.spark.deploy.master.Master --host 127.0.0.1 \
      --port "$PORT" --webui-port "$UI_PORT"
    wait_for master master_up
  fi
  if ! has_worker; then
    alive worker || start worker org.apache.spark.deploy.worker.Worker \
      "spark://127.0.0.1:$PORT" --host 127.0.0.1 --webui-port 0 --cores "$CORES" \
      --memory "$MEMORY" --work-dir "$DIR/work"
    wait_for worker has_worker
  fi
  echo "spark: master spark://127.0.0.1:$PORT (UI http://127.0.0.1:$UI_PORT), 1 worker" \
       "($CORES cores, $MEMORY)"
}

down() {
  for name in worker master; do
    if alive "$name"; then
      kill -- "-$(cat "$DIR/$name.pid")" 2>/dev/null || kill "$(cat "$DIR/$name.pid")"
    fi
    rm -f "$DIR/$name.pid"
  done
}

case ${1:-up} in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
