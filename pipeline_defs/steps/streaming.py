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
from typing import Any, Literal

from pydantic import Field, field_validator
from pyspark.sql import DataFrame
from pyspark.sql.streaming import DataStreamWriter, StreamingQuery

from pipeline_defs.common.errors import PipelineError, UnsupportedError
from pipeline_defs.config import durations
from pipeline_defs.config.dataflow import safe_name
from pipeline_defs.config.model import FormatModel, check_trigger
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.errors import spark_error_summary


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
class StreamingSink(FormatModel):
    """Keys of loads that can write a stream (accepted in batch, where they are unused)."""

    checkpoint_location: str | None = Field(
        None, description="Streaming: checkpoint directory. Default: a stable path derived "
        "from pipeline and step under the checkpoint root, so a new run resumes.")
    output_mode: Literal["append", "complete", "update"] | None = Field(
        None, description="Streaming: append (default), complete or update.")
    trigger: str | None = Field(
        None, description="Streaming: \"5 seconds\" (processing time), \"availableNow\" or "
        "\"once\" (the run ends when the backlog is drained). Default: the pipeline's "
        "streaming.trigger, else micro-batches as fast as possible.")

    query_name: str | None = Field(
        None, min_length=1, max_length=200, description="Streaming: the query's name "
        "(Spark's queryName), shown in progress lines, metrics, the run's events and the "
        "Spark UI. Unique among the pipeline's loads. Default: <job>.<step>.<run id>.")

    _trigger = field_validator("trigger")(check_trigger)


@dataclass(frozen=True)
class Sink:
    """How a load's streaming query runs: its name, checkpoint, trigger and output mode. A
    method's stream writer gets one and calls `writer(frame)` for a DataStreamWriter."""

    query_name: str
    checkpoint: str
    trigger: dict[str, Any]
    output_mode: str

    def writer(self, df: DataFrame, default_trigger: dict[str, Any] | None = None
               ) -> DataStreamWriter:
        w = df.writeStream.queryName(self.query_name) \
            .option("checkpointLocation", self.checkpoint).outputMode(self.output_mode)
        trig = self.trigger or default_trigger
        return w.trigger(**trig) if trig else w


def start_query(write: Callable, df: DataFrame, cfg, ctx: StepContext,
                query_name: str) -> StreamingQuery:
    """Starts a load's streaming query with the method's registered stream writer (returns
    at once)."""
    settings = ctx.streaming
    sink = Sink(query_name, checkpoint_for(cfg, ctx, settings),
                trigger_kwargs(getattr(cfg, "trigger", None) or settings.trigger),
                getattr(cfg, "output_mode", None) or "append")
    ctx.metadata.update(checkpoint=sink.checkpoint, trigger=str(sink.trigger or "default"))
    return write(df, cfg, ctx, sink)


# ---------------------------------------------------------------- the watcher
_EXTRA: dict[str, list[tuple]] = {}
_WRITTEN: dict[str, int] = {}
_SKIPPED: dict[str, list[int]] = {}


def note_written(query_name: str, rows: int) -> None:
    """A foreachBatch writer's rows (Spark reports none for such a sink), for the watcher."""
    _WRITTEN[query_name] = _WRITTEN.get(query_name, 0) + rows


def note_skipped(query_name: str, batch_id: int) -> None:
    """A micro-batch replayed after a crash that the sink already held: not written again."""
    _SKIPPED.setdefault(query_name, []).append(int(batch_id))


def take_written(query_name: str) -> int:
    return _WRITTEN.pop(query_name, 0)


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

    def __init__(self, queries: list[QueryStats], log, settings, clock=time.monotonic,
                 on_progress: Callable[[QueryStats, dict], None] | None = None,
                 on_batch: Callable[[QueryStats, dict], None] | None = None,
                 stop_requested: Callable[[], bool] = lambda: False):
        self.queries, self.log, self.settings, self.clock = queries, log, settings, clock
        self.stop_requested = stop_requested
        """True once the run is asked to stop (terminated, Ctrl-C): the queries are then
        stopped between two micro-batches and `run` returns 'stopped'."""
        self.on_progress = on_progress
        """Called with each progress line's query and latest progress (before its counts
        since the last line are reset): the runner records the commits in Dagster."""
        self.on_batch = on_batch
        """Called with every micro-batch's query and progress (the metrics)."""

    def poll(self) -> None:
        now = self.clock()
        for q in self.queries:
            for p in self._new_progress(q):
                q.last_batch = p["batchId"]
                n = int(p.get("numInputRows") or 0)
                q.batches += 1
                q.rows += n
                out = int((p.get("sink") or {}).get("numOutputRows", -1) or 0)
                q.output_rows += out if out >= 0 else take_written(q.name)
                for b in _SKIPPED.pop(q.name, ()):
                    self.log.info(f"{q.name}: micro-batch {b} was already in the sink (the "
                                  "query stopped after writing it, before recording it): "
                                  "not written again")
                q.pending_rows += n
                q.pending_batches += 1
                q.durations.append(float(p.get("durationMs", {}).get("triggerExecution", 0)))
                self._warn_rules(q, p)
                if self.on_batch is not None:
                    self.on_batch(q, p)
                if now - q.last_logged >= self.settings.progress_interval_s:
                    self._log_progress(q, p)
                    q.last_logged = now

    @staticmethod
    def _new_progress(q: QueryStats) -> list[dict]:
        """The progress of the batches since the last look. `lastProgress` when one batch is
        new (one Py4J call, one JSON), `recentProgress` only when several are: it returns
        the last 100 batches' progress, each serialized in the JVM, sent and parsed at every
        look, which took CPU from the running micro-batches twice a second."""
        last = q.query.lastProgress
        if last is None or last["batchId"] <= q.last_batch:
            return []
        if last["batchId"] == q.last_batch + 1:
            return [last]
        return [p for p in q.query.recentProgress if p["batchId"] > q.last_batch]

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
        if self.on_progress is not None and q.pending_batches:
            self.on_progress(q, p)
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
        """Until every query ends ('finished'), the timeout passes ('timeout'), the run is
        asked to stop ('stopped') or, with first_batch_only, each query committed one batch
        ('first batch'). Raises on a query failure; stops the queries gracefully on
        KeyboardInterrupt (then re-raises)."""
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
                if self.stop_requested():
                    self.stop_all()
                    return "stopped"
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
