#!/usr/bin/env bash
# Idempotent set-up: .venv with the pinned packages, the JVM connector jars, sample data.
# Each part is redone only when its inputs change (stamp files), so a second run is fast.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

# 1. Python environment
stamp=".venv/.installed-$(hash_of pyproject.toml)"
if [ ! -f "$stamp" ]; then
  echo "setup: creating .venv and installing pinned packages"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test,ml]"
  rm -f .venv/.installed-*; touch "$stamp"
fi

# 2. JVM connector jars (declared once in jvm/pom.xml), resolved by Maven into .cache/jars.
jstamp=".cache/jars/.resolved-$(hash_of jvm/pom.xml scripts/setup.sh)"
if [ ! -f "$jstamp" ]; then
  echo "setup: resolving connector jars with Maven (jvm/pom.xml)"
  tmp=$(mktemp -d .cache/jars.XXXX 2>/dev/null || { mkdir -p .cache; mktemp -d .cache/jars.XXXX; })
  mvn -q -B -f jvm/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$ROOT/$tmp"
  # Drop what the pyspark wheel already ships (same artifact, maybe another version): two copies
  # of scala-library or jackson on one classpath is how NoSuchMethodErrors are born.
  pyjars=$(.venv/bin/python -c "import pyspark,os;print(os.path.join(os.path.dirname(pyspark.__file__),'jars'))")
  for j in "$tmp"/*.jar; do
    a=$(basename "$j" .jar | sed -E 's/-[0-9][^-]*(-[A-Za-z0-9.]+)?$//')
    if compgen -G "$pyjars/${a}-[0-9]*.jar" >/dev/null; then rm "$j"; fi
  done
  rm -rf .cache/jars && mv "$tmp" .cache/jars && touch "$jstamp"
fi

# 2b. The product's JVM helpers (jvm/helpers: the bulk loader that runs COPY / LOAD DATA in
#     Spark's executors, the listener that reports which operators ran natively), compiled
#     against the pyspark wheel's jars and the connector jars into .cache/jars, so they are on
#     the driver's classpath in local mode and shipped to the executors on a cluster.
hsrc=$(ls jvm/helpers/src/pipeline_defs/*.java)
hstamp=".cache/jars/.helpers-$(hash_of $hsrc)"
if [ ! -f "$hstamp" ]; then
  echo "setup: compiling the JVM helpers (jvm/helpers)"
  pyjars=$(.venv/bin/python -c "import pyspark,os;print(os.path.join(os.path.dirname(pyspark.__file__),'jars'))")
  out=$(mktemp -d)
  javac -nowarn --release 17 -d "$out" -cp "$pyjars/*:.cache/jars/*" $hsrc
  rm -f .cache/jars/pipeline-defs-bulkload.jar
  jar cf .cache/jars/pipeline-defs-helpers.jar -C "$out" .
  rm -rf "$out" .cache/jars/.bulkload-* .cache/jars/.helpers-*; touch "$hstamp"
fi

# A separate classpath resolved from its own pom (a JVM of its own runs it), redone when the
# pom changes: resolve_jars <pom> <directory under .cache> <what>
resolve_jars() {
  local pom=$1 dir=.cache/$2 stamp tmp
  stamp="$dir/.resolved-$(hash_of "$pom")"
  [ -f "$stamp" ] && return
  echo "setup: resolving $3 with Maven ($pom)"
  tmp=$(mktemp -d "$dir.XXXX")
  mvn -q -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$ROOT/$tmp"
  rm -rf "$dir" && mv "$tmp" "$dir" && touch "$dir/.resolved-$(hash_of "$pom")"
}

# 3. The Kafka broker the tests and `make kafka-up` run; the HDFS (Hadoop's MiniDFSCluster)
#    the tests watch with a newFiles sensor
resolve_jars jvm/kafka/pom.xml kafka-jars "the Kafka broker jars"
resolve_jars jvm/hdfs/pom.xml hdfs-jars "the test HDFS jars"

# 4. Sample data for the example pipelines in configs/
dstamp=".cache/sample-data/.generated-$(hash_of pipeline_defs/sample_data.py)"
if [ ! -f "$dstamp" ]; then
  echo "setup: generating sample data in .cache/sample-data"
  rm -rf .cache/sample-data
  .venv/bin/python -m pipeline_defs.sample_data .cache/sample-data
  touch "$dstamp"
fi

# 5. The driver JVM's class-data archive (pipeline_defs/spark/jvm_archive.py): Spark's classes mapped
#    from one file at every start instead of read from the jars (~2 s of start-up). Made once
#    per JDK and classpath, after the jars above; a run without one starts the usual way.
.venv/bin/python -m pipeline_defs.spark.make_archive || echo "setup: no JVM class archive (runs start without one)"
echo "setup: ready (.venv, $(ls .cache/jars/*.jar | wc -l) connector jars, sample data)"
