"""The Spark resource: the run's SparkSession (from `pipeline_defs.spark_session`, one per
process) and the watcher that cancels its Spark jobs when the run is terminated."""
from __future__ import annotations

import threading

import dagster as dg
from pydantic import Field, PrivateAttr
from pyspark.sql import SparkSession

from pipeline_defs.spark_session import (  # noqa: F401 - re-exported
    REPO_ROOT,
    SparkSettings,
    default_jars_dir,
    local_cores,
    session,
    settings_from_env,
    start_in_background,
)


class RunWatcher(threading.Thread):
    """Watches the run's status; when a termination is requested (CANCELING), cancels every
    Spark job of the session at once (a Spark action ignores Dagster's interrupt: the run
    would stay CANCELING until the action ends by itself). A cancelled job commits nothing:
    no Delta commit, no published JDBC staging table."""

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
                session = self.resource._session
                if session is not None:
                    session.sparkContext.cancelAllJobs()
                return


class SparkResource(dg.ConfigurableResource):
    """The run's SparkSession (one per run process, shared by every op)."""

    master: str = Field("local[*]", description="Spark master: local[*], spark://host:7077, "
                                                "k8s://..., yarn.")
    app_name: str = Field("pipeline_defs", description="Spark application name.")
    jars_dir: str = Field("", description="Directory of connector jars (default .cache/jars).")
    conf: dict[str, str] = Field(default_factory=dict, description="Extra Spark settings.")

    _session: SparkSession | None = PrivateAttr(None)
    _watcher: RunWatcher | None = PrivateAttr(None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        if context.instance is not None and context.run_id:
            self._watcher = RunWatcher(context.instance, context.run_id, self)
            self._watcher.start()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if self._watcher is not None:
            self._watcher.stop.set()
        if self._session is not None:  # what the run persisted (conditions, `cache` steps)
            try:
                self._session.catalog.clearCache()
            except Exception:  # noqa: BLE001 - a session already stopped has nothing cached
                pass

    @property
    def cancelled(self) -> bool:
        """The run was asked to stop (terminated from the UI, or `pipeline run` got SIGINT/
        SIGTERM): its Spark jobs were cancelled, and no step starts new ones."""
        return self._watcher is not None and self._watcher.cancelled

    @property
    def settings(self) -> SparkSettings:
        return SparkSettings(self.master, self.app_name, self.jars_dir,
                             tuple(sorted(self.conf.items())))

    @property
    def spark(self) -> SparkSession:
        if self._session is None:
            self._session = session(self.settings)
        return self._session
