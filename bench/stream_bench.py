"""Streaming benchmark: Kafka -> filter/enrich -> Delta on the local KRaft broker.

  1. throughput: a backlog of --events JSON events drained with trigger availableNow, by the
     pipeline (a Dagster run in this process) and by the same query written by hand in plain
     PySpark (same process, same session), alternating; events/s = events / query wall time;
  2. latency: a producer sends --rate events/s for --seconds while the pipeline runs with a
     1 s trigger; per event, latency = the time its Delta commit became visible (the commit
     file's mtime) - its produce time (in the event). p50 / p95 / max.

    .venv/bin/python bench/stream_bench.py [--events 2000000] [--rate 20000] [--seconds 30]
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
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from results import write_section  # noqa: E402

BOOT = f"127.0.0.1:{os.environ.get('PIPELINE_KAFKA_PORT', '29092')}"
SCHEMA = "id BIGINT, kind STRING, amount DOUBLE, ts_ms BIGINT"


def new_topic(partitions: int = 2) -> str:
    from confluent_kafka.admin import AdminClient, NewTopic
    name = f"bench-{int(time.time() * 1000)}"
    admin = AdminClient({"bootstrap.servers": BOOT})  # kept alive until the topic exists
    for f in admin.create_topics([NewTopic(name, partitions, 1)]).values():
        f.result(timeout=30)
    return name


def producer():
    from confluent_kafka import Producer
    return Producer({"bootstrap.servers": BOOT, "linger.ms": 5, "batch.num.messages": 10000,
                     "queue.buffering.max.messages": 2_000_000, "compression.type": "lz4"})


def produce_backlog(topic: str, n: int) -> None:
    p = producer()
    now = int(time.time() * 1000)
    for i in range(n):
        p.produce(topic, b'{"id":%d,"kind":"%s","amount":%d.5,"ts_ms":%d}' % (
            i, b"test" if i % 10 == 0 else b"order", i % 1000, now))
        if i % 50_000 == 0:
            p.poll(0)
    p.flush(120)


def pipeline_file(d: Path, topic: str, out: Path, trigger: str, timeout: str | None) -> Path:
    raw = {"name": "stream-bench", "mode": "streaming",
           "streaming": {"trigger": trigger, "checkpointRoot": str(d / "cp"),
                         "progressIntervalS": 5, **({"timeout": timeout} if timeout else {})},
           "steps": [
               {"type": "extract", "method": "fromKafka", "config": {
                   "topic": topic, "bootstrapServers": BOOT, "startingOffsets": "earliest",
                   "schema": SCHEMA}},
               {"type": "transform", "method": "filterRows", "config": {
                   "condition": "kind <> 'test'"}},
               {"type": "transform", "method": "enrichData", "config": {"columns": {
                   "amount_cents": "CAST(amount * 100 AS BIGINT)",
                   "loaded_at": "current_timestamp()"}}},
               {"type": "load", "method": "toDeltaLake", "config": {
                   "path": str(out), "mode": "append"}}]}
    f = d / f"p{int(time.time() * 1000)}.json"
    f.write_text(json.dumps(raw))
    return f


def run_pipeline(f: Path) -> float:
    import dagster as dg

    from pipeline_defs.config.loader import load_pipeline
    from pipeline_defs.definitions import default_resources, definitions_for
    from pipeline_defs.steps.registry import builtin_registry
    p = load_pipeline(f, builtin_registry())
    job = definitions_for([p], default_resources()).resolve_job_def("stream_bench")
    t0 = time.perf_counter()
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                    run_config={"loggers": {"console": {"config": {
                                        "log_level": "WARNING"}}}})
    assert result.success
    return time.perf_counter() - t0


def run_plain(spark, topic: str, out: Path, cp: Path) -> float:
    from pyspark.sql import functions as F
    t0 = time.perf_counter()
    raw = spark.readStream.format("kafka").options(**{
        "kafka.bootstrap.servers": BOOT, "subscribe": topic, "startingOffsets": "earliest",
        "failOnDataLoss": "true"}).load()
    df = raw.select(F.from_json(F.col("value").cast("string"), SCHEMA).alias("v")).select("v.*")
    df = df.filter("kind <> 'test'").withColumns({
        "amount_cents": F.expr("CAST(amount * 100 AS BIGINT)"),
        "loaded_at": F.current_timestamp()})
    q = df.writeStream.format("delta").option("checkpointLocation", str(cp)) \
        .trigger(availableNow=True).start(str(out))
    q.awaitTermination()
    return time.perf_counter() - t0


def paced_producer(topic: str, rate: int, seconds: int) -> None:
    """Sends `rate` events per second for `seconds`, each stamped with its produce time."""
    p = producer()
    i, start = 0, time.time()
    while time.time() - start < seconds:
        target = int((time.time() - start) * rate)
        while i < target:
            p.produce(topic, b'{"id":%d,"kind":"order","amount":1.5,"ts_ms":%d}' % (
                i, int(time.time() * 1000)))
            i += 1
        p.poll(0)
        time.sleep(0.005)
    p.flush(30)


def latency(d: Path, rate: int, seconds: int, warmup: int, spark) -> list[float]:
    """Events produced during the first `warmup` seconds are not counted: the first
    micro-batches of a new JVM pay for class loading and JIT (several seconds), and the
    backlog they leave takes a while to drain. The figure is the steady state."""
    topic = new_topic()
    out = d / "latency_out"
    f = pipeline_file(d, topic, out, "1 second", f"{seconds + warmup + 15} seconds")
    runner = threading.Thread(target=run_pipeline, args=(f,))
    runner.start()
    while not (d / "cp").exists():
        time.sleep(0.2)
    time.sleep(3)  # let the query reach its steady state before measuring
    # the producer is a process of its own: in this one it would fight the driver for the GIL
    import multiprocessing
    measure_from_ms = (time.time() + warmup) * 1000
    prod = multiprocessing.get_context("spawn").Process(target=paced_producer,
                                                       args=(topic, rate, seconds + warmup))
    prod.start()
    prod.join()
    runner.join()
    # visibility time of each commit = the commit file's mtime
    lat = []
    log = out / "_delta_log"
    for c in sorted(log.glob("*.json")):
        visible_ms = c.stat().st_mtime * 1000
        files = [json.loads(line)["add"]["path"] for line in c.read_text().splitlines()
                 if line.startswith('{"add"')]
        if files:
            for r in spark.read.parquet(*[str(out / p) for p in files]).select("ts_ms") \
                    .collect():
                if r.ts_ms >= measure_from_ms:
                    lat.append((visible_ms - r.ts_ms) / 1000)
    return lat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--rate", type=int, default=20_000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=20)
    args = ap.parse_args()
    subprocess.run(["bash", str(REPO / "scripts/kafka.sh"), "up"], check=True)
    from pipeline_defs.resources.spark import SparkSettings, session
    spark = session(SparkSettings(master="local[2]", app_name="stream_bench"))
    d = Path(tempfile.mkdtemp(prefix="stream_bench_"))
    try:
        t = time.perf_counter()
        topic = new_topic()
        produce_backlog(topic, args.events)
        print(f"backlog of {args.events:,} events produced in {time.perf_counter() - t:.1f}s")
        times = {"plain": [], "pipeline": []}
        run_plain(spark, topic, d / "warm", d / "warm_cp")  # JIT, class loading: not counted
        for r in range(args.runs):
            times["plain"].append(run_plain(spark, topic, d / f"plain{r}", d / f"plain_cp{r}"))
            times["pipeline"].append(run_pipeline(pipeline_file(
                d, topic, d / f"pipe{r}", "availableNow", None)))
            shutil.rmtree(d / "cp")
            print({k: round(v[-1], 2) for k, v in times.items()}, flush=True)
        expected = args.events - args.events // 10
        assert spark.read.format("delta").load(str(d / "pipe0")).count() == expected
        med = {k: statistics.median(v) for k, v in times.items()}
        lat = sorted(latency(d, args.rate, args.seconds, args.warmup, spark))
        p50, p95 = lat[len(lat) // 2], lat[int(len(lat) * 0.95)]
        print(f"throughput: pipeline {args.events / med['pipeline']:,.0f} events/s, plain "
              f"{args.events / med['plain']:,.0f} events/s; latency at {args.rate}/s: "
              f"p50 {p50:.2f}s p95 {p95:.2f}s max {lat[-1]:.2f}s ({len(lat):,} events)")
    finally:
        shutil.rmtree(d, ignore_errors=True)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    write_section("## Streaming: Kafka -> filter/enrich -> Delta", f"""\
