"""Structured Streaming: sinks for the load methods, checkpoints at stable paths, and the
watcher that keeps a run's queries alive, reports their progress and stops them gracefully.

Loads of a streaming pipeline start a query each (non-blocking); the job's last op watches
them all until they end (availableNow / once drained), the timeout passes, or the run is
terminated."""
from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql.streaming import StreamingQuery

from pipeline_defs.config import durations
from pipeline_defs.config.dataflow import safe_name
from pipeline_defs.errors import PipelineError, UnsupportedError
from pipeline_defs.steps.context import StepContext


class StreamingQueryFailed(PipelineError):
    """A query stopped with an error; the message is the query's own."""


# ---------------------------------------------------------------- settings
def seconds(value: str | int | float | None) -> float | None:
    """Seconds of a duration of the format (\"10 minutes\"); checked at load time already."""
    try:
        return durations.seconds(value)
    except durations.DurationError as e:
        raise UnsupportedError(f"{e}.") from None


def trigger_kwargs(trigger: str | None) -> dict[str, Any]:
    try:
        return durations.trigger_kwargs(trigger)
    except durations.DurationError as e:
        raise UnsupportedError(f"{e}.") from None


def checkpoint_root(settings) -> str:
    return (settings.checkpoint_root or os.environ.get("PIPELINE_CHECKPOINT_ROOT")
            or str(Path("checkpoints").resolve()))


def checkpoint_for(cfg, ctx: StepContext, settings) -> str:  # cfg None: the step's default
    """The step's checkpointLocation, else <root>/<pipeline>/<op>: stable across runs, so a
    new run resumes where the last one committed (the original used a random directory)."""
    if getattr(cfg, "checkpoint_location", None):
        return cfg.checkpoint_location
    return f"{checkpoint_root(settings).rstrip('/')}/{safe_name(ctx.pipeline)}/" \
           f"{ctx.op_name or f's{ctx.step:02d}'}"


# ---------------------------------------------------------------- sinks
def start_sink(method: str, df: DataFrame, cfg, ctx: StepContext, settings,
               query_name: str) -> StreamingQuery:
    """Starts the load's streaming query (returns at once)."""
    from pipeline_defs.steps.connections import options_of, prepare_path, write_options
    checkpoint = checkpoint_for(cfg, ctx, settings)
    w = df.writeStream.queryName(query_name).option("checkpointLocation", checkpoint) \
        .outputMode(getattr(cfg, "output_mode", None) or "append")
    trig = trigger_kwargs(getattr(cfg, "trigger", None) or settings.trigger)
    if trig:
        w = w.trigger(**trig)
    ctx.metadata.update(checkpoint=checkpoint, trigger=str(trig or "default"))
    if method == "toDeltaLake":
        if cfg.merge is not None:
            raise UnsupportedError("toDeltaLake: merge in a streaming pipeline is not supported "
                                   "yet; use mode append.")
        if cfg.path:
            prepare_path(ctx.spark, cfg, ctx, cfg.path)
        w = w.format("delta").option("mergeSchema", str(cfg.merge_schema).lower())
        if cfg.partition_by:
            w = w.partitionBy(*cfg.partition_by)
        return w.toTable(cfg.table) if cfg.table else w.start(cfg.path)
    if method in ("toFile", "toAvro"):
        prepare_path(ctx.spark, cfg, ctx, cfg.path)
        fmt = "avro" if method == "toAvro" else cfg.format
        w = w.format(fmt).options(**write_options(fmt, options_of(cfg.options)))
        if cfg.compression:
            w = w.option("compression", cfg.compression)
        if cfg.partition_by:
            w = w.partitionBy(*cfg.partition_by)
        return w.start(cfg.path)
    if method == "toKafka":
        from pipeline_defs.steps.extract import kafka_options
        from pipeline_defs.steps.load import kafka_frame
        return kafka_frame(df, cfg).writeStream.queryName(query_name) \
            .option("checkpointLocation", checkpoint).outputMode("append") \
            .format("kafka").options(**kafka_options(cfg, ctx), topic=cfg.topic) \
            .trigger(**(trig or {"processingTime": "0 seconds"})).start()
    if method in ("toPostgres", "toMySQL"):
        return w.foreachBatch(jdbc_batch_writer(method, cfg, ctx, query_name)).start()
    raise UnsupportedError(f"{method} cannot write a stream. Streaming sinks: toDeltaLake, "
                           "toFile, toAvro, toKafka, toPostgres, toMySQL.")


