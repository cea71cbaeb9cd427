"""A class-data archive of the Spark driver JVM (AppCDS): the JVM maps Spark's classes from
one file instead of finding, reading and verifying them in ~350 jars at every start.

Every `pipeline run`, Dagster run and test starts a driver JVM that loads the same ~20,000
classes (Spark, Hadoop, Delta, the connectors); most of its 3.9 s start-up on 2 cores is that.
JDK 17 can dump the classes a JVM loaded into an archive when it exits
(`-XX:ArchiveClassesAtExit`) and map them at the next start (`-XX:SharedArchiveFile`).

`make setup` builds the archive (`python -m pipeline_defs.jvm_archive`): a short run of
typical work (CSV, Parquet, JSON, a join and an aggregate, a Delta write, read and merge) in
a JVM that dumps its classes as it exits. An archive is only valid for the JDK and the
classpath it was made with, so its file name is a digest of both: the java binary and
libjvm, every jar on the driver's classpath (name, size, time) and the environment variables
spark-submit builds the classpath from. A session whose classpath differs (other jars, a
`SPARK_CONF_DIR`, another JDK) finds no archive of its digest and starts as before; the JVM
checks again itself and ignores, silently, an archive that does not match. Nothing but
start-up time depends on it: `PIPELINE_JVM_ARCHIVE=off` starts without it.
"""
from __future__ import annotations

import csv
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ARCHIVE_ENV = "PIPELINE_JVM_ARCHIVE"  # off: no archive; a directory: where archives live
# what spark-submit's launcher builds the driver's classpath from, besides extraClassPath
CLASSPATH_ENV = ("SPARK_HOME", "SPARK_CONF_DIR", "HADOOP_CONF_DIR", "YARN_CONF_DIR",
                 "SPARK_DIST_CLASSPATH", "SPARK_CLASSPATH", "SPARK_PREPEND_CLASSES",
                 "JAVA_HOME")


def archive_dir() -> Path | None:
    where = os.environ.get(ARCHIVE_ENV, "")
    if where.lower() in ("off", "false", "0", "no"):
        return None
    from pipeline_defs.spark_session import REPO_ROOT
    return Path(where) if where else REPO_ROOT / ".cache" / "jvm-archive"


def _java() -> Path | None:
    home = os.environ.get("JAVA_HOME")
    exe = str(Path(home, "bin", "java")) if home else shutil.which("java")
    return Path(os.path.realpath(exe)) if exe and os.path.exists(exe) else None


def _spark_jars() -> Path:
    home = os.environ.get("SPARK_HOME")
    if not home:
        import pyspark
        home = os.path.dirname(pyspark.__file__)
    return Path(home, "jars")


def _entries(spec: str) -> list[Path]:
    """The files a classpath entry stands for (`dir/*`: the jars in dir)."""
    if spec.endswith("*"):
        d = Path(spec[:-1] or ".")
        return sorted(d.glob("*.jar")) if d.is_dir() else []
    p = Path(spec)
    return sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]


