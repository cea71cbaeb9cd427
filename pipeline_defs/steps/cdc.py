"""applyChanges: a change feed applied to a Delta table as SCD type 1 or type 2, the same
whatever order the changes arrive in and however they are batched.

Every change applied is kept in a change log beside the target (a Delta table,
`changeLogPath`, default `<path>_changes`): keys, sequence, whether it deletes (or truncates),
the columns, when it was applied. For the keys a batch touches, their whole history is rebuilt
from the log plus the batch (events deduplicated by key and sequence) and written to the target
in one MERGE: their rows (SCD1) or versions (SCD2) are replaced by the rebuilt ones. So the
target is a function of the set of events seen, never of their order or batching: applying
batches 1, 2, 3 equals applying all at once; a batch applied twice changes nothing; a crash
between the target's commit and the log's leaves a state the next apply of the same batch
completes.

Snapshots (`source: snapshot`): each input is the whole table at one sequence (a run's
`${DATE}`); it is turned into the changes since the state the log holds just before that
sequence (upserts of rows that differ, deletes of keys it lacks), and, when a later snapshot
was applied already (a late or restated day), the later one's state is put back for the keys
changed here. The log keeps changes only, never whole snapshots."""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.streaming import StreamingQuery

from pipeline_defs.config import durations
from pipeline_defs.steps import streaming
from pipeline_defs.steps.cdc_history import (
    APPLIED,
    DEL,
    END,
    SEQ,
    START,
    TRUNC,
    check_history,
    drop_tombstones,
    nulls,
    rebuild,
    snapshot_changes,
)
from pipeline_defs.steps.context import LoadResult, StepContext
from pipeline_defs.steps.delta import last_commit
from pipeline_defs.steps.errors import StepDataError, missing_columns
from pipeline_defs.steps.files import Load, prepare_path
from pipeline_defs.steps.names import quoted
from pipeline_defs.steps.registry import step, stream_writer
from pipeline_defs.steps.streaming import Sink, StreamingSink

BROADCAST_KEYS = 2_000_000  # up to this many keys in a batch are broadcast to the log's scan


class ApplyChanges(Load, StreamingSink):
    """Apply a change feed (inserts, updates, deletes with a sequence) or successive full
    snapshots to a Delta table as SCD type 1 (latest state per key) or type 2 (every version,
    __START_AT / __END_AT)."""

    sql_fields: ClassVar[frozenset[str]] = frozenset({"applyAsDeletes", "applyAsTruncates",
                                                      "sequenceBy"})

    path: str = Field(description="The target Delta table's location.")
    keys: list[str] = Field(min_length=1, description="Columns identifying a row.")
    sequence_by: str = Field(description="A column (or SQL expression, e.g. struct(ts, id)) "
                             "ordering the changes of a key; later wins. With snapshots, one "
                             "value per snapshot, e.g. \"'${DATE}'\".")
    source: Literal["changes", "snapshot"] = Field(
        "changes", description="changes: each input row is a change; snapshot: each input is "
        "the whole table at one sequence (keys missing from it are deleted).")
    apply_as_deletes: str | None = Field(None, description="Condition marking a change as a "
                                         "delete, e.g. \"op = 'D'\".")
    apply_as_truncates: str | None = Field(None, description="Condition marking a change as "
                                           "a truncate: every key is deleted at its sequence.")
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
    tombstone_retention: str | None = Field(
        None, description="SCD1: how long a deleted key's changes stay in the change log "
        "(e.g. \"30 days\"); after that an older change of that key arriving late inserts it "
        "again. Default: kept for ever.")

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
        for k in self.keys:
            if k in (self.except_column_list or ()):
                out.append(("exceptColumnList", f"'{k}' is a key: keys are always stored.",
                            f"Remove '{k}' from exceptColumnList."))
        if self.source == "snapshot":
            for f, v in (("applyAsDeletes", self.apply_as_deletes),
                         ("applyAsTruncates", self.apply_as_truncates),
                         ("ignoreNullUpdates", self.ignore_null_updates or None)):
                if v is not None:
                    out.append((f, f"{f} has no meaning with snapshots: a key missing from "
                                "a snapshot is deleted, and a snapshot's null is a value.",
                                f"Remove {f}, or read a change feed (\"source\": \"changes\")."))
        if self.tombstone_retention is not None:
            try:
                durations.seconds(self.tombstone_retention)
            except durations.DurationError as e:
                out.append(("tombstoneRetention", str(e), "Write e.g. \"30 days\"."))
            if self.stored_as == "scd2":
                out.append(("tombstoneRetention", "an SCD2 table keeps every key's history, "
                            "which the change log rebuilds.", "Remove tombstoneRetention."))
        return out

    def needed_columns(self) -> list[tuple[str, list[str]]]:
        out = [("keys", self.keys)]
        for f in ("column_list", "except_column_list"):
            if getattr(self, f) is not None:
                out.append((type(self).model_fields[f].alias, getattr(self, f)))
        return out

    def input_problems(self, columns: dict[str, str]) -> list[tuple[str, str, str]]:
        out = super().input_problems(columns)
        seq = self.sequence_by.strip().strip("`")
        if seq.replace("_", "").isalnum():  # a column: it must be there, and orderable
            kind = columns.get(seq.lower())
            if kind is None:
                out.append(("sequenceBy", f"names '{seq}', which the input does not have "
                            f"(its declared columns: {', '.join(columns)}).",
                            "Name a column, or write an expression such as struct(ts, id)."))
            elif kind.upper().startswith(("MAP", "VARIANT")):
                out.append(("sequenceBy", f"'{seq}' is a {kind}, which has no order.",
                            "Use a number, a timestamp, a string or a struct of those."))
        return out

    def table_checks(self) -> list[tuple[str, str]]:
        return [("history", "each key has at most one current version and its versions' "
                 "validity intervals do not overlap" if self.stored_as == "scd2" else
                 "each key is in at most one row")]

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


