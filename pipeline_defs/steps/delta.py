"""Delta Lake: fromDeltaLake (time travel; as a stream, new commits) and toDeltaLake (modes,
merge, schema evolution; as a stream, idempotent appends)."""
from __future__ import annotations

import json
import time
from contextlib import contextmanager
from typing import ClassVar, Literal

from pydantic import Field
from pyspark.sql import DataFrame
from pyspark.sql.streaming import StreamingQuery

from pipeline_defs.config.model import FormatModel, exactly_one
from pipeline_defs.steps import streaming
from pipeline_defs.steps.context import LoadResult, StepContext
from pipeline_defs.steps.errors import StepDataError, missing_columns
from pipeline_defs.steps.files import Extract, Load, WriteMode, prepare_path
from pipeline_defs.steps.names import quoted
from pipeline_defs.steps.registry import step, stream_reader, stream_writer
from pipeline_defs.steps.streaming import Sink, StreamingSink

PATH_OR_TABLE = "Set \"path\" for a location or \"table\" for a catalog table."


class FromDeltaLake(Extract):
    """Read a Delta table by path or name, optionally as of a version or timestamp."""

    path: str | None = Field(None, description="Table location, e.g. /data/delta/orders.")
    table: str | None = Field(None, description="Table name in the catalog (instead of path).")
    version: int | None = Field(None, description="Time travel: read this table version.")
    timestamp: str | None = Field(None, description="Time travel: the table as of this time, "
                                                    "e.g. \"2025-01-01 00:00:00\".")

    def problems(self):
        out = exactly_one(self, "path", "table", PATH_OR_TABLE)
        if self.version is not None and self.timestamp is not None:
            out.append(("version", "version and timestamp both set.", "Keep one of them."))
        return out

    def streaming_problems(self):
        if self.timestamp is not None:
            return [("timestamp", "a stream starts at a version, not a timestamp.",
                     "Use \"version\" (the first version to read), or remove it.")]
        return []


@step("extract", "fromDeltaLake", FromDeltaLake, asset_kind="delta")
def from_delta_lake(df: None, cfg: FromDeltaLake, ctx: StepContext) -> DataFrame:
    r = ctx.spark.read.format("delta")
    if cfg.version is not None:
        r = r.option("versionAsOf", cfg.version)
    if cfg.timestamp is not None:
        r = r.option("timestampAsOf", cfg.timestamp)
    if cfg.table:
        return r.table(cfg.table)
    prepare_path(ctx.spark, cfg, ctx, cfg.path)
    return r.load(cfg.path)


@stream_reader("fromDeltaLake")
def read_delta_stream(cfg: FromDeltaLake, ctx: StepContext) -> DataFrame:
    """New commits as they come, from `version` when given."""
    if cfg.path:
        prepare_path(ctx.spark, cfg, ctx, cfg.path)
    rs = ctx.spark.readStream.format("delta")
    if cfg.version is not None:
        rs = rs.option("startingVersion", cfg.version)
    return rs.table(cfg.table) if cfg.table else rs.load(cfg.path)


class Merge(FormatModel):
    key_columns: list[str] = Field(min_length=1, description="Columns identifying a row.")
    when_matched: Literal["update", "ignore", "delete"] = Field(
        "update", description="What happens to target rows whose key is in the input.")
    when_not_matched: Literal["insert", "ignore"] = Field(
        "insert", description="What happens to input rows whose key is not in the target.")
    matched_condition: str | None = Field(None, description="Only act on matches where this "
                                          "holds; `t.` is the target, `s.` the input, e.g. "
                                          "\"s.updated_at > t.updated_at\".")


class ToDeltaLake(Load, StreamingSink):
    """Write a Delta table (path or table), or upsert into it with `merge`."""

    counts_rows: ClassVar[bool] = True  # Delta's commit metrics count what was written
    sql_fields: ClassVar[frozenset[str]] = frozenset({"replaceWhere", "merge.matchedCondition"})

    path: str | None = Field(None, description="Table location.")
    table: str | None = Field(None, description="Catalog table name (instead of path).")
    mode: WriteMode = Field("errorifexists", description="append, overwrite, errorifexists, "
                                                         "ignore (ignored with merge).")
    partition_by: list[str] | None = Field(None, description="Partition columns.")
    merge_schema: bool = Field(False, description="Add new input columns to the table schema.")
    overwrite_schema: bool = Field(False, description="With overwrite: replace the schema.")
    replace_where: str | None = Field(None, description="With overwrite: replace only the rows "
                                      "matching this predicate, e.g. \"day = '2025-01-01'\".")
    merge: Merge | None = Field(None, description="Upsert on key columns instead of a plain "
                                "write; creates the table on first run.")
    auto_optimize: bool = Field(
        False, description="Open-source Delta's forms of autoOptimize: optimized writes (the "
        "data is binned into ~128 MB files before writing: fewer, bigger files) and auto "
        "compaction (after the commit, a partition holding at least "
        "spark.databricks.delta.autoCompact.minNumFiles (50) small files is compacted, as its "
        "own OPTIMIZE commit). The load's metadata shows the files written and compacted.")
    table_properties: dict[str, str] = Field(
        default_factory=dict, description="Table properties (TBLPROPERTIES), e.g. "
        "{\"delta.logRetentionDuration\": \"interval 30 days\", \"quality\": \"gold\"}: "
        "given when the table is made, and set (ALTER TABLE ... SET TBLPROPERTIES, one commit) "
        "on an existing table whose values differ.")

    def problems(self):
        return exactly_one(self, "path", "table", PATH_OR_TABLE)

    def streaming_problems(self):
        if self.merge is not None:
            return [("merge", "merge (upsert) into Delta from a stream is not supported.",
                     "Use \"mode\": \"append\", or merge from a batch pipeline.")]
        return []


