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
  .venv/bin/python -m pip install -q -e ".[test]"
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

# 3. The Kafka broker the tests and `make kafka-up` run (its own classpath, its own JVM)
kstamp=".cache/kafka-jars/.resolved-$(hash_of jvm/kafka/pom.xml)"
if [ ! -f "$kstamp" ]; then
  echo "setup: resolving the Kafka broker jars with Maven (jvm/kafka/pom.xml)"
  tmp=$(mktemp -d .cache/kafka-jars.XXXX)
  mvn -q -B -f jvm/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$ROOT/$tmp"
  rm -rf .cache/kafka-jars && mv "$tmp" .cache/kafka-jars && touch "$kstamp"
fi

# 3b. The HDFS the tests watch with a newFiles sensor (Hadoop's MiniDFSCluster, its own JVM)
hstamp=".cache/hdfs-jars/.resolved-$(hash_of jvm/hdfs/pom.xml)"
if [ ! -f "$hstamp" ]; then
  echo "setup: resolving the test HDFS jars with Maven (jvm/hdfs/pom.xml)"
  tmp=$(mktemp -d .cache/hdfs-jars.XXXX)
  mvn -q -B -f jvm/hdfs/pom.xml dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$ROOT/$tmp"
  rm -rf .cache/hdfs-jars && mv "$tmp" .cache/hdfs-jars && touch "$hstamp"
fi

# 4. Sample data for the example pipelines in configs/
dstamp=".cache/sample-data/.generated-$(hash_of pipeline_defs/sample_data.py)"
if [ ! -f "$dstamp" ]; then
  echo "setup: generating sample data in .cache/sample-data"
  rm -rf .cache/sample-data
  .venv/bin/python -m pipeline_defs.sample_data .cache/sample-data
  touch "$dstamp"
fi
echo "setup: ready (.venv, $(ls .cache/jars/*.jar | wc -l) connector jars, sample data)"
