"""The streaming Delta load's exactly-once bookkeeping (DeltaBatches), driven batch by batch:
a micro-batch Spark replays after a crash (written to Delta, not yet in the checkpoint's
commit log) is skipped, by a fresh writer as a restarted query has; batches written earlier
by Spark's own Delta sink (SetTransactions) are recognised too. The table is checked by
reading its `_delta_log` and Parquet files with Python, not through the writer."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from pipeline_defs.steps import streaming
from pipeline_defs.steps.delta import STREAM_MARK, DeltaBatches, ToDeltaLake
from pipeline_defs.steps.streaming import Sink


def commits(table: Path) -> list[dict]:
    out = []
    for f in sorted((table / "_delta_log").glob("*.json")):
        actions = [json.loads(line) for line in f.read_text().splitlines() if line]
        info = next(a["commitInfo"] for a in actions if "commitInfo" in a)
        adds = [a["add"]["path"] for a in actions if "add" in a]
        removes = {a["remove"]["path"] for a in actions if "remove" in a}
        out.append({"version": int(f.stem), "info": info, "adds": adds, "removes": removes})
    return out


def live_ids(table: Path) -> list[int]:
    """Row ids of the table's current files (adds not removed since), read with pandas."""
    live: set[str] = set()
    for c in commits(table):
        live = (live - c["removes"]) | set(c["adds"])
    return sorted(int(i) for f in live for i in pd.read_parquet(table / f)["id"])


def writer(table: Path, query_id: str, name: str = "q", mode: str = "append") -> DeltaBatches:
    w = DeltaBatches(ToDeltaLake(path=str(table), mode="append"),
                     Sink(name, "unused", {}, mode))
    w.query_id = query_id
    return w


def test_a_replayed_batch_is_skipped_by_a_restarted_writer(spark, tmp_path):
    table = tmp_path / "t"
    batch = lambda lo, hi: spark.range(lo, hi)  # noqa: E731
    first = writer(table, "query-1")
    first(batch(0, 5), 0)
    first(batch(5, 8), 1)
    first(batch(5, 8), 1)  # the same writer sees a batch id again: nothing written
    restarted = writer(table, "query-1")  # a new run: learns the last batch from the table
    restarted(batch(5, 8), 1)  # Spark replays batch 1
    restarted(batch(8, 10), 2)
    other = writer(table, "query-2")  # another query into the same table has its own ids
    other(batch(100, 102), 0)

    assert live_ids(table) == list(range(10)) + [100, 101]
    marks = [json.loads(c["info"]["userMetadata"]) for c in commits(table)]
    assert marks == [{STREAM_MARK: "query-1", "batch": 0}, {STREAM_MARK: "query-1", "batch": 1},
                     {STREAM_MARK: "query-1", "batch": 2}, {STREAM_MARK: "query-2", "batch": 0}]
    assert streaming._SKIPPED.pop("q") == [1, 1]
    assert streaming.take_written("q") == 5 + 3 + 2 + 2  # from each commit's metrics


def test_complete_mode_replaces_the_table_each_batch(spark, tmp_path):
    table = tmp_path / "t"
    w = writer(table, "query-c", name="qc", mode="complete")
    w(spark.range(0, 3), 0)
    w(spark.range(0, 4), 1)
    assert live_ids(table) == [0, 1, 2, 3]
    assert streaming.take_written("qc") == 7


def test_batches_of_sparks_own_delta_sink_are_recognised(spark, tmp_path):
    """A query that ran with Spark's Delta sink (before this writer) continues here: its last
    batch, kept by Delta as a SetTransaction under the query id, is not written again."""
    src, table = tmp_path / "src", tmp_path / "t"
    spark.range(0, 4).write.parquet(str(src))
    q = spark.readStream.schema("id BIGINT").parquet(str(src)).writeStream.format("delta") \
        .option("checkpointLocation", str(tmp_path / "cp")).trigger(availableNow=True) \
        .start(str(table))
    q.awaitTermination(120)
    assert [c["info"].get("userMetadata") for c in commits(table)] == [None]
    w = writer(table, str(q.id), name="qs")
    w(spark.range(0, 4), 0)  # Spark replays batch 0 after the switch: already there
    w(spark.range(4, 6), 1)
    assert live_ids(table) == list(range(6))
    assert streaming._SKIPPED.pop("qs") == [0]


def test_a_streaming_query_through_the_writer_waits_for_its_id(spark, tmp_path):
    """The writer gets the query id once start() returns; a first batch that is faster waits
    for it, so every commit carries the id Spark keeps in the checkpoint."""
    table, src = tmp_path / "t", tmp_path / "src"
    spark.range(0, 3).write.parquet(str(src))
    w = DeltaBatches(ToDeltaLake(path=str(table), mode="append"), Sink("qw", "x", {}, "append"))
    q = spark.readStream.schema("id BIGINT").parquet(str(src)).writeStream \
        .option("checkpointLocation", str(tmp_path / "cp")).trigger(availableNow=True) \
        .foreachBatch(w).start()
    time.sleep(0.5)
    w.query_id = str(q.id)
    q.awaitTermination(120)
    assert q.exception() is None
    meta = json.loads((tmp_path / "cp" / "metadata").read_text())
    assert [json.loads(c["info"]["userMetadata"]) for c in commits(table)] == \
        [{STREAM_MARK: meta["id"], "batch": 0}]
    assert live_ids(table) == [0, 1, 2]
    assert streaming.take_written("qw") == 3