def _delta_table(ctx: StepContext, cfg: ToDeltaLake):
    from delta.tables import DeltaTable
    if cfg.table:
        return DeltaTable.forName(ctx.spark, cfg.table) if ctx.spark.catalog.tableExists(
            cfg.table) else None
    return DeltaTable.forPath(ctx.spark, cfg.path) if DeltaTable.isDeltaTable(
        ctx.spark, cfg.path) else None


def _merge(df: DataFrame, cfg: ToDeltaLake, ctx: StepContext, table) -> None:
    m = cfg.merge
    missing_columns(df, m.key_columns, "merge.keyColumns")
    on = " AND ".join(f"t.{quoted(k)} <=> s.{quoted(k)}" for k in m.key_columns)
    builder = table.alias("t").merge(df.alias("s"), on)
    if m.when_matched == "update":
        builder = builder.whenMatchedUpdateAll(condition=m.matched_condition)
    elif m.when_matched == "delete":
        builder = builder.whenMatchedDelete(condition=m.matched_condition)
    if m.when_not_matched == "insert":
        builder = builder.whenNotMatchedInsertAll()
    if cfg.merge_schema:
        builder = builder.withSchemaEvolution()
    try:
        builder.execute()
    except Exception as e:  # a Py4J/Spark error: say what it means for a merge
        if "MULTIPLE_SOURCE_ROW_MATCHING" in str(e):
            raise StepDataError(
                f"several input rows share a merge key ({', '.join(m.key_columns)}), so Delta "
                "cannot tell which one wins. Add a deduplicate step on those columns (with "
                "orderBy to pick the latest) before this load.") from None
        raise


AUTO_OPTIMIZE = {"spark.databricks.delta.optimizeWrite.enabled": "true",
                 "spark.databricks.delta.autoCompact.enabled": "true"}


