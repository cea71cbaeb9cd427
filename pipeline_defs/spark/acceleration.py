"""Native execution: Apache DataFusion Comet, Spark's plugin that runs scans, filters,
projections, joins, aggregates and shuffles in Rust on Arrow batches, falling back to Spark
operator by operator where it cannot.

On when its jar is among the connector jars (jvm/pom.xml) unless `PIPELINE_ACCELERATION=off`
or the run's `spark_config` says `spark.comet.enabled: false`. A plugin is fixed when the JVM
starts, so this decides the settings of the process's session; a run can still turn Comet off
for its own queries at runtime (`spark.comet.enabled` is a SQL setting). docs/acceleration.md
has what was measured and what stays on Spark.

The Rust library (145 MB inside the jar) is unpacked once into .cache/native and found
through the driver's library path; otherwise Comet would copy it to /tmp at every start.
"""
from __future__ import annotations

import hashlib
import os
import zipfile
from contextlib import contextmanager
from pathlib import Path

from pipeline_defs.spark.paths import REPO_ROOT

ENV = "PIPELINE_ACCELERATION"  # on (default) | off
ENABLED_KEY = "spark.comet.enabled"
PLUGIN = "org.apache.spark.CometPlugin"
SHUFFLE = "org.apache.spark.sql.comet.execution.shuffle.CometShuffleManager"
JAR_GLOB = "comet-spark-*.jar"
# Off-heap memory (Comet's pool, and Spark's own execution memory once off-heap is on): a
# share of the machine's memory, within bounds; `spark.memory.offHeap.size` overrides it.
OFFHEAP_SHARE, OFFHEAP_MIN_MB, OFFHEAP_MAX_MB = 0.25, 1024, 32768


def _off(value: str | None) -> bool:
    return str(value).strip().lower() in ("off", "false", "0", "no")


def jar(jars_dir: Path) -> Path | None:
    found = sorted(jars_dir.glob(JAR_GLOB)) if jars_dir.is_dir() else []
    return found[-1] if found else None


def wanted(user_conf: dict[str, str]) -> bool:
    """Acceleration asked for: not turned off by the environment or the run's settings."""
    return not _off(os.environ.get(ENV, "on")) and not _off(user_conf.get(ENABLED_KEY, "true"))


def machine_memory_mb() -> int:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    except (OSError, ValueError):  # not a POSIX system: the floor
        return OFFHEAP_MIN_MB * 4


def offheap_mb(memory_mb: int | None = None) -> int:
    memory = machine_memory_mb() if memory_mb is None else memory_mb
    return int(min(OFFHEAP_MAX_MB, max(OFFHEAP_MIN_MB, memory * OFFHEAP_SHARE)))


def _platform() -> str:
    machine = os.uname().machine.lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "aarch64",
            "arm64": "aarch64"}.get(machine, machine)


def native_library_dir(comet_jar: Path, cache: Path | None = None) -> Path | None:
    """A directory holding libcomet.so for this machine, unpacked from the jar once (keyed by
    the jar's name, size and time); None when the jar has no library for this machine (Comet
    then says so itself and Spark runs everything)."""
    st = comet_jar.stat()
    key = hashlib.sha256(f"{comet_jar.name}:{st.st_size}:{st.st_mtime_ns}".encode()
                         ).hexdigest()[:16]
    where = (cache or REPO_ROOT / ".cache" / "native") / f"comet-{key}"
    lib = where / "libcomet.so"
    if lib.is_file():
        return where
    member = f"org/apache/comet/linux/{_platform()}/libcomet.so"
    try:
        with zipfile.ZipFile(comet_jar) as z, z.open(member) as src:
            where.mkdir(parents=True, exist_ok=True)
            tmp = where / f".libcomet.so.{os.getpid()}"
            with open(tmp, "wb") as dst:
                while chunk := src.read(1 << 22):
                    dst.write(chunk)
            tmp.replace(lib)  # whole or not at all: processes starting together agree
    except (KeyError, zipfile.BadZipFile):
        return None
    except OSError:  # a read-only checkout: Comet unpacks it to /tmp itself
        return None
    return where