def jdbc_batch_writer(method: str, cfg, ctx: StepContext, query_name: str) -> Callable:
    """foreachBatch for databases, idempotent by batch id: each micro-batch is loaded in one
    transaction together with a (query, batch id) marker, and a replayed batch is skipped."""
    from pipeline_defs.steps import jdbc
    from pipeline_defs.steps.connections import jdbc_endpoint
    dialect = "postgres" if method == "toPostgres" else "mysql"
    ep = jdbc_endpoint(cfg, ctx, dialect)
    mode = cfg.mode if cfg.mode in ("append", "upsert") else "append"
    spec = jdbc.LoadSpec(cfg.table, mode, tuple(cfg.key_columns or ()), False, cfg.batch_size,
                         getattr(cfg, "fast_path", False))

    def write(batch: DataFrame, batch_id: int) -> None:
        jdbc.load(batch.sparkSession, batch, ep, spec, f"{query_name}{batch_id}", ctx.log,
                  marker=(query_name, int(batch_id)))
    return write


# ---------------------------------------------------------------- the watcher
_EXTRA: dict[str, list[tuple]] = {}


def register(run_id: str, query: StreamingQuery, step: int, name: str) -> None:
    """Queries started by other steps than loads (a quarantine), for the run's watcher."""
    _EXTRA.setdefault(run_id, []).append((query, step, name))


def registered(run_id: str) -> list[tuple]:
    return _EXTRA.pop(run_id, [])


@dataclass
class QueryStats:
    query: StreamingQuery
    step: int
    name: str
    batches: int = 0
    rows: int = 0
    output_rows: int = 0
    warnings: int = 0
    last_batch: int = -1
    last_logged: float = 0.0
    pending_rows: int = 0
    pending_batches: int = 0
    durations: list[float] = field(default_factory=list)

    def totals(self) -> dict[str, Any]:
        return {"query": self.name, "step": self.step, "batches": self.batches,
                "input_rows": self.rows, "output_rows": self.output_rows,
                "rule_warnings": self.warnings,
                "id": str(self.query.id),
                "mean_batch_ms": round(sum(self.durations) / len(self.durations))
                if self.durations else None}