def _orderable(t: T.DataType) -> bool:
    if isinstance(t, (T.MapType, T.VariantType)):
        return False
    if isinstance(t, T.StructType):
        return all(_orderable(f.dataType) for f in t.fields)
    if isinstance(t, T.ArrayType):
        return _orderable(t.elementType)
    return True


def _condition(text: str | None) -> F.Column:
    return F.coalesce(F.expr(text), F.lit(False)) if text else F.lit(False)


def events(df: DataFrame, cfg: ApplyChanges) -> tuple[DataFrame, list[str]]:
    """The feed as change-log rows: keys, values, __seq, __deleted, __truncate."""
    missing_columns(df, cfg.keys, "keys")
    cols = _columns(df, cfg)
    truncated = _condition(cfg.apply_as_truncates)
    out = df.select(*[F.col(quoted(c)) for c in cfg.keys + cols],
                    F.expr(cfg.sequence_by).alias(SEQ),
                    (_condition(cfg.apply_as_deletes) | truncated).alias(DEL),
                    truncated.alias(TRUNC))
    t = out.schema[SEQ].dataType
    if not _orderable(t):
        raise StepDataError(f"sequenceBy {cfg.sequence_by} is a {t.simpleString()}, which has no "
                          "order. Use a number, a timestamp, a string or a struct of those.")
    return out, cols


def _check_duplicates(ev: DataFrame, cfg: ApplyChanges) -> None:
    """Two different changes of one key with one sequence: which wins is undefined."""
    key = [quoted(k) for k in cfg.keys]
    dup = ev.where(f"NOT {TRUNC}").dropDuplicates().groupBy(*key, SEQ).count() \
        .where("count > 1").limit(1).collect()
    if dup:
        r = dup[0].asDict()
        what = "snapshot holds two rows of" if cfg.source == "snapshot" else \
            "two different changes of"
        raise StepDataError(
            f"{what} key {', '.join(f'{k}={r[k]!r}' for k in cfg.keys)} "
            f"{'at' if cfg.source == 'snapshot' else 'share'} the sequence {r[SEQ]!r} "
            f"(sequenceBy {cfg.sequence_by}): which one wins is undefined. "
            + ("Make the keys unique in each snapshot." if cfg.source == "snapshot" else
               "Make sequenceBy unique per key (e.g. struct(ts, offset))."))


def _read_log(spark, cfg: ApplyChanges, ev: DataFrame, cols: list[str]) -> DataFrame | None:
    """The change log, with the columns of this feed (a column the feed gained since is null
    in older changes)."""
    from delta.tables import DeltaTable
    if not DeltaTable.isDeltaTable(spark, cfg.log_path):
        return None
    log = spark.read.format("delta").load(cfg.log_path)
    have = set(log.columns)
    return log.select(*[F.col(quoted(c)) if c in have else
                        F.lit(None).cast(ev.schema[c].dataType).alias(c)
                        for c in cfg.keys + cols + [SEQ, DEL, TRUNC]])