def settings(jars_dir: Path, user_conf: dict[str, str]) -> dict[str, str]:
    """The session settings that turn native execution on ({} when it is off or absent)."""
    comet = jar(jars_dir)
    if comet is None or not wanted(user_conf):
        return {}
    conf = {
        "spark.plugins": PLUGIN,
        "spark.shuffle.manager": SHUFFLE,
        "spark.memory.offHeap.enabled": "true",
        "spark.memory.offHeap.size": f"{offheap_mb()}m",
        # fallbacks are reported per step (NativeCoverage), not logged per query
        "spark.comet.explainFallback.enabled": "false",
        # Comet's JVM columnar shuffle (for rows of non-native operators) calls an RDD method
        # whose signature changed in Spark 4.2 (NoSuchMethodError): native shuffles only;
        # the others stay Spark's
        "spark.comet.exec.shuffle.mode": "native",
        # so do its TakeOrderedAndProject (ORDER BY ... LIMIT) and CollectLimit: Spark's
        "spark.comet.exec.takeOrderedAndProject.enabled": "false",
        "spark.comet.exec.collectLimit.enabled": "false",
        # its JVM codegen dispatcher (ScalaUDFs, the regex family) compiles against a Spark
        # 4.1 class that 4.2 lacks (GeometryVal): those operators stay on Spark
        "spark.comet.exec.scalaUDF.codegen.enabled": "false",
    }
    lib = native_library_dir(comet)
    if lib is not None:
        # executors on this machine (a standalone or local-cluster master) find it there too;
        # on another machine without the directory Comet unpacks its own copy
        conf["spark.driver.extraLibraryPath"] = str(lib)
        conf["spark.executor.extraLibraryPath"] = str(lib)
    return conf


def active(spark) -> bool:
    """Comet runs this session's queries now (plugin loaded and not turned off)."""
    conf = spark.sparkContext.getConf()
    return PLUGIN in (conf.get("spark.plugins") or "") and \
        not _off(spark.conf.get(ENABLED_KEY, "true"))


@contextmanager
def turned_off(spark):
    """Comet off for the session's queries while inside (a step run again on Spark)."""
    before = spark.conf.get(ENABLED_KEY, "true")
    spark.conf.set(ENABLED_KEY, "false")
    try:
        yield
    finally:
        spark.conf.set(ENABLED_KEY, before)


def native_failure(e: BaseException) -> str | None:
    """When Comet's native execution is in the error's JVM trace: the error's first line (the
    step may succeed on Spark); else None."""
    from pyspark import SparkContext
    je = getattr(e, "java_exception", None) or getattr(e, "_origin", None)
    trace = str(e)
    if je is not None and SparkContext._jvm is not None:
        try:
            trace += SparkContext._jvm.org.apache.spark.util.Utils.exceptionString(je)
        except Exception:  # noqa: BLE001 - the gateway is gone: the message alone
            pass
    if not any(m in trace for m in ("org.apache.comet.", "CometNative", "DataFusion error")):
        return None
    for line in trace.splitlines():  # Comet's own message, e.g. "Not enough memory to ..."
        for marker in ("CometNativeException: ", "CometRuntimeException: "):
            if marker in line:
                return line.split(marker, 1)[1].strip()[:300]
    first = next((ln.strip() for ln in trace.splitlines() if "Comet" in ln), type(e).__name__)
    return first[:300]


# ---------------------------------------------------------------- which operators ran natively
def _coverage(spark):
    jvm = spark.sparkContext._jvm
    return jvm.pipeline_defs.NativeCoverage.install(spark.sparkContext._jsc.sc())


def watch(spark, group: str) -> bool:
    """Start tallying the operators of the job group's queries; False without the helper jar
    (an old set-up)."""
    try:
        _coverage(spark).watch(group)
    except Exception:  # noqa: BLE001 - no helper jar: nothing is reported, nothing breaks
        return False
    return True


def drain(spark, group: str) -> dict | None:
    """What the group's queries ran since watch(): {"queries": n, "native": [op, ...],
    "spark": {op: reason}}; None when nothing ran."""
    try:
        text = str(_coverage(spark).drain(group))
    except Exception:  # noqa: BLE001
        return None
    out: dict = {"queries": 0, "native": [], "spark": {}}
    for line in text.splitlines():
        parts = line.split("\t")
        if parts[0] == "queries":
            out["queries"] = int(parts[1])
        elif parts[0] == "native":
            out["native"].append(parts[1])
        elif parts[0] == "spark":
            out["spark"][parts[1]] = parts[2] if len(parts) > 2 else ""
    return out if out["queries"] else None
