"""The Spark resource: the run's SparkSession (from `pipeline_defs.spark.session`, one per
process) and the watcher that cancels its Spark jobs when the run is terminated."""
from __future__ import annotations

import os
import threading
import time
from typing import Any

import dagster as dg
from dagster_pyspark import LazyPySparkResource
from pydantic import Field, PrivateAttr
from pyspark.sql import SparkSession

from pipeline_defs.common.errors import PipelineError
from pipeline_defs.spark import acceleration
from pipeline_defs.spark.session import (  # noqa: F401 - re-exported
    JOINED,
    SparkSettings,
    default_jars_dir,
    first_report_of_start,
    local_cores,
    refused,
    session,
    settings_from_env,
    start_in_background,
)


class RunWatcher(threading.Thread):
    """Watches the run's status; when a termination is requested (CANCELING), cancels every
    Spark job of the session at once (a Spark action ignores Dagster's interrupt: the run
    would stay CANCELING until the action ends by itself). A cancelled job commits nothing:
    no Delta commit, no published JDBC staging table. Streaming queries are left to the
    run's streams op, which stops them between two micro-batches."""

    POLL_S = 0.5

    def __init__(self, instance, run_id: str, resource: SparkResource):
        super().__init__(name=f"run-watcher-{run_id[:8]}", daemon=True)
        self.instance, self.run_id, self.resource = instance, run_id, resource
        self.stop, self.cancelled = threading.Event(), False

    def run(self) -> None:
        stopping = (dg.DagsterRunStatus.CANCELING, dg.DagsterRunStatus.CANCELED)
        while not self.stop.wait(self.POLL_S):
            try:
                run = self.instance.get_run_by_id(self.run_id)
            except Exception:  # noqa: BLE001 - storage busy or closing: look again
                continue
            if run is not None and run.status in stopping:
                self.cancelled = True
                break
        # Cancelled: every job of the session now and every job started until the run ends
        # (a termination that lands while a step prepares its write, before the write's job
        # is submitted, would otherwise let that job run to its end)
        while self.cancelled:
            session = self.resource._session
            if session is not None:
                try:
                    if session.streams.active:  # stopped gracefully by the streams op
                        return
                    session.sparkContext.cancelAllJobs()
                except Exception:  # noqa: BLE001 - the session is stopping with the run
                    return
            if self.stop.wait(self.POLL_S):
                return


def default_spark_config() -> dict[str, str]:
    """What a run gets unless its config says otherwise (shown in the Launchpad)."""
    return {"spark.master": os.environ.get("SPARK_MASTER", "local[*]"),
            "spark.app.name": "pipeline_defs"}


