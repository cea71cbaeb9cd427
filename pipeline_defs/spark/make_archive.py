"""Builds the driver JVM's class-data archive (jvm_archive.py) for the default session's
classpath: `python -m pipeline_defs.spark.make_archive [--force]`, run by `make setup`."""
from __future__ import annotations

import csv
import sys
import tempfile
import time
from pathlib import Path

from pipeline_defs.spark.jvm_archive import _path
from pipeline_defs.spark.paths import default_jars_dir
from pipeline_defs.spark.session import SparkSettings, session


def build(force: bool = False) -> Path | None:
    """Makes the archive for the default session's classpath (a short run of typical work in
    a JVM that dumps its classes when it exits). Returns its path, None when it cannot."""
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
