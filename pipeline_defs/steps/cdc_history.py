"""applyChanges' history: each key's rows or versions rebuilt from its changes, a snapshot
turned into changes, the history check, and the change log's tombstones (cdc.py applies)."""
from __future__ import annotations

from typing import Any

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from pipeline_defs.config import durations
from pipeline_defs.steps.context import TableCheck
from pipeline_defs.steps.errors import StepDataError
from pipeline_defs.steps.names import quoted

START, END = "__START_AT", "__END_AT"
# columns of the change log
SEQ, DEL, TRUNC, APPLIED = "__seq", "__deleted", "__truncate", "__applied_at"
Config = Any  # cdc.ApplyChanges (not imported: it imports this module)


def nulls(ev: DataFrame, cols: list[str]) -> list:
    return [F.lit(None).cast(ev.schema[c].dataType).alias(c) for c in cols]


def _differs(cols: list[str], a: str, b: str) -> F.Column:
    out = F.lit(False)
    for c in cols:
        out = out | ~F.col(f"{a}.{quoted(c)}").eqNullSafe(F.col(f"{b}.{quoted(c)}"))
    return out


def snapshot_changes(ev: DataFrame, log: DataFrame | None, cfg: Config,
                     cols: list[str]) -> DataFrame:
    """A whole snapshot at one sequence as the changes since the state just before it."""
    spark = ev.sparkSession
    seqs = ev.select(SEQ).distinct().limit(2).collect()
    if len(seqs) > 1:
        raise StepDataError(f"a snapshot has one sequence, and sequenceBy {cfg.sequence_by} "
                            f"gives several ({seqs[0][0]!r}, {seqs[1][0]!r}, ...). Use the "
                            "snapshot's date, e.g. \"'${DATE}'\".")
    seq_type = ev.schema[SEQ].dataType
    if seqs:
        s = seqs[0][0]
    else:
        try:  # an empty snapshot: every key is deleted, at the constant sequence
            s = spark.range(1).select(F.expr(cfg.sequence_by)).first()[0]
        except AnalysisException as e:
            raise StepDataError(f"the snapshot is empty and sequenceBy {cfg.sequence_by} "
                                "reads a column, so its sequence is unknown. Use a constant "
                                "such as \"'${DATE}'\".") from e
    at = F.lit(s).cast(seq_type)
    if log is None:
        return ev
    key = [quoted(k) for k in cfg.keys]
    lg = log.where(f"NOT {TRUNC}")
    last = Window.partitionBy(*key).orderBy(F.col(SEQ).desc())
    prev = lg.where(F.col(SEQ) < at).withColumn("__n", F.row_number().over(last)) \
        .where(f"__n = 1 AND NOT {DEL}").select(*key, *[quoted(c) for c in cols]) \
        .withColumn("__present", F.lit(True))
    on = [F.col(f"s.{quoted(k)}").eqNullSafe(F.col(f"p.{quoted(k)}")) for k in cfg.keys]
    joined = ev.alias("s").join(prev.alias("p"), on, "left")
    upserts = joined.where(F.col("p.__present").isNull() | _differs(cols, "s", "p")) \
        .select("s.*")
    deletes = prev.join(ev.select(*key), cfg.keys, "left_anti").select(
        *key, *nulls(ev, cols),
        at.alias(SEQ), F.lit(True).alias(DEL), F.lit(False).alias(TRUNC))
    changes = upserts.unionByName(deletes)
    # the new ones only (a snapshot applied again finds its changes in the log)
    changes = changes.join(lg.select(*key, SEQ), cfg.keys + [SEQ], "left_anti").localCheckpoint()
    nxt = lg.where(F.col(SEQ) > at).agg(F.min(SEQ)).first()[0]
    if nxt is None:
        return changes
    # a later snapshot was applied already: for the keys changed here that it did not change,
    # its state is the one before this snapshot (put back at its sequence)
    after = F.lit(nxt).cast(seq_type)
    restore = changes.select(*key).join(lg.where(F.col(SEQ) == after).select(*key), cfg.keys,
                                        "left_anti")
    restore = restore.join(prev, cfg.keys, "left").select(
        *key, *[quoted(c) for c in cols], after.alias(SEQ),
        F.col("__present").isNull().alias(DEL), F.lit(False).alias(TRUNC))
    return changes.unionByName(restore)