def digest(extra_class_path: str) -> str | None:
    """The archive's identity for a driver with this extraClassPath, in this environment
    (None without a java to run)."""
    java = _java()
    if java is None:
        return None
    h = hashlib.sha256()
    files = [java, java.parent.parent / "lib" / "server" / "libjvm.so"]
    for spec in [*filter(None, extra_class_path.split(os.pathsep)), str(_spark_jars() / "*")]:
        h.update(f"classpath {spec}\n".encode())
        files += _entries(spec)
    for f in files:
        try:
            st = f.stat()
        except OSError:
            h.update(f"{f}:missing\n".encode())
            continue
        h.update(f"{f}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    for k in CLASSPATH_ENV:
        h.update(f"{k}={os.environ.get(k, '')}\n".encode())
    return h.hexdigest()[:20]


def _path(conf: dict[str, str]) -> Path | None:
    where = archive_dir()
    if where is None:
        return None
    key = digest(conf.get("spark.driver.extraClassPath", ""))
    return where / f"driver-{key}.jsa" if key else None


def java_options(conf: dict[str, str]) -> str:
    """The driver's JVM options that map the archive made for this classpath, when there is
    one ("" otherwise: a missing archive file would turn off the JDK's own one too)."""
    path = _path(conf)
    if path is None or not path.is_file():
        return ""
    # the JVM's own check stays: an archive that does not match is ignored, without a word
    option = f"-XX:SharedArchiveFile={path}"
    if " " in option:
        option = f'"{option}"'  # spark-submit splits the options at spaces outside quotes
    return f"{option} -Xlog:cds=off -Xlog:cds+dynamic=off"


# ---------------------------------------------------------------- building it
def build(force: bool = False) -> Path | None:
    """Makes the archive for the default session's classpath (a short run of typical work in
    a JVM that dumps its classes when it exits). Returns its path, None when it cannot."""
    from pipeline_defs.spark_session import SparkSettings, default_jars_dir
    settings = SparkSettings("local[2]", "pipeline_defs-jvm-archive", str(default_jars_dir()))
    conf = settings.builder_conf()
    path = _path(conf)
    if path is None:
        return None
    if path.is_file() and not force:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in path.parent.glob("driver-*.jsa*"):  # one classpath at a time: ~200 MB each
        old.unlink()
    partial = path.with_suffix(".jsa.partial")
    # (classes the JDK cannot archive, e.g. from signed jars, are each named in a warning:
    # they load from their jars as before)
    settings = SparkSettings(settings.master, settings.app_name, settings.jars_dir,
                             (("spark.driver.extraJavaOptions",
                               f"-XX:ArchiveClassesAtExit={partial} -Xlog:cds=off "
                               "-Xlog:cds+dynamic=off"),))
    print("setup: building the driver JVM's class archive (a short Spark run, ~30 s)",
          flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jvm-archive-") as work:
        _typical_work(settings, Path(work))
    if not partial.is_file():
        return None
    partial.rename(path)
    print(f"setup: {path} ({path.stat().st_size / 1e6:.0f} MB) in "
          f"{time.perf_counter() - started:.0f} s")
    return path


def _typical_work(settings, work: Path) -> None:
    """What most runs do, so that their classes are in the archive; the JVM exits at the end
    (it writes the archive as it exits)."""
    from delta.tables import DeltaTable
    from pyspark.sql import functions as F

    from pipeline_defs.spark_session import session
    src = work / "orders.csv"
    with open(src, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "customer", "amount", "day", "note"])
        w.writerows((i, f"c{i % 17}", i * 1.5, f"2024-01-{i % 28 + 1:02d}", f'say "{i}", ok')
                    for i in range(2000))
    spark = session(settings)
    try:
        orders = (spark.read.options(header="true", escape='"')
                  .schema("id BIGINT, customer STRING, amount DOUBLE, day DATE, note STRING")
                  .csv(str(src)))
        customers = spark.createDataFrame([(f"c{i}", f"name {i}") for i in range(17)],
                                          "customer STRING, name STRING")
        summary = (orders.filter("amount > 10").withColumn("big", F.col("amount") > 100)
                   .join(customers, "customer").groupBy("customer", "name")
                   .agg(F.sum("amount").alias("total"), F.count("*").alias("n"),
                        F.avg("amount").alias("mean")))
        table = str(work / "delta")
        summary.write.format("delta").mode("overwrite").save(table)
        (DeltaTable.forPath(spark, table).alias("t")
         .merge(summary.alias("s"), "t.customer = s.customer")
         .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
        spark.read.format("delta").load(table).orderBy("customer").collect()
        orders.write.mode("overwrite").parquet(str(work / "parquet"))
        orders.write.mode("overwrite").json(str(work / "json"))
        spark.read.parquet(str(work / "parquet")).unionByName(
            spark.read.schema(orders.schema).json(str(work / "json"))).count()
    finally:
        spark.stop()
        gateway = _gateway()
        if gateway is not None:
            gateway.shutdown()
            gateway.proc.stdin.close()  # the gateway JVM exits at EOF, dumping the archive
            gateway.proc.wait(timeout=600)


def _gateway():
    from pyspark import SparkContext
    return SparkContext._gateway


if __name__ == "__main__":
    sys.exit(0 if build(force="--force" in sys.argv) else 1)
