"""`pipeline validate|run|list|schema`: the command line of pipeline_defs."""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path

from pipeline_defs.common.errors import ConfigError, PipelineError


def _params(pairs: list[str], flag: str = "--param") -> dict[str, str]:
    out = {}
    for pair in pairs:
        k, sep, v = pair.partition("=")
        if not sep or not k:  # a usage error, like argparse's own: exit code 2
            print(f"pipeline: {flag} takes name=value, got '{pair}'.", file=sys.stderr)
            raise SystemExit(2)
        out[k] = v
    return out


def cmd_validate(args) -> int:
    from pipeline_defs.config.loader import load_pipeline
    from pipeline_defs.config.readers import pipeline_files
    from pipeline_defs.steps.registry import builtin_registry
    registry = builtin_registry()
    files = pipeline_files(args.paths)
    if not files:
        print("no pipeline files found in " + ", ".join(args.paths), file=sys.stderr)
        return 2
    bad = 0
    for f in files:
        try:
            p = load_pipeline(f, registry, _params(args.param))
            print(f"ok    {f}  ({p.name}: {len(p.steps)} steps, {p.config.mode})")
        except ConfigError as e:
            bad += 1
            print(f"FAIL  {f}: {e}")
    print(f"{len(files) - bad} valid, {bad} invalid")
    return 1 if bad else 0


def cmd_list(args) -> int:
    from pipeline_defs.steps.registry import builtin_registry
    defs = builtin_registry().all()
    width = max(len(f"{d.kind}.{d.method}") for d in defs)
    for d in defs:  # "stream": the method also works in streaming pipelines
        also = "".join(f" (also {a})" for a in d.aliases)
        print(f"{d.kind + '.' + d.method:<{width}}  {'stream' if d.streams else '      '}  "
              f"{d.summary}{also}")
    return 0


