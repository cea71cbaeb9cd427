"""Fixed overhead: a tiny Parquet -> Delta pipeline through `pipeline run` vs the same work as
a plain PySpark script, both as whole processes (interpreter start to exit), alternating.

The plain script (bench/plain_tiny.py) gets the product's session settings (same jars, Delta
extensions) and nothing else: no Dagster import, and its JVM starts as PySpark's does; run
again with the product's class-data archive of the driver JVM (jvm_archive.py), the
difference of the medians is what the orchestration costs on top of Spark: imports,
definitions, the Dagster instance's writes, the run summary, exit. A breakdown of one traced
pipeline run is printed and recorded too.

    .venv/bin/python bench/overhead_bench.py [--runs 7] [--master local[2]]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from results import alternate, timed, write_section

from pipeline_defs.spark import acceleration, jvm_archive

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent

PIPELINE = {
    "name": "tiny-bench",
    "description": "A small Parquet file -> Delta (bench/overhead_bench.py).",
    "steps": [
        {"type": "extract", "method": "fromFile", "name": "read",
         "config": {"path": "${src}", "format": "parquet"}},
        {"type": "load", "method": "toDeltaLake", "name": "write",
         "config": {"path": "${out}", "mode": "overwrite"}},
    ],
}


def breakdown(home: Path) -> list[tuple[str, float]]:
    """Phases of the last pipeline run, from its Dagster event log (seconds from the run's
    first event)."""
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    code = """
import json, dagster as dg
i = dg.DagsterInstance.get()
r = i.get_runs(limit=1)[0]
out = [(rec.event_log_entry.dagster_event.event_type_value, rec.event_log_entry.step_key,
        rec.event_log_entry.timestamp) for rec in i.get_records_for_run(r.run_id).records
       if rec.event_log_entry.dagster_event]
print(json.dumps(out))
"""
    events = json.loads(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                       capture_output=True, text=True).stdout)
    t0 = events[0][2]
    first = {}
    for kind, step, ts in events:
        first.setdefault((kind, step), ts - t0)
    return [(f"{kind} {step or ''}".strip(), t) for (kind, step), t in first.items()
            if kind in ("RUN_START", "PIPELINE_START", "STEP_START", "STEP_SUCCESS",
                        "RUN_SUCCESS", "PIPELINE_SUCCESS")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--master", default="local[2]")
    args = ap.parse_args()
    data = HERE / ".data" / "tiny"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    import pyarrow as pa
    import pyarrow.parquet as pq
    n = 10_000
    pq.write_table(pa.table({"id": list(range(n)), "name": [f"n{i}" for i in range(n)],
                             "amount": [i * 0.5 for i in range(n)]}), data / "in.parquet")
    spec = data / "tiny.json"
    spec.write_text(json.dumps(PIPELINE))
    home = Path(tempfile.mkdtemp(prefix="bench-dagster-home-"))
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "SPARK_MASTER": args.master, "DAGSTER_HOME": str(home)}
    pipeline = [str(BIN / "pipeline"), "run", str(spec), "--param", f"src={data}/in.parquet",
                "--param", f"out={data}/out/pipeline"]
    plain = [sys.executable, str(HERE / "plain_tiny.py"), f"{data}/in.parquet",
             f"{data}/out/plain"]
    # The plain script starts its JVM as PySpark does; "plain+archive" with the product's
    # class-data archive of the driver JVM (pipeline_defs/spark/jvm_archive.py), which leaves only
    # the orchestration between it and `pipeline run`.
    # Plain PySpark has no native execution: the plain script runs without Comet; the
    # pipeline with it (the default) and without (what the plugin's start costs).
    spark_only = {acceleration.ENV: "off"}
    cmds = {"plain": (plain, {jvm_archive.ARCHIVE_ENV: "off", **spark_only}),
            "plain+archive": (plain, spark_only), "pipeline": (pipeline, {}),
            "pipeline-spark": (pipeline, spark_only)}
    for cmd, extra in cmds.values():  # one of each first, not counted: the OS file cache
        timed(cmd, {**env, **extra})    # holds the jars (and the archive) for all after it
    times = alternate(cmds, env, args.runs, digits=2)
    phases = breakdown(home)
    med = {k: statistics.median(v) for k, v in times.items()}
    over = med["pipeline"] - med["plain"]
    alone = med["pipeline"] - med["plain+archive"]
    print(f"median plain {med['plain']:.2f}s (with the product's JVM archive "
          f"{med['plain+archive']:.2f}s), pipeline run {med['pipeline']:.2f}s, overhead "
          f"{over:.2f}s (target <= 1.5 s), over plain+archive {alone:.2f}s")
    for name, t in phases:
        print(f"  {t:6.2f}s  {name}")
    section = "## Fixed overhead: tiny Parquet -> Delta, `pipeline run` vs plain PySpark"
    rows = "\n".join(f"| {name} | {t:.2f} |" for name, t in phases)

    def rows_of(label: str, k: str) -> str:
        return f"| {label} | {', '.join(f'{t:.2f}' for t in times[k])} | {med[k]:.2f} |"
    write_section(section, f"""{section}

`bench/overhead_bench.py`, measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()}
cores, master `{args.master}`: 10,000 rows of Parquet -> Delta (overwrite). Whole processes,
interpreter start to exit, {args.runs} runs each, alternating, after one untimed run of each.
The plain script has the product's Spark settings (same jars, Delta) and no Dagster; it
starts the driver JVM as PySpark does, and, in the second row, from the product's class-data
archive (`pipeline_defs/spark/jvm_archive.py`, made by `make setup`) as `pipeline run` does.

| | runs (s) | median (s) |
|---|---|---|
{rows_of("plain PySpark script", "plain")}
{rows_of("plain PySpark script, with the product's JVM class archive", "plain+archive")}
{rows_of("`pipeline run` (native execution, Comet: the default)", "pipeline")}
{rows_of("`pipeline run`, PIPELINE_ACCELERATION=off", "pipeline-spark")}

**Fixed overhead: {over:.2f} s** (target <= 1.5 s); ratio {med['pipeline'] / med['plain']:.3f}.
The orchestration alone (over the plain script with the same archive): {alone:.2f} s. What
loading the native plugin costs a tiny run: {med['pipeline'] - med['pipeline-spark']:+.2f} s.

One pipeline run's events (seconds from its first event):

| event | s |
|---|---|
{rows}
""")
    shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
