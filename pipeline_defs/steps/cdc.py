"""applyChanges: a change feed applied to a Delta table as SCD type 1 or type 2, the same
whatever order the changes arrive in and however they are batched.

Every change applied is kept in a change log beside the target (a Delta table,
`changeLogPath`, default `<path>_changes`): keys, sequence, whether it deletes, the columns.
For the keys a batch touches, their whole history is rebuilt from the log plus the batch
(events deduplicated by key and sequence) and written to the target in one MERGE: their rows
(SCD1) or versions (SCD2) are replaced by the rebuilt ones. So the target is a function of
the set of events seen, never of their order or batching: applying batches 1, 2, 3 equals
applying all at once; a batch applied twice changes nothing; a crash between the target's
commit and the log's leaves a state the next apply of the same batch completes."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from pipeline_defs.steps.context import LoadResult, StepContext
from pipeline_defs.steps.delta import last_commit
from pipeline_defs.steps.errors import StepDataError, missing_columns
from pipeline_defs.steps.files import Load, prepare_path
from pipeline_defs.steps.names import quoted
from pipeline_defs.steps.registry import step, stream_writer
from pipeline_defs.steps.streaming import Sink, StreamingSink

START, END = "__START_AT", "__END_AT"
SEQ, DEL = "__seq", "__deleted"  # columns of the change log


class ApplyChanges(Load, StreamingSink):
    """Apply a change feed (inserts, updates, deletes with a sequence) to a Delta table as SCD
    type 1 (latest state per key) or type 2 (every version, __START_AT / __END_AT)."""

    sql_fields: ClassVar[frozenset[str]] = frozenset({"applyAsDeletes", "sequenceBy"})

    path: str = Field(description="The target Delta table's location.")
    keys: list[str] = Field(min_length=1, description="Columns identifying a row.")
    sequence_by: str = Field(description="A column (or SQL expression, e.g. struct(ts, id)) "
                             "ordering the changes of a key; later wins.")
    apply_as_deletes: str | None = Field(None, description="Condition marking a change as a "
                                         "delete, e.g. \"op = 'D'\".")
    column_list: list[str] | None = Field(None, description="Columns stored (keys always).")
    except_column_list: list[str] | None = Field(None, description="Columns not stored, e.g. "
                                                 "[\"op\", \"seq\"].")
    stored_as: Literal["scd1", "scd2"] = Field("scd1", description="scd1: the latest state per "
                                               "key; scd2: every version.")
    track_history_column_list: list[str] | None = Field(
        None, description="SCD2: only changes to these columns open a version (the others "
        "update the version in place).")
    track_history_except_column_list: list[str] | None = Field(
        None, description="SCD2: changes to all columns but these open a version.")
    ignore_null_updates: bool = Field(False, description="A null in an update keeps the "
                                      "stored value.")
    change_log_path: str | None = Field(None, description="Where the applied changes are kept "
                                        "(Delta). Default: <path>_changes.")

    def location(self) -> str | None:
        return self.path

    def problems(self):
        out = []
        if self.column_list is not None and self.except_column_list is not None:
            out.append(("columnList", "columnList and exceptColumnList both set.",
                        "Keep one of them."))
        if (self.track_history_column_list is not None or
                self.track_history_except_column_list is not None) and self.stored_as != "scd2":
            out.append(("trackHistoryColumnList", "history is tracked only with storedAs "
                        "scd2.", "Set \"storedAs\": \"scd2\", or remove it."))
        if self.track_history_column_list is not None and \
                self.track_history_except_column_list is not None:
            out.append(("trackHistoryColumnList", "trackHistoryColumnList and "
                        "trackHistoryExceptColumnList both set.", "Keep one of them."))
        return out

    @property
    def log_path(self) -> str:
        return self.change_log_path or self.path.rstrip("/") + "_changes"


def _columns(df: DataFrame, cfg: ApplyChanges) -> list[str]:
    """The value columns stored (keys first, then the rest in the feed's order)."""
    cols = [c for c in df.columns if c not in cfg.keys]
    if cfg.column_list is not None:
        missing_columns(df, cfg.column_list, "columnList")
        cols = [c for c in cols if c in cfg.column_list]
    if cfg.except_column_list is not None:
        missing_columns(df, cfg.except_column_list, "exceptColumnList")
        cols = [c for c in cols if c not in cfg.except_column_list]
    return cols


def events(df: DataFrame, cfg: ApplyChanges) -> tuple[DataFrame, list[str]]:
    """The feed as change-log rows: keys, values, __seq, __deleted."""
    missing_columns(df, cfg.keys, "keys")
    cols = _columns(df, cfg)
    deleted = F.coalesce(F.expr(cfg.apply_as_deletes), F.lit(False)) \
        if cfg.apply_as_deletes else F.lit(False)
    out = df.select(*[F.col(quoted(c)) for c in cfg.keys + cols],
                    F.expr(cfg.sequence_by).alias(SEQ), deleted.alias(DEL))
    return out, cols


def _check_duplicates(ev: DataFrame, cfg: ApplyChanges) -> None:
    """Two different changes of one key with one sequence: which wins is undefined."""
    key = [quoted(k) for k in cfg.keys]
    dup = ev.dropDuplicates().groupBy(*key, SEQ).count().where("count > 1").limit(1).collect()
    if dup:
        r = dup[0].asDict()
        raise StepDataError(
            f"two different changes of key {', '.join(f'{k}={r[k]!r}' for k in cfg.keys)} "
            f"share the sequence {r[SEQ]!r} (sequenceBy {cfg.sequence_by}): which one wins is "
            "undefined. Make sequenceBy unique per key (e.g. struct(ts, offset)).")


def rebuild(log: DataFrame, cfg: ApplyChanges, cols: list[str]) -> DataFrame:
    """Each key's rows (SCD1) or versions (SCD2) from all its changes."""
    key = [F.col(quoted(k)) for k in cfg.keys]
    w = Window.partitionBy(*key).orderBy(SEQ)
    # the segment of a change: the changes since the key's last delete (a delete starts one)
    seg = F.sum(F.col(DEL).cast("int")).over(w.rowsBetween(Window.unboundedPreceding, 0))
    x = log.withColumn("__segment", seg)
    ws = Window.partitionBy(*key, "__segment").orderBy(SEQ)
    if cfg.ignore_null_updates:  # a null keeps the segment's last non-null value
        x = x.select(*[F.col(quoted(k)) for k in cfg.keys], SEQ, DEL, "__segment",
                     *[F.last(quoted(c), ignorenulls=True).over(
                         ws.rowsBetween(Window.unboundedPreceding, 0)).alias(c) for c in cols])
    if cfg.stored_as == "scd1":
        last = Window.partitionBy(*key).orderBy(F.col(SEQ).desc())
        return x.withColumn("__n", F.row_number().over(last)).where(f"__n = 1 AND NOT {DEL}") \
            .select(*[F.col(quoted(c)) for c in cfg.keys + cols])
    tracked = cols
    if cfg.track_history_column_list is not None:
        tracked = [c for c in cols if c in cfg.track_history_column_list]
    if cfg.track_history_except_column_list is not None:
        tracked = [c for c in cols if c not in cfg.track_history_except_column_list]
    prev = [F.lag(quoted(c)).over(ws) for c in tracked]
    changed = F.lit(False)
    for c, p in zip(tracked, prev, strict=True):
        changed = changed | ~F.col(quoted(c)).eqNullSafe(p)
    first = F.lag(SEQ).over(ws).isNull()
    opens = F.col(DEL) | first | changed  # a delete ends a version; it opens none
    x = x.withColumn("__opens", opens.cast("int"))
    x = x.withColumn("__version", F.sum("__opens").over(w.rowsBetween(
        Window.unboundedPreceding, 0)))
    wv = Window.partitionBy(*key, "__version").orderBy(SEQ)
    wv_all = wv.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    v = x.select(*[F.col(quoted(k)) for k in cfg.keys], "__version",
                 F.first(DEL).over(wv_all).alias("__is_delete"),
                 F.first(SEQ).over(wv_all).alias(START),
                 *[F.last(quoted(c)).over(wv_all).alias(c) for c in cols]).distinct()
    nxt = Window.partitionBy(*key).orderBy("__version")
    v = v.withColumn(END, F.lead(START).over(nxt))
    return v.where("NOT __is_delete").select(*[F.col(quoted(c)) for c in cfg.keys + cols],
                                              START, END)


def apply(df: DataFrame, cfg: ApplyChanges, spark, log) -> dict:
    """Applies one batch of changes; returns the MERGE's metrics."""
    from delta.tables import DeltaTable
    ev, cols = events(df, cfg)
    _check_duplicates(ev, cfg)
    key = [quoted(k) for k in cfg.keys]
    has_log = DeltaTable.isDeltaTable(spark, cfg.log_path)
    touched = ev.select(*key).distinct()
    if has_log:
        old = spark.read.format("delta").load(cfg.log_path).join(touched, cfg.keys)
        old_ev = old.select(*key, *[quoted(c) for c in cols], SEQ, DEL)
        new = ev.join(old_ev.select(*key, SEQ), cfg.keys + [SEQ], "left_anti")
        all_ev = old_ev.unionByName(new)
    else:
        new, all_ev = ev, ev
    new = new.dropDuplicates(cfg.keys + [SEQ]).localCheckpoint()
    rebuilt = rebuild(all_ev.dropDuplicates(cfg.keys + [SEQ]), cfg, cols).localCheckpoint()
    n_new = new.count()
    metrics = {"changes_in_batch": ev.count(), "changes_new": n_new}
    if n_new == 0:  # every change already applied: a replay
        return {**metrics, "applied": False}
    if not DeltaTable.isDeltaTable(spark, cfg.path):
        rebuilt.limit(0).write.format("delta").save(cfg.path)
    target = DeltaTable.forPath(spark, cfg.path)
    on_cols = cfg.keys + ([START] if cfg.stored_as == "scd2" else [])
    current = target.toDF().join(touched, cfg.keys).select(*[quoted(c) for c in on_cols])
    gone = current.join(rebuilt.select(*[quoted(c) for c in on_cols]), on_cols, "left_anti")
    src = rebuilt.withColumn("__gone", F.lit(False)).unionByName(
        gone.withColumn("__gone", F.lit(True)), allowMissingColumns=True)
    on = " AND ".join(f"t.{quoted(c)} <=> s.{quoted(c)}" for c in on_cols)
    values = {quoted(c): f"s.{quoted(c)}" for c in rebuilt.columns}
    target.alias("t").merge(src.alias("s"), on) \
        .whenMatchedDelete(condition="s.__gone") \
        .whenMatchedUpdate(condition=" OR ".join(
            f"NOT (t.{quoted(c)} <=> s.{quoted(c)})" for c in rebuilt.columns) or "false",
            set=values) \
        .whenNotMatchedInsert(condition="NOT s.__gone", values=values).execute()
    merged = last_commit(spark, target)
    # the log after the target: a crash in between is completed by the same batch again
    new.write.format("delta").mode("append").save(cfg.log_path)
    m = merged.get("operationMetrics") or {}
    return {**metrics, "applied": True, "delta_version": merged["version"],
            **{f"rows_{k}": int(m.get(f"numTargetRows{k.capitalize()}", 0))
               for k in ("inserted", "updated", "deleted")}}


@step("load", "applyChanges", ApplyChanges, asset_kind="delta")
def apply_changes(df: DataFrame, cfg: ApplyChanges, ctx: StepContext) -> LoadResult:
    prepare_path(ctx.spark, cfg, ctx, cfg.path)
    meta = apply(df, cfg, ctx.spark, ctx.log)
    ctx.log.info(f"applyChanges {cfg.path}: {meta}")
    return LoadResult(cfg.path, "delta", f"applyChanges {cfg.stored_as}", meta,
                      meta.get("rows_inserted"))


@stream_writer("applyChanges")
def apply_changes_stream(df: DataFrame, cfg: ApplyChanges, ctx: StepContext, sink: Sink
                         ) -> StreamingQuery:
    """Each micro-batch applied as a batch: a replayed micro-batch finds its changes in the
    log and changes nothing (exactly once with the checkpoint)."""
    prepare_path(ctx.spark, cfg, ctx, cfg.path)

    def each(batch: DataFrame, batch_id: int) -> None:
        apply(batch, cfg, batch.sparkSession, ctx.log)
    return sink.writer(df).foreachBatch(each).start()