def rebuild(log: DataFrame, cfg: Config, cols: list[str]) -> DataFrame:
    """Each key's rows (SCD1) or versions (SCD2) from all its changes."""
    key = [F.col(quoted(k)) for k in cfg.keys]
    if cfg.stored_as == "scd1" and not cfg.ignore_null_updates:  # the latest change wins
        last = Window.partitionBy(*key).orderBy(F.col(SEQ).desc())
        return log.withColumn("__n", F.row_number().over(last)).where(f"__n = 1 AND NOT {DEL}") \
            .select(*[F.col(quoted(c)) for c in cfg.keys + cols])
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


def drop_tombstones(spark, cfg: Config) -> int:
    """SCD1: the changes of keys deleted longer than tombstoneRetention ago leave the log."""
    from delta.tables import DeltaTable
    key = [quoted(k) for k in cfg.keys]
    secs = durations.seconds(cfg.tombstone_retention)
    log = DeltaTable.forPath(spark, cfg.log_path)
    last = Window.partitionBy(*key).orderBy(F.col(SEQ).desc())
    expired = log.toDF().where(f"NOT {TRUNC}").withColumn("__n", F.row_number().over(last)) \
        .where(F.col("__n") == 1).where(F.col(DEL)).where(
            F.col(APPLIED) < F.current_timestamp() - F.make_interval(secs=F.lit(secs))) \
        .select(*[F.col(k).alias(f"__k{i}") for i, k in enumerate(key)]).localCheckpoint()
    n = expired.count()
    if n:  # (the keys renamed: a source read from the target itself would not resolve)
        on = " AND ".join(f"l.{quoted(k)} <=> x.__k{i}" for i, k in enumerate(cfg.keys))
        log.alias("l").merge(expired.alias("x"), f"{on} AND NOT l.{TRUNC}") \
            .whenMatchedDelete().execute()
    return n


def check_history(spark, cfg: Config) -> TableCheck:
    """SCD2: at most one current version per key, validity intervals that do not overlap;
    SCD1: one row per key. Over the whole table, in one pass."""
    key = [quoted(k) for k in cfg.keys]
    t = spark.read.format("delta").load(cfg.path)
    if cfg.stored_as == "scd1":
        r = t.groupBy(*key).count().agg(F.count(F.when(F.col("count") > 1, 1)).alias("dup"),
                                         F.count("*").alias("keys"),
                                         F.sum("count").alias("rows")).first()
        return TableCheck("history", r["dup"] == 0, {"keys_in_more_than_one_row": r["dup"],
                                                     "keys": r["keys"], "rows": r["rows"] or 0})
    w = Window.partitionBy(*key).orderBy(START)
    x = t.withColumn("__next", F.lead(START).over(w))
    r = x.agg(
        F.count(F.when(F.col(END).isNull() & F.col("__next").isNotNull(), 1)).alias("open"),
        F.count(F.when(F.col(END) > F.col("__next"), 1)).alias("overlap"),
        F.count(F.when(F.col(END) <= F.col(START), 1)).alias("empty"),
        F.count(F.when(F.col(END).isNull(), 1)).alias("current"),
        F.count("*").alias("versions")).first()
    passed = r["open"] == 0 and r["overlap"] == 0 and r["empty"] == 0
    return TableCheck("history", passed, {
        "keys_with_a_current_version_before_another": r["open"],
        "overlapping_versions": r["overlap"], "empty_versions": r["empty"],
        "current_versions": r["current"], "versions": r["versions"]})