class SparkResource(LazyPySparkResource):
    """The run's SparkSession: dagster-pyspark's LazyPySparkResource, so a run sets any Spark
    setting in `spark_config` (Launchpad, run config, `pipeline run --spark-conf`), merged
    with what the product needs (Delta, connector jars, redaction, this Python for workers).
    One session per process, started on first use (or ahead, by `pipeline run`); a watcher
    cancels its Spark jobs when the run is terminated."""

    spark_config: dict[str, Any] = Field(
        default_factory=default_spark_config, description="Spark settings of the run, e.g. "
        "{\"spark.sql.shuffle.partitions\": \"8\", \"spark.executor.memory\": \"4g\", "
        "\"spark.master\": \"spark://host:7077\"}. Runtime SQL settings apply to this run; "
        "static ones (master, memory, jars) when the process's session starts. The product's "
        "own settings (Delta catalog, redaction, UTC) cannot be changed; extensions, jars and "
        "Java options are added to its own.")
    jars_dir: str = Field(
        default_factory=lambda: str(default_jars_dir()), description="Connector jars: on the "
        "driver's classpath in local mode, shipped to executors on a cluster.")

    _session: SparkSession | None = PrivateAttr(None)
    _watcher: RunWatcher | None = PrivateAttr(None)
    _restore: dict = PrivateAttr(default_factory=dict)

    @classmethod
    def _is_dagster_maintained(cls) -> bool:
        return False

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        problems = refused(self.settings_conf())
        if problems:
            raise PipelineError("Spark settings refused: " + "; ".join(problems) + ".")
        existing = SparkSession._instantiatedSession
        waited = time.perf_counter()
        if existing is not None and existing.sparkContext._jsc is not None:
            self._apply_to(existing, context.log)
        else:  # started here, so that no step is charged with the JVM's start
            self._session = session(self.settings)
        waited = time.perf_counter() - waited
        # the session this process started (here, or in the background while Dagster
        # loaded: `pipeline run`), said once, by the first run that uses it
        started = first_report_of_start()
        if started is not None and context.log is not None:
            live = SparkSession._instantiatedSession
            sc = live.sparkContext
            native = "on (Comet)" if acceleration.active(live) else "off"
            context.log.info(
                f"Spark session started in {started:.1f}s (master {sc.master}, Spark "
                f"{sc.version}, app {sc.applicationId}, native execution {native}); the run "
                f"waited {waited:.1f}s for it before its first step")
        if context.instance is not None and context.run_id:
            self._watcher = RunWatcher(context.instance, context.run_id, self)
            self._watcher.start()

    def settings_conf(self) -> dict[str, str]:
        return dict(self.settings.conf)

    def _apply_to(self, s: SparkSession, log) -> None:
        """A session already runs in this process (an earlier run's, or started ahead):
        runtime settings this run asks for are set until it ends; static ones that differ
        cannot be, and the run says so."""
        defaults = default_spark_config()
        settings = self.settings
        static = []
        for k, v in {"spark.master": settings.master, "spark.app.name": settings.app_name,
                     **dict(settings.conf)}.items():
            current = s.sparkContext.master if k == "spark.master" else \
                s.sparkContext.appName if k == "spark.app.name" else s.conf.get(k, None)
            if k in JOINED:  # entries the running session's list lacks cannot be added
                have = (current or "").split(JOINED[k])
                if any(i and i not in have for i in v.split(JOINED[k])):
                    static.append(f"{k}={v} (the session has {current})")
                continue
            if current == v:
                continue
            # Comet's switch is read at each query's planning, though Spark does not know it
            if k not in defaults and (s.conf.isModifiable(k) or k == acceleration.ENABLED_KEY):
                self._restore.setdefault(k, current)
                s.conf.set(k, v)
            elif defaults.get(k) != v:  # asked for by this run, not the environment's default
                static.append(f"{k}={v} (the session has {current})")
        if static and log is not None:
            log.warning("Spark settings not applied to this run: " + ", ".join(static) + ". "
                        "They are fixed when a process starts its Spark session, and this "
                        "process's session was started by an earlier run with other values; "
                        "they apply in a new process (a run launched from the UI or `pipeline "
                        "run` gets one).")

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._watcher is not None:
            self._watcher.stop.set()
        if self._session is not None or self._restore:
            s = self._session or SparkSession._instantiatedSession
            try:
                if self._restore:  # the settings this run changed on a shared session
                    for k, v in self._restore.items():
                        s.conf.unset(k) if v is None else s.conf.set(k, v)
                s.catalog.clearCache()  # what the run persisted (conditions, `cache` steps)
            except Exception:  # noqa: BLE001 - a session already stopped has nothing cached
                pass

    @property
    def cancelled(self) -> bool:
        """The run was asked to stop (terminated from the UI, or `pipeline run` got SIGINT/
        SIGTERM): its Spark jobs were cancelled, and no step starts new ones."""
        return self._watcher is not None and self._watcher.cancelled

    @property
    def settings(self) -> SparkSettings:
        return SparkSettings.from_spark_config(self.spark_config, self.jars_dir)

    @property
    def spark(self) -> SparkSession:
        if self._session is None:
            self._session = session(self.settings)
        return self._session

    @property
    def spark_session(self) -> SparkSession:  # dagster-pyspark's name for it
        return self.spark

    @property
    def spark_context(self):
        return self.spark.sparkContext
