#!/usr/bin/env bash
# A single-node Apache Kafka broker in KRaft mode (broker + controller, no ZooKeeper) on
# loopback, run from the Maven Central jars set-up resolved into .cache/kafka-jars.
#
#   scripts/kafka.sh up      format a fresh data directory (first time) and start; idempotent
#   scripts/kafka.sh down    stop it and delete its data
#
# PIPELINE_KAFKA_PORT (29092; the controller listens on the next port, and a SASL_PLAINTEXT
# listener (mechanism PLAIN, users etl / etl-dev-secret and admin / admin-dev-secret: a
# development broker's, for testing client properties) on the one after; all below Linux's
# ephemeral range 32768-60999, where a client socket can hold the port when the broker binds),
# PIPELINE_KAFKA_PARTITIONS (1): partitions of a topic created on first use,
# data under $PIPELINE_SERVICES_DIR/kafka (default /tmp/pipeline_defs-services/kafka).
# Like a default Kafka, the broker creates a topic when a client first produces to it or
# reads it. A broker already running with other settings is restarted with these.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DIR=${PIPELINE_SERVICES_DIR:-/tmp/pipeline_defs-services}/kafka
PORT=${PIPELINE_KAFKA_PORT:-29092}
CPORT=$((PORT + 1))
SPORT=$((PORT + 2))
PARTITIONS=${PIPELINE_KAFKA_PARTITIONS:-1}
CP="$ROOT/.cache/kafka-jars/*"

ping_kafka() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

# The pid file's process is our broker (a pid left by a previous machine state may now be
# any other process).
running() {
  [ -f "$DIR/broker.pid" ] && grep -qs kafka.Kafka "/proc/$(cat "$DIR/broker.pid")/cmdline"
}

up() {
  [ -d "$ROOT/.cache/kafka-jars" ] || { echo "kafka: run make setup first" >&2; exit 1; }
  mkdir -p "$DIR"
  properties >"$DIR/server.properties.next"
  if running && ! cmp -s "$DIR/server.properties.next" "$DIR/server.properties"; then
    echo "kafka: restarting the broker with new settings"
    stop
  fi
  if ping_kafka; then return; fi
  if running; then
    wait_up; return  # starting already (a slow machine): wait for it, never start a second
  fi
  mv "$DIR/server.properties.next" "$DIR/server.properties"
  if [ ! -f "$DIR/data/meta.properties" ]; then
    java -cp "$CP" kafka.tools.StorageTool format --standalone -c "$DIR/server.properties" \
      -t "$(python3 -c 'import uuid,base64;print(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))')" \
      >"$DIR/format.log" 2>&1
  fi
  setsid java -Xms256m -Xmx768m -XX:+UseG1GC -Dlog4j2.level=WARN -cp "$CP" kafka.Kafka \
    "$DIR/server.properties" </dev/null >"$DIR/broker.log" 2>&1 &
  echo $! >"$DIR/broker.pid"
  wait_up
  echo "kafka: broker on 127.0.0.1:$PORT"
}

properties() {  # jvm/kafka/server.properties.in, filled in
  sed -e "s|@PORT@|$PORT|g" -e "s|@CONTROLLER_PORT@|$CPORT|g" -e "s|@SASL_PORT@|$SPORT|g" \
      -e "s|@DATA@|$DIR/data|g" -e "s|@PARTITIONS@|$PARTITIONS|g" \
      "$ROOT/jvm/kafka/server.properties.in"
}

# Waits for the listener; a broker that exits while starting (a port taken, a bad data
# directory) is reported at once with the cause from its log, not after the timeout.
wait_up() {
  for _ in $(seq 360); do
    ping_kafka && return
    if ! running; then
      echo "kafka: the broker exited while starting; from $DIR/broker.log:" >&2
      grep -m 3 -E "ERROR|Exception" "$DIR/broker.log" >&2 || tail -5 "$DIR/broker.log" >&2
      rm -f "$DIR/broker.pid"
      exit 1
    fi
    sleep 0.5
  done
  echo "kafka: the broker did not start within 180 s, see $DIR/broker.log" >&2
  tail -5 "$DIR/broker.log" >&2; exit 1
}

stop() {
  if running; then
    pid=$(cat "$DIR/broker.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/broker.pid"
}

down() {
  stop
  rm -rf "$DIR"
}

case ${1:-up} in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
