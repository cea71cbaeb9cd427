"""A connector that lives outside the product, as a plugin would: an "inbox" of JSON-lines
files read in batch or as a stream, and an "outbox" written in batch or as a stream. It only
uses the registry's public decorators, so registering it proves that a new connector is one
module plus its registration."""
from __future__ import annotations

from pydantic import Field
from pyspark.sql import DataFrame
from pyspark.sql.streaming import StreamingQuery

from pipeline_defs.config.model import StepModel
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