def apply(df: DataFrame, cfg: ApplyChanges, spark, log) -> dict:
    """Applies one batch of changes (or one snapshot); returns what it did."""
    from delta.tables import DeltaTable
    ev, cols = events(df, cfg)
    ev = ev.localCheckpoint()  # the input is read once (a stream's batch, a snapshot)
    n_changes = ev.count()
    _check_duplicates(ev, cfg)
    key = [quoted(k) for k in cfg.keys]
    on_keys = cfg.keys + [SEQ]
    logged = _read_log(spark, cfg, ev, cols)
    if cfg.source == "snapshot":
        ev = snapshot_changes(ev, logged, cfg, cols)
    changes = ev.where(f"NOT {TRUNC}")
    truncating = cfg.apply_as_truncates is not None
    new_truncates, n_truncates = None, 0
    if truncating:
        new_truncates = ev.where(TRUNC).select(SEQ).distinct()
        if logged is not None:
            new_truncates = new_truncates.join(logged.where(TRUNC).select(SEQ), [SEQ],
                                               "left_anti")
        new_truncates = new_truncates.localCheckpoint()
        n_truncates = new_truncates.count()
    if logged is not None:
        lg = logged.where(f"NOT {TRUNC}")
        # a truncate touches every key; else the batch's keys
        touched = (lg.select(*key).unionByName(changes.select(*key)) if n_truncates else
                   changes.select(*key)).distinct()
        # the touched keys' logged changes, read once (a batch's keys are sent to every task
        # that reads the log, rather than the log shuffled to meet them)
        small = not n_truncates and n_changes <= BROADCAST_KEYS
        old = lg.join(F.broadcast(touched) if small else touched, cfg.keys).localCheckpoint()
        # late: older than the latest change the table applied for its key (or a truncate)
        latest = old.groupBy(*key).agg(F.max(SEQ).alias("__latest"))
        if truncating:
            last_truncate = logged.where(TRUNC).agg(F.max(SEQ)).first()[0]
            if last_truncate is not None:
                latest = touched.join(latest, cfg.keys, "left").select(
                    *key, F.greatest("__latest", F.lit(last_truncate)).alias("__latest"))
        new = changes.join(old.select(*key, SEQ), on_keys, "left_anti") \
            .dropDuplicates(on_keys).join(latest, cfg.keys, "left") \
            .withColumn("__late", F.coalesce(F.col(SEQ) < F.col("__latest"), F.lit(False))) \
            .drop("__latest")
        all_ev = old.unionByName(new.drop("__late"))
        all_truncates = logged.where(TRUNC).select(SEQ).unionByName(
            ev.where(TRUNC).select(SEQ)).distinct() if truncating else None
    else:
        touched, small = changes.select(*key).distinct(), False
        new = changes.dropDuplicates(on_keys).withColumn("__late", F.lit(False))
        all_ev = changes
        all_truncates = ev.where(TRUNC).select(SEQ).distinct() if truncating else None
    new = new.localCheckpoint()
    counts = new.agg(F.count("*").alias("n"), F.count(F.when(F.col("__late"), 1)).alias("late")) \
        .first()
    new = new.drop("__late")
    metrics = {"changes_in_batch": n_changes, "changes_new": counts["n"] + n_truncates,
               "late_changes": counts["late"], "truncates": n_truncates}
    if counts["n"] + n_truncates == 0:  # every change already applied: a replay
        return {**metrics, "applied": False}
    if all_truncates is not None:  # a truncate deletes every key at its sequence
        all_ev = all_ev.unionByName(touched.crossJoin(all_truncates).select(
            *key, *nulls(ev, cols), SEQ, F.lit(True).alias(DEL), F.lit(True).alias(TRUNC)))
    rebuilt = rebuild(all_ev.dropDuplicates(on_keys), cfg, cols)
    if not DeltaTable.isDeltaTable(spark, cfg.path):
        rebuilt.limit(0).write.format("delta").save(cfg.path)
    target = DeltaTable.forPath(spark, cfg.path)
    have = set(target.toDF().columns)
    on_cols = cfg.keys + ([START] if cfg.stored_as == "scd2" else [])
    # the rebuilt rows beside the touched keys' rows in the table: those with no rebuilt row
    # are deleted (__gone), current versions the rebuild ends are counted. SCD1: a touched
    # key with no rebuilt row is deleted, and the table need not be read for that
    if cfg.stored_as == "scd2":
        current = target.toDF().join(touched, cfg.keys).select(
            *[quoted(c) for c in on_cols], F.col(END).isNull().alias("__was_current"),
            F.lit(True).alias("__in_table"))
    else:
        current = touched.withColumn("__in_table", F.lit(True))
    src = rebuilt.withColumn("__rebuilt", F.lit(True)).join(current, on_cols, "full") \
        .withColumn("__gone", F.col("__rebuilt").isNull()).localCheckpoint()
    if cfg.stored_as == "scd2":
        metrics["versions_closed"] = src.where(
            F.col("__was_current") & F.col(END).isNotNull()).count()
    on = " AND ".join(f"t.{quoted(c)} <=> s.{quoted(c)}" for c in on_cols)
    values = {quoted(c): f"s.{quoted(c)}" for c in rebuilt.columns}
    # a column the feed gained is added to the target (schema evolution)
    src = src.drop("__rebuilt", "__in_table", "__was_current")
    if small:  # a checkpoint has no size for the planner to see that it is small
        src = F.broadcast(src)
    target.alias("t").merge(src.alias("s"), on).withSchemaEvolution() \
        .whenMatchedDelete(condition="s.__gone") \
        .whenMatchedUpdate(condition=" OR ".join(
            f"NOT (t.{quoted(c)} <=> s.{quoted(c)})" if c in have else
            f"s.{quoted(c)} IS NOT NULL" for c in rebuilt.columns) or "false",
            set=values) \
        .whenNotMatchedInsert(condition="NOT s.__gone", values=values).execute()
    merged = last_commit(spark, target)
    # the log after the target: a crash in between is completed by the same batch again
    logged_now = new if new_truncates is None or not n_truncates else new.unionByName(
        new_truncates.select(*nulls(ev, cfg.keys + cols), SEQ, F.lit(True).alias(DEL),
                             F.lit(True).alias(TRUNC)))
    logged_now.withColumn(APPLIED, F.current_timestamp()).write.format("delta") \
        .mode("append").option("mergeSchema", "true").save(cfg.log_path)
    m = merged.get("operationMetrics") or {}
    out = {**metrics, "applied": True, "delta_version": merged["version"],
           **{f"rows_{k}": int(m.get(f"numTargetRows{k.capitalize()}", 0))
              for k in ("inserted", "updated", "deleted")}}
    if cfg.tombstone_retention is not None:
        out["tombstones_dropped"] = drop_tombstones(spark, cfg)
    return out


