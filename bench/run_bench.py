"""Batch-core benchmark: `pipeline run` vs the same work as a hand-written PySpark script.

Generates TPC-H scale-1 lineitem and orders (tpchgen-cli) once into bench/.data, then runs
both alternately, each as a whole process (start-up included), and prints the medians and the
ratio. Writes the last results into bench/RESULTS.md.

    .venv/bin/python bench/run_bench.py [--runs 3] [--scale 1] [--master local[2]]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from results import timed, write_section

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BIN = Path(sys.executable).parent


def generate(data: Path, scale: int) -> None:
    stamp = data / f".scale-{scale}"
    if stamp.exists():
        return
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    subprocess.run([str(BIN / "tpchgen-cli"), "csv", "-s", str(scale),
                    "--tables=lineitem,orders", f"--output-dir={data}"], check=True)
    stamp.touch()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--master", default="local[*]")
    args = ap.parse_args()
    data = HERE / ".data"
    generate(data, args.scale)
    out = data / "out"
    home = Path(tempfile.mkdtemp(prefix="bench-dagster-home-"))
    env = {**os.environ, "SPARK_MASTER": args.master, "DAGSTER_HOME": str(home)}
    pipeline = [str(BIN / "pipeline"), "run", str(HERE / "tpch_pipeline.json"),
                "--param", f"data_dir={data}", "--param", f"out={out}/pipeline"]
    plain = [sys.executable, str(HERE / "plain_pyspark.py"), str(data), str(out / "plain")]
    times: dict[str, list[float]] = {"pipeline": [], "plain": []}
    for i in range(args.runs):
        for name, cmd in (("plain", plain), ("pipeline", pipeline)) if i % 2 == 0 else \
                (("pipeline", pipeline), ("plain", plain)):
            times[name].append(timed(cmd, env))
            print(f"run {i + 1} {name:<8} {times[name][-1]:6.1f}s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["pipeline"] / med["plain"]
    print(f"median plain PySpark {med['plain']:.1f}s, pipeline run {med['pipeline']:.1f}s, "
          f"ratio {ratio:.3f} (target <= 1.10)")
    write_results(args, times, med, ratio)
    shutil.rmtree(home, ignore_errors=True)


def write_results(args, times, med, ratio) -> None:
    section = "## Batch core: TPC-H lineitem pipeline vs plain PySpark"
    body = f"""{section}

Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores,
{platform.python_version()}, master `{args.master}`, TPC-H scale {args.scale} CSV
(lineitem 6M rows, orders 1.5M). Work: lineitem -> filter shipdate -> derive disc_price and
charge -> join orders -> aggregate by returnflag, linestatus, orderpriority -> Delta.
Whole-process wall time, {args.runs} runs each, alternating (`bench/run_bench.py`).

| | runs (s) | median (s) |
|---|---|---|
| plain PySpark script | {', '.join(f'{t:.1f}' for t in times['plain'])} | {med['plain']:.1f} |
| `pipeline run` (Dagster job, DAGSTER_HOME instance) | {', '.join(f'{t:.1f}' for t in times['pipeline'])} | {med['pipeline']:.1f} |

**Ratio pipeline / plain: {ratio:.3f}** (target <= 1.10). Run-to-run noise on these VMs is
+-10-15% for the same command, so compare medians, and alternate.
"""
    write_section(section, body)


if __name__ == "__main__":
    main()