## Streaming: Kafka -> filter/enrich -> Delta

`bench/stream_bench.py`, measured {now} on 2 cores (the Kafka broker, Spark `local[2]` and
the producer share them). JSON events (`id, kind, amount, ts_ms`), 2 partitions; filter
drops 10%, enrich adds two columns; Delta on local disk.

**Throughput** - a backlog of {args.events:,} events drained with `trigger: availableNow`,
{args.runs} runs each, alternating, whole query wall time (start to drained, JVM warm):

| | runs (s) | median (s) | events/s |
|---|---|---|---|
| plain PySpark (same query by hand) | {', '.join(f'{x:.1f}' for x in times['plain'])} | {med['plain']:.1f} | {args.events / med['plain']:,.0f} |
| pipeline (Dagster run, in process) | {', '.join(f'{x:.1f}' for x in times['pipeline'])} | {med['pipeline']:.1f} | **{args.events / med['pipeline']:,.0f}** |

Ratio pipeline / plain: {med['pipeline'] / med['plain']:.2f} (target >= 100,000 events/s).

**Latency** - {args.rate:,} events/s, trigger 1 second; produce time (in the event) to the
Delta commit that holds it becoming visible (commit file mtime), over {args.seconds} s of
steady state after {args.warmup} s of warm-up (the first micro-batches of a new JVM take
several seconds: class loading and JIT), {len(lat):,} events: **p50 {p50:.2f} s, p95 {p95:.2f} s**, max {lat[-1]:.2f} s (target p95
<= 2 s).
""")


if __name__ == "__main__":
    main()
