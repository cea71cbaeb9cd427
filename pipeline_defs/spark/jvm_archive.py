"""A class-data archive of the Spark driver JVM (AppCDS): the JVM maps Spark's classes from
one file instead of finding, reading and verifying them in ~350 jars at every start.

Every `pipeline run`, Dagster run and test starts a driver JVM that loads the same ~20,000
classes (Spark, Hadoop, Delta, the connectors); most of its 3.9 s start-up on 2 cores is that.
JDK 17 can dump the classes a JVM loaded into an archive when it exits
(`-XX:ArchiveClassesAtExit`) and map them at the next start (`-XX:SharedArchiveFile`).

`make setup` builds the archive (`python -m pipeline_defs.spark.make_archive`): a short run of
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

import hashlib
import os
import shutil
from pathlib import Path

from pipeline_defs.spark.paths import REPO_ROOT

ARCHIVE_ENV = "PIPELINE_JVM_ARCHIVE"  # off: no archive; a directory: where archives live
# what spark-submit's launcher builds the driver's classpath from, besides extraClassPath
CLASSPATH_ENV = ("SPARK_HOME", "SPARK_CONF_DIR", "HADOOP_CONF_DIR", "YARN_CONF_DIR",
                 "SPARK_DIST_CLASSPATH", "SPARK_CLASSPATH", "SPARK_PREPEND_CLASSES",
                 "JAVA_HOME")


def archive_dir() -> Path | None:
    where = os.environ.get(ARCHIVE_ENV, "")
    if where.lower() in ("off", "false", "0", "no"):
        return None
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