def cmd_schema(args) -> int:
    from pipeline_defs.config.schema import schema_text
    from pipeline_defs.steps.registry import builtin_registry
    text = schema_text(builtin_registry())
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_run(args) -> int:
    params = _params(args.param)
    # Start the JVM first, on another thread: it takes seconds, and so does loading Dagster.
    from pipeline_defs.spark import session as spark_res
    spark_config = {"spark.master": os.environ.get("SPARK_MASTER", "local[*]"),
                    "spark.app.name": "pipeline_defs",
                    **_params(args.spark_conf, "--spark-conf")}
    if args.master:
        spark_config["spark.master"] = args.master
    refused = spark_res.refused(spark_config)
    if refused:
        print(f"{args.file}: --spark-conf refused: " + "; ".join(refused) + ".", file=sys.stderr)
        return 2
    settings = spark_res.SparkSettings.from_spark_config(
        spark_config, str(spark_res.default_jars_dir()))
    # Each Py4J call that starts the session (on the spark-start thread) needs the GIL while
    # this thread imports Dagster; Python hands it over every 5 ms by default, every 0.5 ms
    # here (measured: the first Spark job of a run starts ~0.2 s earlier).
    sys.setswitchinterval(0.0005)
    spark_res.start_in_background(settings)

    from pipeline_defs.config.loader import load_pipeline
    from pipeline_defs.steps.registry import builtin_registry
    try:
        pipeline = load_pipeline(args.file, builtin_registry(), params,
                                 date=args.date or args.partition)
    except ConfigError as e:
        print(f"{args.file}: {e}", file=sys.stderr)
        return 2
    if pipeline.config.mode != "streaming":
        from pipeline_defs.steps.files import prescan_csv_inputs
        prescan_csv_inputs(pipeline.steps)  # overlaps the CSV scans with Dagster's start

    import dagster as dg

    from pipeline_defs.dagster_layer.orchestration import DATE_TAG
    from pipeline_defs.dagster_layer.runs import print_summary
    from pipeline_defs.definitions import default_resources, definitions_for
    resources = default_resources()
    resources["spark"] = resources["spark"].model_copy(update={"spark_config": spark_config})
    defs = definitions_for([pipeline], resources)
    from pipeline_defs.config.dataflow import safe_name
    job = defs.resolve_job_def(safe_name(pipeline.name))
    if args.partition:
        from pipeline_defs.dagster_layer.orchestration import partitions_def
        parts = partitions_def(pipeline)
        if parts is None or not parts.has_partition_key(args.partition):
            what = "has no partitions" if parts is None else (
                f"has no partition '{args.partition}' (its {pipeline.config.partitions.type} "
                f"partitions start at {pipeline.config.partitions.start})")
            print(f"{args.file}: pipeline '{pipeline.name}' {what}.", file=sys.stderr)
            return 2
    home = os.environ.get("DAGSTER_HOME")
    if home:
        Path(home).mkdir(parents=True, exist_ok=True)
    instance = dg.DagsterInstance.get() if home else dg.DagsterInstance.ephemeral()
    import uuid
    run_id = str(uuid.uuid4())
    streaming = pipeline.config.mode == "streaming"
    # SIGINT/SIGTERM ask Dagster to terminate the run: a batch run's Spark jobs stop within a
    # second (nothing half-written is committed), a streaming run's queries stop between two
    # micro-batches (the next run resumes); the run ends CANCELED. A second one quits at once.
    stopped = _cancel_on_signals(instance, run_id, pipeline.name)
    started = time.perf_counter()

    def execute():
        return job.execute_in_process(
            instance=instance, raise_on_error=False, run_id=run_id,
            partition_key=args.partition,
            run_config={"loggers": {"console": {"config": {"log_level": args.log_level}}}},
            tags={**({"pipeline/params": ",".join(sorted(params))} if params else {}),
                  **({DATE_TAG: args.date} if args.date else {}),
                  # lets a later run tell a killed run's leftover STARTED record from a live
                  # run
                  "pipeline/pid": str(os.getpid()), "pipeline/host": socket.gethostname()})
    # the run executes on a worker thread, so that signals reach our handlers here (on the
    # main thread Dagster would take SIGINT for itself and abandon the Spark job)
    result = _on_worker_thread(execute)
    cancelled = _was_cancelled(instance, run_id)
    if cancelled:
        why = f"{stopped[0]} received" if stopped else "terminated from Dagster"
        run = instance.get_run_by_id(run_id)
        if run.status != dg.DagsterRunStatus.CANCELED:
            instance.report_run_canceled(run, message=f"Run cancelled: {why}.")
        step = next((e.step_key.rsplit(".", 1)[-1] for e in result.all_events
                     if e.event_type_value == "STEP_FAILURE"), None)
        what = ("its streaming queries were stopped between two micro-batches; run it again "
                "to resume from their checkpoints" if streaming else
                "its Spark jobs were cancelled and nothing it was writing was committed; run "
                "it again to start over")
        print(f"pipeline {pipeline.name}: CANCELED after {time.perf_counter() - started:.1f}s "
              f"({why}{f', during step {step}' if step else ''}): {what} (run {run_id}).",
              file=sys.stderr)
        return 130
    print_summary(result, pipeline, time.perf_counter() - started)
    if args.show and result.success:
        from pipeline_defs.dagster_layer.runs import show_outputs
        show_outputs(result, args.show)
    return 0 if result.success else 1


def _on_worker_thread(fn):
    """fn() on a thread of its own, with SIGINT blocked there: the processes it starts
    (Dagster's compute-log tails and their watchers) inherit the blocked signal, so a
    terminal's Ctrl-C, which reaches the whole foreground process group, reaches this process
    alone and is handled once, here, instead of each child printing its KeyboardInterrupt."""
    import signal
    import threading
    box: dict = {}

    def work():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised on the main thread
            box["error"] = e
    t = threading.Thread(target=work, name="pipeline-run", daemon=True)
    t.start()
    while t.is_alive():
        t.join(0.5)
    if "error" in box:
        raise box["error"]
    return box["result"]


def _cancel_on_signals(instance, run_id: str, pipeline: str) -> list[str]:
    """SIGINT/SIGTERM ask Dagster to terminate the run (the Spark resource's watcher then
    cancels its Spark jobs, the streams op stops its queries); a second signal quits at once,
    marking the run canceled. Returns the signal names seen."""
    import signal
    import threading
    seen: list[str] = []

    def handler(signum, _frame):
        name = signal.Signals(signum).name
        if seen:
            _quit_now(instance, run_id, pipeline, name)
        seen.append(name)
        print(f"\n{seen[0]}: stopping the run (again to quit at once)", file=sys.stderr)

        def request():
            run = instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                instance.report_run_canceling(run, message=f"{seen[0]} received")
        threading.Thread(target=request, daemon=True).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, handler)
    return seen


