"""The metrics resource: exports each run's metrics (dagster_layer/metrics.py) when the run's
resources are torn down, on success, failure and cancellation alike."""
from __future__ import annotations

import dagster as dg
from pydantic import Field, PrivateAttr

from pipeline_defs.dagster_layer import metrics


class MetricsResource(dg.ConfigurableResource):
    """Run, step and micro-batch metrics to the run's log, JSON files and a Pushgateway."""

    log: bool = Field(False, description="One JSON line per run (and per streaming "
                                         "micro-batch) in the run's log.")
    json_dir: str = Field("", description="Directory of one JSON file per run "
                                          "(<dir>/<pipeline>/<run id>.json).")
    pushgateway: str = Field("", description="Prometheus Pushgateway URL (job "
                                             "pipeline_defs, grouping key pipeline=<name>).")

    _batches: list[dict] = PrivateAttr(default_factory=list)

    @classmethod
    def from_env(cls) -> MetricsResource:
        """PIPELINE_METRICS_LOG=1, PIPELINE_METRICS_DIR, PIPELINE_METRICS_PUSHGATEWAY."""
        e = metrics.Exporters.from_env()
        return cls(log=e.log, json_dir=e.json_dir, pushgateway=e.pushgateway)

    @property
    def exporters(self) -> metrics.Exporters:
        return metrics.Exporters(self.log, self.json_dir, self.pushgateway)

    def micro_batch(self, log, pipeline: str, run_id: str, query: str, progress: dict) -> None:
        """A streaming micro-batch ended: exported now, and kept for the run's JSON file."""
        if not self.exporters.any:
            return
        b = metrics.micro_batch(pipeline, run_id, query, progress)
        self._batches.append(b)
        self.exporters.batch(b, log)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        if not self.exporters.any or context.instance is None or not context.run_id:
            return
        try:
            runs = metrics.collect(context.instance, context.run_id, self._batches)
        except Exception as e:  # noqa: BLE001 - metrics never fail a run
            context.log.warning(f"metrics: not collected ({type(e).__name__}: {e}); the run "
                                "is not affected.")
            return
        self.exporters.run(runs, context.log)
