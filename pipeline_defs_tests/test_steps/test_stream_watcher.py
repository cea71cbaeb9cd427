"""The streaming watcher counts every micro-batch exactly once, whether one batch or several
ended since its last look (it reads `lastProgress` for one, `recentProgress` for several)."""
from __future__ import annotations

import json
import logging
from types import SimpleNamespace

from pipeline_defs.steps import streaming


def test_each_micro_batch_is_counted_once(spark, tmp_path):
    src = tmp_path / "in"
    src.mkdir()

    def drop(name: str, n: int) -> None:
        (src / name).write_text("".join(json.dumps({"k": i}) + "\n" for i in range(n)))

    drop("a.json", 1)
    q = (spark.readStream.schema("k long").option("maxFilesPerTrigger", 1).json(str(src))
         .writeStream.format("memory").queryName("watched")
         .option("checkpointLocation", str(tmp_path / "cp")).start())
    try:
        stats = streaming.QueryStats(q, 1, "watched")
        seen = []
        w = streaming.Watcher([stats], logging.getLogger("test"),
                              SimpleNamespace(progress_interval_s=3600),
                              on_batch=lambda qs, p: seen.append((p["batchId"],
                                                                 p["numInputRows"])))
        q.processAllAvailable()
        w.poll()  # one new batch
        assert seen == [(0, 1)]
        drop("b.json", 2)
        drop("c.json", 3)
        q.processAllAvailable()  # two batches (one file each) before the next look
        w.poll()
        w.poll()  # nothing new: nothing counted twice
        assert seen == [(0, 1), (1, 2), (2, 3)]
        assert (stats.batches, stats.rows) == (3, 6)
    finally:
        q.stop()