def _quit_now(instance, run_id: str, pipeline: str, signame: str) -> None:
    """A second signal: the run is marked canceled and the process ends now (its JVM ends
    with it: nothing uncommitted becomes visible, Delta and the JDBC loads commit last)."""
    try:
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            instance.report_run_canceled(run, message=f"a second {signame}: quit at once")
    finally:
        print(f"pipeline {pipeline}: CANCELED ({signame} again): quit at once; what it was "
              f"writing was not committed (run {run_id}).", file=sys.stderr)
        _exit_now(130)


def _was_cancelled(instance, run_id: str) -> bool:
    import dagster as dg
    return bool(instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.RUN_CANCELING, limit=1).records)


def cmd_docs(args) -> int:
    from pipeline_defs.steps.reference import replace_reference
    from pipeline_defs.steps.registry import builtin_registry
    doc = Path(args.output)
    doc.write_text(replace_reference(doc.read_text(), builtin_registry()))
    print(f"updated the method reference in {doc}")
    return 0


def _read(file: str):
    """A pipeline file as read by its format's reader (before parameters and checks)."""
    from pipeline_defs.config.readers import read
    doc = read(Path(file))
    if isinstance(doc, list) or not hasattr(doc, "data"):
        raise ConfigError(doc if isinstance(doc, list) else [doc])
    return doc


def cmd_show(args) -> int:
    import json
    print(json.dumps(_read(args.file).data, indent=2))
    return 0


def cmd_sql(args) -> int:
    from pipeline_defs.config.sqlform import to_sql
    text = to_sql(_read(args.file).data)
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}")
    else:
        print(text, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pipeline", description="Data pipelines in JSON or SQL "
                                 "files, on Dagster and Spark.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("validate", help="check pipeline files without contacting any service")
    v.add_argument("paths", nargs="+", help="files or directories of *.json and *.sql")
    v.add_argument("--param", action="append", default=[], metavar="NAME=VALUE")
    v.set_defaults(fn=cmd_validate)
    r = sub.add_parser("run", help="run one pipeline file as a Dagster job")
    r.add_argument("file")
    r.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="set a ${NAME} placeholder")
    r.add_argument("--date", metavar="YYYY-MM-DD[THH:MM]", help="the run's logical time: "
                   "${DATE}, ${DATE-1}, ${DATE:yyyyMMdd}, ${DATE:HH} in the file (default now)")
    r.add_argument("--partition", metavar="KEY", help="run one partition of a partitioned "
                   "pipeline, e.g. 2024-01-03 or (hourly) 2024-01-03-05:00 (its ${DATE})")
    r.add_argument("--master", help="Spark master (default SPARK_MASTER or local[*])")
    r.add_argument("--spark-conf", action="append", default=[], metavar="KEY=VALUE",
                   help="a Spark setting for this run, e.g. spark.sql.shuffle.partitions=8 "
                        "(repeatable; the Launchpad's spark_config)")
    r.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    r.add_argument("--show", type=int, default=0, metavar="N",
                   help="after success, print the first N rows of every target written")
    r.set_defaults(fn=cmd_run)
    sub.add_parser("list", help="list the methods").set_defaults(fn=cmd_list)
    sh = sub.add_parser("show", help="print a pipeline file (JSON or SQL) as the JSON it is")
    sh.add_argument("file")
    sh.set_defaults(fn=cmd_show)
    sq = sub.add_parser("sql", help="write a pipeline file (JSON or SQL) in the SQL form")
    sq.add_argument("file")
    sq.add_argument("-o", "--output", help="write to this file instead of stdout")
    sq.set_defaults(fn=cmd_sql)
    s = sub.add_parser("schema", help="print the JSON Schema of pipeline files")
    s.add_argument("--output", "-o", help="write to this file instead of stdout")
    s.set_defaults(fn=cmd_schema)
    d = sub.add_parser("docs", help="regenerate the method reference in docs/methods.md")
    d.add_argument("-o", "--output", default="docs/methods.md")
    d.set_defaults(fn=cmd_docs)
    args = ap.parse_args(argv)
    try:
        rc = args.fn(args)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if argv is None and args.cmd == "run":
        _exit_now(rc)
    return rc


def _exit_now(rc: int) -> None:
    """End the `pipeline run` process as soon as its outcome is printed. Python's own teardown
    finalizes the run's Py4J objects one JVM round trip each and waits on Dagster's and
    Spark's threads: ~0.5 s (measured) of nothing for the person at the terminal. Everything
    the run wrote is committed by now (Delta, JDBC, the Dagster instance's SQLite or
    PostgreSQL); the JVM ends by itself when its stdin closes, running Spark's shutdown hooks.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
