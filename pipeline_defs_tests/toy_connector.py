"""A connector that lives outside the product, as a plugin would: an "inbox" of JSON-lines
files read in batch or as a stream, and an "outbox" written in batch or as a stream; and a
"ledger" (a SQLite table) that Spark reads and writes through a Python data source. It only
uses the registry's public decorators and steps.pysource, so registering it proves that a new
connector, JVM or Python, is one module plus its registration."""
from __future__ import annotations

import sqlite3
import uuid
from contextlib import closing

from pydantic import Field
from pyspark.sql import DataFrame
from pyspark.sql.datasource import (
    DataSource,
    DataSourceReader,
    DataSourceWriter,
    InputPartition,
    SimpleDataSourceStreamReader,
    WriterCommitMessage,
)
from pyspark.sql.streaming import StreamingQuery

from pipeline_defs.config.model import StepModel
from pipeline_defs.steps import pysource
from pipeline_defs.steps.context import LoadResult, StepContext
from pipeline_defs.steps.registry import Registry
from pipeline_defs.steps.streaming import Sink, StreamingSink

SCHEMA = "id BIGINT, note STRING"


class FromInbox(StepModel):
    """Read the JSON-lines files of an inbox directory."""

    inbox: str = Field(description="The inbox directory.")
    uses_current = False

    def location(self) -> str | None:
        return self.inbox


class ToOutbox(StepModel, StreamingSink):
    """Write rows as JSON lines into an outbox directory."""

    outbox: str = Field(description="The outbox directory.")

    def location(self) -> str | None:
        return self.outbox


def register(registry: Registry) -> None:
    @registry.step("extract", "fromInbox", FromInbox, asset_kind="inbox")
    def from_inbox(df: None, cfg: FromInbox, ctx: StepContext) -> DataFrame:
        return ctx.spark.read.schema(SCHEMA).json(cfg.inbox)

    @registry.stream_reader("fromInbox")
    def read_inbox_stream(cfg: FromInbox, ctx: StepContext) -> DataFrame:
        return ctx.spark.readStream.schema(SCHEMA).json(cfg.inbox)

    @registry.step("load", "toOutbox", ToOutbox, asset_kind="outbox")
    def to_outbox(df: DataFrame, cfg: ToOutbox, ctx: StepContext) -> LoadResult:
        df.write.mode("append").json(cfg.outbox)
        return LoadResult(cfg.outbox, "json", "append")

    @registry.stream_writer("toOutbox")
    def write_outbox_stream(df: DataFrame, cfg: ToOutbox, ctx: StepContext, sink: Sink
                            ) -> StreamingQuery:
        return sink.writer(df).format("json").start(cfg.outbox)


# ---------------------------------------------------------------- a Python data source
# A "ledger": a table in a SQLite file, read and written by Spark's Python workers through the
# Python Data Source API (pipeline_defs.steps.pysource), as the connectors of stores without a
# JVM connector are. Reads split by id range into `partitions`; each write partition stages
# its rows under a batch id of its own and the commit moves every staged batch into the table
# in one transaction, so a failed write shows nothing.
class LedgerPartition(InputPartition):
    def __init__(self, lo: int, hi: int):
        super().__init__((lo, hi))
        self.lo, self.hi = lo, hi


class Staged(WriterCommitMessage):
    def __init__(self, batch: str, rows: int):
        self.batch, self.rows = batch, rows


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, timeout=60)
    db.execute("CREATE TABLE IF NOT EXISTS ledger (id INTEGER, note TEXT)")
    db.execute("CREATE TABLE IF NOT EXISTS ledger_staged (batch TEXT, id INTEGER, note TEXT)")
    return db


class LedgerReader(DataSourceReader):
    def __init__(self, options):
        self.path, self.parts = options["path"], int(options.get("partitions", "2"))

    def partitions(self):
        with closing(_connect(self.path)) as db:
            lo, hi = db.execute("SELECT min(id), max(id) FROM ledger").fetchone()
        if lo is None:
            return [LedgerPartition(1, 0)]
        step = (hi - lo) // self.parts + 1
        return [LedgerPartition(a, min(a + step - 1, hi)) for a in range(lo, hi + 1, step)]

    def read(self, partition):
        with closing(_connect(self.path)) as db:
            yield from db.execute("SELECT id, note FROM ledger WHERE id BETWEEN ? AND ? "
                                  "ORDER BY id", (partition.lo, partition.hi)).fetchall()