class Watcher:
    """Follows the run's queries: progress lines (throttled), failures, graceful stop."""

    def __init__(self, queries: list[QueryStats], log, settings, clock=time.monotonic):
        self.queries, self.log, self.settings, self.clock = queries, log, settings, clock

    def poll(self) -> None:
        now = self.clock()
        for q in self.queries:
            for p in q.query.recentProgress:
                if p["batchId"] <= q.last_batch:
                    continue
                q.last_batch = p["batchId"]
                n = int(p.get("numInputRows") or 0)
                q.batches += 1
                q.rows += n
                out = int((p.get("sink") or {}).get("numOutputRows", -1) or 0)
                q.output_rows += max(out, 0)
                q.pending_rows += n
                q.pending_batches += 1
                q.durations.append(float(p.get("durationMs", {}).get("triggerExecution", 0)))
                self._warn_rules(q, p)
                if now - q.last_logged >= self.settings.progress_interval_s:
                    self._log_progress(q, p)
                    q.last_logged = now

    def _warn_rules(self, q: QueryStats, p: dict) -> None:
        """Row rules with onFailure warn count their violations per micro-batch (observe)."""
        for metric, values in (p.get("observedMetrics") or {}).items():
            if not metric.startswith("dq_step"):
                continue
            values = values.asDict() if hasattr(values, "asDict") else dict(values)
            broken = {k: v for k, v in values.items() if k != "rows" and v}
            if broken:
                q.warnings += sum(broken.values())
                self.log.warning(f"stream {q.name}: batch {p['batchId']}: validation "
                                 f"{metric[3:]} warns: " + ", ".join(
                                     f"{k}: {v} of {values.get('rows')} rows"
                                     for k, v in broken.items()))

    def _log_progress(self, q: QueryStats, p: dict) -> None:
        d = p.get("durationMs", {})
        self.log.info(
            f"stream {q.name}: batch {p['batchId']} ({q.pending_batches} since the last line, "
            f"{q.pending_rows} rows), input {p.get('inputRowsPerSecond') or 0:.0f} rows/s, "
            f"processed {p.get('processedRowsPerSecond') or 0:.0f} rows/s, trigger "
            f"{d.get('triggerExecution', 0)} ms (addBatch {d.get('addBatch', 0)} ms); "
            f"totals {q.batches} batches, {q.rows} rows")
        q.pending_rows = q.pending_batches = 0

    def failed(self) -> QueryStats | None:
        for q in self.queries:
            if not q.query.isActive and q.query.exception() is not None:
                return q
        return None

    def all_done(self) -> bool:
        return all(not q.query.isActive for q in self.queries)

    def run(self, timeout_s: float | None, first_batch_only: bool = False,
            interval_s: float = 0.5) -> str:
        """Until every query ends ('finished'), the timeout passes ('timeout') or, with
        first_batch_only, each query committed one batch ('first batch'). Raises on a query
        failure; stops the queries gracefully on KeyboardInterrupt (then re-raises)."""
        deadline = None if timeout_s is None else self.clock() + timeout_s
        try:
            while True:
                self.poll()
                bad = self.failed()
                if bad is not None:
                    self.stop_all()
                    raise StreamingQueryFailed(explain_failure(bad))
                if self.all_done():
                    return "finished"
                if first_batch_only and all(q.batches > 0 for q in self.queries):
                    self.stop_all()
                    return "first batch"
                if deadline is not None and self.clock() >= deadline:
                    self.stop_all()
                    return "timeout"
                time.sleep(interval_s)
        except StreamingQueryFailed:
            raise  # the queries were stopped already
        except BaseException:  # the run is terminated (KeyboardInterrupt, Dagster's interrupt)
            self.stop_all()
            raise
        finally:
            self.poll()
            for q in self.queries:
                if q.pending_batches:
                    self._log_progress(q, (q.query.lastProgress or {"batchId": q.last_batch}))

    def stop_all(self, grace_s: float = 25.0) -> None:
        """Stops each query between two micro-batches, so the running batch commits; after
        grace_s it is interrupted (its batch is then redone by the next run)."""
        deadline = time.monotonic() + grace_s
        for q in self.queries:
            while q.query.isActive and q.query.status.get("isTriggerActive") and \
                    time.monotonic() < deadline:
                time.sleep(0.05)
            try:
                q.query.stop()
            except Exception:  # noqa: BLE001 - already stopped or failed
                pass


def _java_causes(query: StreamingQuery) -> str:
    """The messages of the JVM exception's cause chain (PySpark shows only the outer one)."""
    try:
        opt = query._jsq.exception()
        t = opt.get() if opt.isDefined() else None
        out = []
        while t is not None and len(out) < 12:
            out.append(str(t.getMessage()))
            t = t.getCause()
        return " ".join(out)
    except Exception:  # noqa: BLE001
        return ""


_CHECKPOINT_HINTS = ("checkpoint", "offset log", "state schema", "StateSchema",
                     "STATE_STORE", "STREAMING_STATEFUL_OPERATOR", "not compatible")


def explain_failure(q: QueryStats) -> str:
    from pipeline_defs.factory import spark_error_summary
    e = q.query.exception()
    text = spark_error_summary(e) if e is not None else "stopped"
    full = " ".join([str(e), _java_causes(q.query)])
    raised = re.search(r"\[USER_RAISED_EXCEPTION\] (.*?)(?: SQLSTATE|\n|$)", full)
    if raised:  # a validation with onFailure fail: its message, not the writer's wrapper
        text = raised.group(1).strip()
    msg = f"streaming query '{q.name}' (step {q.step}) failed: {text}"
    if any(h.lower() in full.lower() for h in _CHECKPOINT_HINTS):
        msg += (" The query cannot resume from its checkpoint, probably because it changed "
                "since the checkpoint was written. The checkpoint is never reset silently: "
                "undo the change, or give the load a new checkpointLocation (it then starts "
                "again from startingOffsets).")
    return msg
