"""Native execution in runs: each step's metadata says where its Spark queries ran (and why an
operator stayed on Spark); a run's `spark_config` turns Comet off; a step that runs out of
Comet's memory runs again on Spark and writes the right answer."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.dagster_layer.resources.spark import SparkResource
from pipeline_defs.definitions import default_resources
from pipeline_defs_tests.conftest import run_job, write_json

BIN = Path(sys.executable).parent


def _source(path: Path, n: int, groups: int, seed: int = 7) -> pa.Table:
    rng = np.random.default_rng(seed)
    t = pa.table({"id": np.arange(n, dtype=np.int64),
                  "k": rng.integers(0, groups, n, dtype=np.int64),
                  "s": [f"{x:016x}" for x in rng.integers(0, 2**62, n)],
                  "v": rng.random(n)})
    pq.write_table(t, path)
    return t


def _pipeline(src: Path, out: Path, fmt: str = "delta") -> dict:
    load = {"type": "load", "method": "toDeltaLake", "name": "totals_out",
            "config": {"path": str(out), "mode": "overwrite"}} if fmt == "delta" else \
        {"type": "load", "method": "toFile", "name": "totals_out",
         "config": {"path": str(out), "format": "parquet", "mode": "overwrite"}}
    return {"name": "native-totals", "steps": [
        {"type": "extract", "method": "fromFile", "name": "events",
         "config": {"path": str(src), "format": "parquet"}},
        {"type": "transform", "method": "filterRows", "config": {"condition": "v >= 0.1"}},
        {"type": "transform", "method": "aggregateData", "name": "totals",
         "config": {"groupBy": ["k"], "aggregations": {
             "n": "count(*)", "top": "max(s)", "total": "sum(id)"}}},
        load]}


def _expected(t: pa.Table) -> dict:
    df = t.to_pandas()
    df = df[df.v >= 0.1]
    g = df.groupby("k").agg(n=("id", "size"), top=("s", "max"), total=("id", "sum"))
    return {int(k): (int(r.n), r.top, int(r.total)) for k, r in g.iterrows()}


def _written(out: Path) -> dict:
    t = pq.read_table(out) if not (out / "_delta_log").exists() else _delta(out)
    return {r["k"]: (r["n"], r["top"], r["total"]) for r in t.to_pylist()}


def _delta(out: Path) -> pa.Table:
    import json
    live = set()
    for f in sorted((out / "_delta_log").glob("*.json")):
        for line in f.read_text().splitlines():
            a = json.loads(line)
            if "add" in a:
                live.add(a["add"]["path"])
            elif "remove" in a:
                live.discard(a["remove"]["path"])
    return pa.concat_tables(pq.read_table(out / p) for p in sorted(live))


def _load_metadata(result) -> dict:
    m = next(e for e in result.all_events if e.event_type_value == "ASSET_MATERIALIZATION"
             ).event_specific_data.materialization.metadata
    return {k: getattr(v, "value", getattr(v, "md_str", v)) for k, v in m.items()}


def test_the_load_says_which_operators_ran_natively(tmp_path, registry):
    t = _source(tmp_path / "events.parquet", 50_000, 500)
    p = load_pipeline(write_json(tmp_path / "p.json", _pipeline(
        tmp_path / "events.parquet", tmp_path / "out")), registry)
    md = _load_metadata(run_job(p))
    assert md["spark_engine"] in ("native", "native, partly"), md
    native = md["native_operators"].split(", ")
    assert {"NativeScan", "Filter", "ShuffleExchange"} <= set(native), native
    assert {"HashAggregate", "SortAggregate"} & set(native), native
    if md["spark_engine"] == "native, partly":  # each operator left on Spark has its reason
        table = md["spark_operators"]
        assert table.startswith("| operator on Spark | why not native |")
        assert all(len(row.split("|")) == 4 and row.split("|")[2].strip()
                   for row in table.splitlines()[2:])
    assert _written(tmp_path / "out") == _expected(t)

    # the run's spark_config turns Comet off for that run (a runtime setting)
    off = SparkResource(spark_config={"spark.comet.enabled": "false"})
    md = _load_metadata(run_job(p, {**default_resources(), "spark": off}))
    assert md["spark_engine"] == "Spark (native execution off)"
    assert "native_operators" not in md
    assert _written(tmp_path / "out") == _expected(t)


def test_a_step_out_of_native_memory_runs_again_on_spark(tmp_path):
    """32 MB of off-heap memory is too little for Comet's aggregate over 150,000 groups
    (it cannot spill there: the task fails); the step is run again with Comet off, Spark's
    own aggregate spills, and the answer is the right one."""
    t = _source(tmp_path / "events.parquet", 400_000, 150_000)
    f = write_json(tmp_path / "p.json", _pipeline(tmp_path / "events.parquet",
                                                   tmp_path / "out", fmt="parquet"))
    r = subprocess.run([str(BIN / "pipeline"), "run", str(f), "--spark-conf",
                        "spark.memory.offHeap.size=32m", "--spark-conf",
                        "spark.master=local[2]"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "native execution failed" in r.stderr and "running it again on Spark" in r.stderr
    row = next(line for line in r.stdout.splitlines() if line.strip().startswith("totals_out"))
    assert "Spark (run again after native execution failed)" in row, row
    assert "Traceback" not in r.stdout + r.stderr
    assert _written(tmp_path / "out") == _expected(t)