class LedgerStreamReader(SimpleDataSourceStreamReader):
    """New ids since the last offset, a micro-batch at a time."""

    def __init__(self, options):
        self.path = options["path"]

    def initialOffset(self):
        return {"id": 0}

    def read(self, start):
        with closing(_connect(self.path)) as db:
            rows = db.execute("SELECT id, note FROM ledger WHERE id > ? ORDER BY id",
                              (start["id"],)).fetchall()
        return iter(rows), {"id": rows[-1][0] if rows else start["id"]}

    def readBetweenOffsets(self, start, end):
        with closing(_connect(self.path)) as db:
            return iter(db.execute("SELECT id, note FROM ledger WHERE id > ? AND id <= ? "
                                   "ORDER BY id", (start["id"], end["id"])).fetchall())


class LedgerWriter(DataSourceWriter):
    def __init__(self, options, overwrite: bool):
        self.path, self.overwrite = options["path"], overwrite
        self.fail_on = int(options["failOn"]) if options.get("failOn") else None

    def write(self, iterator):
        batch, n = uuid.uuid4().hex, 0
        with closing(_connect(self.path)) as db, db:
            for row in iterator:
                if row.id == self.fail_on:
                    raise ValueError(f"the ledger refuses id {row.id}")
                db.execute("INSERT INTO ledger_staged VALUES (?, ?, ?)", (batch, row.id, row.note))
                n += 1
        return Staged(batch, n)

    def commit(self, messages):
        batches = [m.batch for m in messages if m is not None]
        marks = ",".join("?" * len(batches))
        with closing(_connect(self.path)) as db, db:
            if self.overwrite:
                db.execute("DELETE FROM ledger")
            db.execute(f"INSERT INTO ledger SELECT id, note FROM ledger_staged WHERE batch IN "
                       f"({marks})", batches)
            db.execute(f"DELETE FROM ledger_staged WHERE batch IN ({marks})", batches)

    def abort(self, messages):
        batches = [m.batch for m in messages if m is not None]
        with closing(_connect(self.path)) as db, db:
            db.execute(f"DELETE FROM ledger_staged WHERE batch IN ({','.join('?' * len(batches))})",
                       batches)


class LedgerSource(DataSource):
    @classmethod
    def name(cls) -> str:
        return "toy_ledger"

    def schema(self) -> str:
        return SCHEMA

    def reader(self, schema):
        return LedgerReader(self.options)

    def simpleStreamReader(self, schema):
        return LedgerStreamReader(self.options)

    def writer(self, schema, overwrite: bool):
        return LedgerWriter(self.options, overwrite)


class FromLedger(StepModel):
    """Read the ledger table of a SQLite file."""

    path: str = Field(description="The SQLite file.")
    partitions: int = Field(2, ge=1, description="Spark partitions, by id range.")
    uses_current = False

    def location(self) -> str | None:
        return self.path


class ToLedger(StepModel):
    """Write rows into the ledger table of a SQLite file, all or nothing."""

    path: str = Field(description="The SQLite file.")
    mode: str = Field("append", description="append or overwrite")
    fail_on: int | None = Field(None, description="An id the ledger refuses (to show that a "
                                "failed write commits nothing).")

    def location(self) -> str | None:
        return self.path


def register_ledger(registry: Registry) -> None:
    @registry.step("extract", "fromLedger", FromLedger, asset_kind="sqlite")
    def from_ledger(df: None, cfg: FromLedger, ctx: StepContext) -> DataFrame:
        return pysource.read(ctx, LedgerSource, {"path": cfg.path,
                                                 "partitions": cfg.partitions})

    @registry.stream_reader("fromLedger")
    def read_ledger_stream(cfg: FromLedger, ctx: StepContext) -> DataFrame:
        return pysource.read_stream(ctx, LedgerSource, {"path": cfg.path})

    @registry.step("load", "toLedger", ToLedger, asset_kind="sqlite")
    def to_ledger(df: DataFrame, cfg: ToLedger, ctx: StepContext) -> LoadResult:
        pysource.write(df, ctx, LedgerSource, {"path": cfg.path, "failOn": cfg.fail_on},
                       cfg.mode)
        return LoadResult(cfg.path, "sqlite", cfg.mode)
