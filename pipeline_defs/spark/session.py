"""The process's SparkSession: configured once, with Delta and the connector jars.

Static settings (jars, extensions) are fixed before the JVM starts, so every session of a
process comes from `session(settings)`. `start_in_background` lets the CLI overlap the JVM's
start-up with Dagster's: this module imports neither Dagster nor pydantic, so `pipeline run`
launches the JVM before it imports them (measured: 0.45 s earlier than from the resource
module, which imports Dagster first)."""
from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pyspark.sql import SparkSession

from pipeline_defs.common.errors import PipelineError
from pipeline_defs.spark import acceleration, jvm_archive
from pipeline_defs.spark.paths import default_jars_dir

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"
SECRET_REGEX = r"(?i)secret|password|token|access[.]?key|credential|jaas"
OPTION_REGEX = r"(?i)url|password|secret|token|access[.]?key|user|jaas"
# What a user's setting may not change, and why (the message names the key and the fix).
FIXED = {
    "spark.sql.catalog.spark_catalog": (DELTA_CATALOG, "Delta tables by name need it"),
    "spark.redaction.regex": (SECRET_REGEX, "it keeps secrets out of Spark's UI and logs"),
    "spark.sql.redaction.options.regex": (OPTION_REGEX, "it keeps credentials in read and "
                                          "write options out of plans and the UI"),
    "spark.sql.session.timeZone": ("UTC", "timestamps are read, computed and loaded into "
                                   "databases as UTC"),
}
# Lists a user's setting adds to (the product's entries first).
JOINED = {"spark.sql.extensions": ",", "spark.jars": ",", "spark.driver.extraClassPath":
          os.pathsep, "spark.driver.extraJavaOptions": " ", "spark.plugins": ",",
          "spark.driver.extraLibraryPath": os.pathsep,
          "spark.executor.extraLibraryPath": os.pathsep}


def refused(conf: dict[str, str]) -> list[str]:
    """The user's settings that would break one the product needs, each with the fix."""
    out = []
    for k, v in conf.items():
        if k in FIXED and str(v) != FIXED[k][0]:
            out.append(f"{k} cannot be changed ({FIXED[k][1]}); remove it from spark_config")
        if k == "spark.pyspark.python" and Path(str(v)).resolve() != Path(sys.executable
                                                                          ).resolve():
            out.append(f"{k} must be this environment's Python ({sys.executable}): Python "
                       "workers import this product; remove it from spark_config")
    return out


@dataclass(frozen=True)
class SparkSettings:
    master: str = "local[*]"
    app_name: str = "pipeline_defs"
    jars_dir: str = ""
    conf: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def builder_conf(self) -> dict[str, str]:
        jars_dir = Path(self.jars_dir) if self.jars_dir else default_jars_dir()
        jars = sorted(str(p) for p in jars_dir.glob("*.jar")) if jars_dir.is_dir() else []
        if not jars:
            raise PipelineError(f"no connector jars in {jars_dir}. Run `make setup` (it resolves "
                                "them with Maven), or set PIPELINE_JARS_DIR.")
        problems = refused(dict(self.conf))
        if problems:
            raise PipelineError("Spark settings refused: " + "; ".join(problems) + ".")
        conf = {
            "spark.sql.extensions": DELTA_EXTENSION,
            "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.session.timeZone": "UTC",
            # Secrets in options and Hadoop settings are masked in plans and the UI.
            "spark.redaction.regex": SECRET_REGEX,
            "spark.sql.redaction.options.regex": OPTION_REGEX,
        }
        log4j = Path(__file__).parent / "log4j2.properties"
        conf["spark.driver.extraJavaOptions"] = f"-Dlog4j2.configurationFile={log4j.as_uri()}" \
            + _no_missing_native_blas()
        # Python workers use this interpreter (the venv), not whatever `python3` is on PATH.
        conf["spark.pyspark.python"] = os.environ.get("PYSPARK_PYTHON", sys.executable)
        if self.master.startswith("local"):
            # In local mode the executors live in the driver JVM: a classpath entry is enough,
            # and avoids copying ~700 MB of jars into every session's work directory.
            conf["spark.driver.extraClassPath"] = str(jars_dir / "*")
            # Delta rebuilds a table's state with this many tasks (default 50) at every
            # commit it reads; on a few local cores that is most of a small streaming
            # micro-batch (measured: 5-15 s per 1 s micro-batch -> 1.5 s with 2)
            conf["spark.databricks.delta.snapshotPartitions"] = str(local_cores(self.master))
        else:
            conf["spark.jars"] = ",".join(jars)
        # native execution (Comet), unless turned off; the user's own values win below
        conf.update(acceleration.settings(jars_dir, dict(self.conf)))
        for k, v in self.conf:
            sep = JOINED.get(k)
            if sep and conf.get(k):  # the product's entries, then the user's new ones
                ours = conf[k].split(sep)
                conf[k] = sep.join(ours + [i for i in v.split(sep) if i and i not in ours])
            else:
                conf[k] = v
        # the JVM's class archive, when one was made for this classpath (jvm_archive.py);
        # first, so that the user's own flags win
        archive = jvm_archive.java_options(conf)
        if archive:
            java = "spark.driver.extraJavaOptions"
            conf[java] = f"{archive} {conf[java]}"
        return conf

    @classmethod
    def from_spark_config(cls, spark_config: dict, jars_dir: str = "") -> SparkSettings:
        """Settings from a `spark_config` mapping (dagster-pyspark's form): spark.master and
        spark.app.name (defaults: $SPARK_MASTER or local[*], pipeline_defs), the rest as is."""
        conf = {k: str(v).lower() if isinstance(v, bool) else str(v)
                for k, v in spark_config.items()}
        master = conf.pop("spark.master", None) or os.environ.get("SPARK_MASTER", "local[*]")
        app = conf.pop("spark.app.name", None) or "pipeline_defs"
        return cls(master, app, jars_dir, tuple(sorted(conf.items())))