@step("load", "applyChanges", ApplyChanges, asset_kind="delta")
def apply_changes(df: DataFrame, cfg: ApplyChanges, ctx: StepContext) -> LoadResult:
    prepare_path(ctx.spark, cfg, ctx, cfg.path)
    meta = apply(df, cfg, ctx.spark, ctx.log)
    ctx.log.info(f"applyChanges {cfg.path}: " + ", ".join(f"{k} {v}" for k, v in meta.items()))
    if not _exists(ctx.spark, cfg.path):  # an empty first batch: no table yet
        return LoadResult(cfg.path, "delta", f"applyChanges {cfg.stored_as}", meta)
    check = check_history(ctx.spark, cfg)
    meta["table_rows"] = check.metadata.get("versions", check.metadata.get("rows"))
    # the rows counted (dagster/row_count) are the changes read, as for other loads the
    # rows written; what they did to the table is in the metadata
    return LoadResult(cfg.path, "delta", f"applyChanges {cfg.stored_as}", meta, None,
                      checks=(check,),
                      schema=ctx.spark.read.format("delta").load(cfg.path).schema)


def _exists(spark, path: str) -> bool:
    from delta.tables import DeltaTable
    return DeltaTable.isDeltaTable(spark, path)


@stream_writer("applyChanges")
def apply_changes_stream(df: DataFrame, cfg: ApplyChanges, ctx: StepContext, sink: Sink
                         ) -> StreamingQuery:
    """Each micro-batch applied as a batch: a replayed micro-batch finds its changes in the
    log and changes nothing (exactly once with the checkpoint)."""
    prepare_path(ctx.spark, cfg, ctx, cfg.path)

    def each(batch: DataFrame, batch_id: int) -> None:
        meta = apply(batch, cfg, batch.sparkSession, ctx.log)
        ctx.log.info(f"applyChanges {cfg.path} batch {batch_id}: "
                     + ", ".join(f"{k} {v}" for k, v in meta.items()))
        if meta["applied"]:
            streaming.note_written(sink.query_name, meta.get("rows_inserted", 0))
        elif meta["changes_in_batch"]:  # all applied already: a replayed micro-batch
            streaming.note_skipped(sink.query_name, batch_id)
    return sink.writer(df).foreachBatch(each).start()