@contextmanager
def session_conf(spark, settings: dict[str, str]):
    """These session settings for the duration of one write (runs do not share a process)."""
    old = {k: spark.conf.get(k, None) for k in settings}
    for k, v in settings.items():
        spark.conf.set(k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            spark.conf.unset(k) if v is None else spark.conf.set(k, v)


def _commit_info(spark, log, version: int) -> dict | None:
    """The commitInfo of one commit, read from its file in `_delta_log` (a few ms); None when
    the file is gone (log clean-up)."""
    jvm = spark._jvm
    path = jvm.org.apache.hadoop.fs.Path(log.logPath(), f"{version:020d}.json")
    fs = path.getFileSystem(log.newDeltaHadoopConf())
    if not fs.exists(path):
        return None
    stream = fs.open(path)
    try:
        text = jvm.org.apache.commons.io.IOUtils.toString(stream, "UTF-8")
    finally:
        stream.close()
    return next((json.loads(line)["commitInfo"] for line in text.splitlines()
                 if line.startswith('{"commitInfo"')), {})


def last_commit(spark, table, version: int | None = None) -> dict:
    """Version, operation and operation metrics of the table's latest commit (or of
    `version`), read from its commit file in `_delta_log` (0.07 s) rather than `history(1)`,
    a Spark job that costs 0.7 s in a fresh JVM (measured): that is half of a small
    pipeline's fixed overhead."""
    try:
        log = table._jdt.deltaLog()
        version = log.unsafeVolatileSnapshot().version() if version is None else version
        info = _commit_info(spark, log, version)
        if info is None:
            raise LookupError(version)
        return {"version": version, "operation": info.get("operation"),
                "operationMetrics": info.get("operationMetrics")}
    except Exception:  # noqa: BLE001 - a commit kept elsewhere (managed commits): ask Delta
        history = table.history(1) if version is None else \
            table.history().where(f"version = {version}")
        return history.select("version", "operation", "operationMetrics").first().asDict()


def set_properties(spark, cfg: ToDeltaLake, table) -> None:
    """The table properties the load asks for that the table does not have yet."""
    conf = table._jdt.deltaLog().update(*(getattr(table._jdt.deltaLog(), f"update$default${i}")()
                                          for i in (1, 2, 3))).metadata().configuration()
    java = spark._jvm.scala.jdk.javaapi.CollectionConverters.asJava(conf)  # a Scala Map
    have = {str(k): str(java.get(k)) for k in java.keySet()}
    todo = {k: v for k, v in cfg.table_properties.items() if have.get(k) != str(v)}
    if todo:
        name = cfg.table or f"delta.`{cfg.path.replace('`', '``')}`"
        props = ", ".join(f"'{k.replace(chr(39), chr(39) * 2)}' = "
                          f"'{str(v).replace(chr(39), chr(39) * 2)}'" for k, v in todo.items())
        spark.sql(f"ALTER TABLE {name} SET TBLPROPERTIES ({props})")


@step("load", "toDeltaLake", ToDeltaLake, asset_kind="delta")
def to_delta_lake(df: DataFrame, cfg: ToDeltaLake, ctx: StepContext) -> LoadResult:
    target = cfg.path or cfg.table
    if cfg.path:
        prepare_path(ctx.spark, cfg, ctx, cfg.path)
    # only a merge needs the table before writing (and a plain write opens it faster after)
    table = _delta_table(ctx, cfg) if cfg.merge else None
    with session_conf(ctx.spark, AUTO_OPTIMIZE if cfg.auto_optimize else {}):
        if cfg.merge and table is not None:
            _merge(df, cfg, ctx, table)
            mode = "merge"
        else:
            mode = "overwrite" if cfg.merge else cfg.mode
            w = df.write.format("delta").mode(mode)
            if cfg.partition_by:
                w = w.partitionBy(*cfg.partition_by)
            if cfg.merge_schema:
                w = w.option("mergeSchema", "true")
            if cfg.overwrite_schema:
                w = w.option("overwriteSchema", "true")
            if cfg.replace_where:
                w = w.option("replaceWhere", cfg.replace_where)
            w = w.options(**cfg.table_properties)  # delta.* ones: set when it is made
            w.saveAsTable(cfg.table) if cfg.table else w.save(cfg.path)
            table = table or _delta_table(ctx, cfg)
    if cfg.table_properties and table is not None:
        set_properties(ctx.spark, cfg, table)
    meta, rows = {}, None
    if table is not None:
        last = last_commit(ctx.spark, table)
        compaction = None
        if cfg.auto_optimize and last["operation"] == "OPTIMIZE" and last["version"] > 0:
            compaction, last = last, last_commit(ctx.spark, table, last["version"] - 1)
        metrics = last["operationMetrics"] or {}
        meta = {"delta_version": last["version"], "delta_operation": last["operation"],
                **{f"delta_{k}": int(v) for k, v in metrics.items()
                   if k in ("numOutputRows", "numTargetRowsInserted", "numTargetRowsUpdated",
                            "numTargetRowsDeleted", "numFiles", "numOutputBytes",
                            "numAddedFiles", "numRemovedFiles", "numSourceRows")
                   and str(v).isdigit()}}
        if cfg.auto_optimize:
            c = (compaction or {}).get("operationMetrics") or {}
            meta.update(delta_auto_compaction_version=compaction and compaction["version"],
                        delta_compacted_files=int(c.get("numRemovedFiles", 0)),
                        delta_compacted_into=int(c.get("numAddedFiles", 0)))
        rows = meta.get("delta_numSourceRows" if mode == "merge" else "delta_numOutputRows")
    return LoadResult(target, "delta", mode, meta, rows)


STREAM_MARK = "pipeline_defs.stream"
"""The key, in a streaming load's commit's `userMetadata` (JSON), of the query id; `batch`
holds the micro-batch id the commit wrote."""


class DeltaBatches:
    """A streaming load into Delta, one commit per micro-batch, exactly once.

    Spark's own Delta sink makes every micro-batch look up the query's last committed batch
    in the table's SetTransactions, which delta-spark 4.4 answers by reconstructing the
    table's state from its log: three Spark jobs, 0.3-0.4 s of every batch at 20,000 events/s
    (bench/RESULTS.md). Here each commit carries `{"pipeline_defs.stream": <query id>,
    "batch": <id>}` as its userMetadata, and the last batch written is looked up once, at the
    query's first micro-batch, in the newest commit files (and, for a query whose earlier
    batches Spark's sink wrote, in the SetTransactions); a micro-batch Spark replays after a
    crash between the Delta commit and its own commit log is then skipped, not written twice.
    The query id is Spark's, kept in the checkpoint, so a restarted query finds its batches.
    """

    SCAN = 1000  # commit files read back at most, newest first, to find the last batch

    def __init__(self, cfg: ToDeltaLake, sink: Sink):
        self.cfg, self.sink = cfg, sink
        self.mode = "overwrite" if sink.output_mode == "complete" else "append"
        self.query_id: str | None = None  # set once the query has started
        self.done: int | None = None  # the last batch id in the table; None: not looked up
        self._log = None
        self._properties_set = False

    def __call__(self, batch: DataFrame, batch_id: int) -> None:
        spark = batch.sparkSession
        while self.query_id is None:  # start() returns before or while the first batch runs
            time.sleep(0.01)
        if self.done is None:
            self.done = self.last_batch(spark)
        if batch_id <= self.done:
            streaming.note_skipped(self.sink.query_name, batch_id)
            return
        w = batch.write.format("delta").mode(self.mode) \
            .option("mergeSchema", str(self.cfg.merge_schema).lower()) \
            .option("userMetadata", json.dumps({STREAM_MARK: self.query_id,
                                                "batch": int(batch_id)}))
        if self.cfg.partition_by:
            w = w.partitionBy(*self.cfg.partition_by)
        w = w.options(**self.cfg.table_properties)
        w.saveAsTable(self.cfg.table) if self.cfg.table else w.save(self.cfg.path)
        if self.cfg.table_properties and not self._properties_set:  # once per query start
            from delta.tables import DeltaTable
            set_properties(spark, self.cfg, DeltaTable.forName(spark, self.cfg.table)
                           if self.cfg.table else DeltaTable.forPath(spark, self.cfg.path))
            self._properties_set = True
        self.done = int(batch_id)
        streaming.note_written(self.sink.query_name, self.rows_of(spark, batch_id))

    def delta_log(self, spark):
        from delta.tables import DeltaTable
        if self._log is None:
            t = self.cfg.table
            if t and spark.catalog.tableExists(t):
                self._log = DeltaTable.forName(spark, t)._jdt.deltaLog()
            elif not t and DeltaTable.isDeltaTable(spark, self.cfg.path):
                self._log = DeltaTable.forPath(spark, self.cfg.path)._jdt.deltaLog()
        return self._log

    def _marked(self, info: dict | None) -> int | None:
        try:
            meta = json.loads((info or {}).get("userMetadata") or "")
        except ValueError:
            return None
        if isinstance(meta, dict) and meta.get(STREAM_MARK) == self.query_id:
            return int(meta["batch"])
        return None

    def last_batch(self, spark) -> int:
        """The last micro-batch of this query the table holds (-1: none)."""
        log = self.delta_log(spark)
        if log is None:
            return -1
        newest = log.update(*(getattr(log, f"update$default${i}")() for i in (1, 2, 3))
                            ).version()
        for v in range(newest, max(newest - self.SCAN, -1), -1):
            info = _commit_info(spark, log, v)
            if info is None:
                break
            if (b := self._marked(info)) is not None:
                return b
        # none of ours: batches written by Spark's Delta sink (before this writer) are kept
        # as SetTransactions under the same query id (one state reconstruction, at start)
        txn = log.unsafeVolatileSnapshot().transactions().get(self.query_id)
        return int(txn.get()) if txn.isDefined() else -1

    def rows_of(self, spark, batch_id: int) -> int:
        """Rows the batch's commit wrote (Delta's commit metrics)."""
        log = self.delta_log(spark)
        if log is None:
            return 0
        v = log.unsafeVolatileSnapshot().version()
        for version in range(v, max(v - 10, -1), -1):  # another writer may have committed
            info = _commit_info(spark, log, version) or {}
            if self._marked(info) == batch_id:
                return int((info.get("operationMetrics") or {}).get("numOutputRows", 0))
        return 0


@stream_writer("toDeltaLake")
def write_delta_stream(df: DataFrame, cfg: ToDeltaLake, ctx: StepContext, sink: Sink
                       ) -> StreamingQuery:
    """Appends each micro-batch (complete mode: replaces the table), exactly once
    (DeltaBatches). (merge is refused when the file loads.)"""
    if cfg.path:
        prepare_path(ctx.spark, cfg, ctx, cfg.path)
    batches = DeltaBatches(cfg, sink)
    # the query runs on a copy of the session taken when it starts: the settings stay with it
    with session_conf(ctx.spark, AUTO_OPTIMIZE if cfg.auto_optimize else {}):
        q = sink.writer(df).foreachBatch(batches).start()
    batches.query_id = str(q.id)
    return q