def _no_missing_native_blas() -> str:
    """MLlib's BLAS tries the system's libblas.so.3 first and, when there is none, its native
    loader prints a line on the terminal; without one, go to the Java implementation
    directly (with one, keep it: it is the fast path)."""
    import ctypes.util
    if ctypes.util.find_library("blas") or ctypes.util.find_library("openblas"):
        return ""
    return " -Ddev.ludovic.netlib.blas.allowNative=false" \
        " -Ddev.ludovic.netlib.lapack.allowNative=false" \
        " -Ddev.ludovic.netlib.arpack.allowNative=false"


def local_cores(master: str) -> int:
    inside = master[master.find("[") + 1:master.find("]")] if "[" in master else "1"
    n = os.cpu_count() or 2 if inside.strip() == "*" else int(inside.split(",")[0] or 1)
    return max(2, n)


_lock = threading.Lock()
_background: threading.Thread | None = None
_started_in: list[float] = []  # how long this process's session took to start


_reported: list[bool] = []  # the start was said in a run's log


def spark_start_seconds() -> float | None:
    """How long this process's SparkSession took to start (None: not started here)."""
    return _started_in[0] if _started_in else None


def first_report_of_start() -> float | None:
    """spark_start_seconds(), the first time it is asked for after the start; else None."""
    with _lock:
        if not _started_in or _reported:
            return None
        _reported.append(True)
        return _started_in[0]


def session(settings: SparkSettings) -> SparkSession:
    """The process's SparkSession, created on first use."""
    with _lock:
        existing = SparkSession._instantiatedSession
        if existing is not None and existing.sparkContext._jsc is not None:
            return existing
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers: this venv's Python
        # Comet's Rust library logs to stderr at INFO unless told (it reads this at start)
        os.environ.setdefault("COMET_LOG_LEVEL", os.environ.get("SPARK_LOG_LEVEL", "ERROR"))
        started = time.perf_counter()
        b = SparkSession.builder.master(settings.master).appName(settings.app_name)
        for k, v in settings.builder_conf().items():
            b = b.config(k, v)
        s = b.getOrCreate()
        s.sparkContext.setLogLevel(os.environ.get("SPARK_LOG_LEVEL", "ERROR"))
        _started_in[:] = [time.perf_counter() - started]
        _reported.clear()
        return s


def start_in_background(settings: SparkSettings) -> None:
    """Start the JVM and session now, on another thread; `session()` later waits for it."""
    global _background

    def run() -> None:
        try:
            session(settings)
        except Exception:  # noqa: BLE001 - the foreground call reports the same error
            return

    _background = threading.Thread(target=run, name="spark-start", daemon=True)
    _background.start()


def settings_from_env() -> SparkSettings:
    return SparkSettings(master=os.environ.get("SPARK_MASTER", "local[*]"),
                         jars_dir=str(default_jars_dir()))
