"""What makes pipelines run by themselves: schedules, the sensors of `dependencies`,
Declarative Automation of their assets, retry policies. Built from the pipeline files' keys
(config/orchestration.py)."""
from __future__ import annotations

import fnmatch
import json
import os
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

from pipeline_defs.config.loader import LoadedPipeline
from pipeline_defs.config.orchestration import Automation, Dependency, NewFiles, Retries
from pipeline_defs.plan import Plan

TRIGGER_TAG = "pipeline/trigger_file"  # the file a newFiles sensor started the run for

# How often the dependency sensors look at runs (seconds); tests make it short.
SENSOR_INTERVAL = int(os.environ.get("PIPELINE_SENSOR_INTERVAL", "30"))


def partitions_def(p: LoadedPipeline) -> dg.PartitionsDefinition | None:
    """`partitions` of a pipeline as Dagster time partitions."""
    t = p.config.partitions if p.config else None
    if t is None:
        return None
    cls = {"daily": dg.DailyPartitionsDefinition, "hourly": dg.HourlyPartitionsDefinition,
           "monthly": dg.MonthlyPartitionsDefinition}[t.type]
    return cls(start_date=t.start, end_date=t.end, timezone=t.timezone)


def schedule_for(p: LoadedPipeline, job_name: str) -> dg.ScheduleDefinition | None:
    s = p.config.schedule
    if s is None:
        return None
    parts = partitions_def(p)
    if parts is not None:  # each tick runs the latest complete partition
        @dg.schedule(name=f"{job_name}_schedule", job_name=job_name, cron_schedule=s.cron,
                     execution_timezone=s.timezone,
                     default_status=dg.DefaultScheduleStatus.RUNNING if s.enabled
                     else dg.DefaultScheduleStatus.STOPPED,
                     description=f"Runs the latest complete partition of pipeline "
                                 f"'{p.name}' on '{s.cron}' ({s.timezone}), from {p.file}.")
        def _latest(context: dg.ScheduleEvaluationContext):
            keys = parts.get_partition_keys(current_time=context.scheduled_execution_time)
            key = keys[-1] if keys else None
            if key is None:
                return dg.SkipReason("no complete partition yet")
            return dg.RunRequest(run_key=key, partition_key=key)
        return _latest
    return dg.ScheduleDefinition(
        name=f"{job_name}_schedule", job_name=job_name, cron_schedule=s.cron,
        execution_timezone=s.timezone,
        default_status=dg.DefaultScheduleStatus.RUNNING if s.enabled
        else dg.DefaultScheduleStatus.STOPPED,
        description=f"Runs pipeline '{p.name}' on '{s.cron}' ({s.timezone}), from {p.file}.")


def retry_policy(r: Retries | None) -> dg.RetryPolicy | None:
    if r is None or r.max_retries == 0:
        return None
    backoff = {"linear": dg.Backoff.LINEAR, "exponential": dg.Backoff.EXPONENTIAL}.get(r.backoff)
    return dg.RetryPolicy(max_retries=r.max_retries, delay=r.delay_seconds, backoff=backoff)


def automation_condition(a: str | Automation | None) -> dg.AutomationCondition | None:
    """`automation` of a pipeline, for each of its assets."""
    if a is None:
        return None
    if a == "eager":
        return dg.AutomationCondition.eager()
    return dg.AutomationCondition.on_cron(a.on_cron, a.timezone) if a.on_cron else None


# ---------------------------------------------------------------- dependencies
def _finished(record, wait: bool) -> float | None:
    """When an upstream run counts as done: its end (waitForCompletion) or its start."""
    return record.end_time if wait else (record.start_time or record.create_timestamp
                                         .timestamp())


def _statuses(wait: bool) -> list[dg.DagsterRunStatus]:
    if wait:
        return [dg.DagsterRunStatus.SUCCESS]
    return [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.SUCCESS,
            dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


def _latest(instance, job: str, dep: Dependency, since: float):
    """The newest run of `job` that satisfies `dep` after `since` (epoch seconds), if any."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(job_name=job, statuses=_statuses(dep.wait_for_completion),
                              updated_after=datetime.fromtimestamp(since, UTC)),
        limit=20)
    done = [(t, r) for r in records
            if (t := _finished(r, dep.wait_for_completion)) is not None and t > since]
    return max(done, key=lambda x: x[0]) if done else None


def dependency_sensor(p: LoadedPipeline, job_name: str, jobs: Mapping[str, str]
                      ) -> dg.SensorDefinition:
    """Starts the pipeline once every pipeline it depends on has succeeded (or started, with
    waitForCompletion false) since it last ran. Reads the run storage, so it sees upstream
    runs whatever launched them (UI, schedule, sensor, backfill, `pipeline run`, `dagster job
    execute`). A `timeout` gives up a wait that some upstreams satisfied and others did not
    within it; the tick says so."""
    deps = p.config.dependencies
    names = ", ".join(f"'{d.pipeline}'" for d in deps)

    @dg.sensor(name=f"{job_name}_after_upstreams", job_name=job_name,
               minimum_interval_seconds=SENSOR_INTERVAL,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Starts pipeline '{p.name}' when {names} "
                           f"{'have' if len(deps) > 1 else 'has'} succeeded since it last ran.")
    def _sensor(context: dg.SensorEvaluationContext):
        cursor = json.loads(context.cursor) if context.cursor else {}
        since = cursor.get("since")
        if since is None:  # since this pipeline last ran (ever: since the beginning)
            mine = context.instance.get_run_records(
                filters=dg.RunsFilter(job_name=job_name), limit=1)
            since = mine[0].create_timestamp.timestamp() if mine else 0.0
        found = {d.pipeline: _latest(context.instance, jobs[d.pipeline], d, since)
                 for d in deps}
        done = {n: f for n, f in found.items() if f is not None}
        now = time.time()
        if len(done) == len(deps):
            newest = max(t for t, _ in done.values())
            context.update_cursor(json.dumps({"since": newest}))
            runs = ", ".join(f"{n}: {r.dagster_run.run_id}" for n, (_, r) in done.items())
            return dg.RunRequest(
                run_key=f"{job_name}:{newest}",
                tags={"pipeline/triggered_by": runs[:250]})
        waiting = [d.pipeline for d in deps if d.pipeline not in done]
        if done:
            first = min(t for t, _ in done.values())
            limits = [d.timeout for d in deps if d.timeout]
            if limits and now - first > min(limits) / 1000:
                context.update_cursor(json.dumps({"since": now}))
                return dg.SkipReason(
                    f"Gave up waiting: {', '.join(sorted(done))} finished at "
                    f"{datetime.fromtimestamp(first, UTC):%Y-%m-%d %H:%M:%S} UTC but "
                    f"{', '.join(waiting)} did not within the timeout "
                    f"({min(limits)} ms); waiting for a new round of all of {names}.")
        context.update_cursor(json.dumps({"since": since}))
        return dg.SkipReason(f"Waiting for {', '.join(waiting)}"
                             + (f" ({', '.join(sorted(done))} done)" if done else ""))

    return _sensor


# ---------------------------------------------------------------- newFiles
SETTLE_S = 2.0  # a local file modified this recently may still be being written: next look


def list_files(cfg: NewFiles) -> list[tuple[str, str]]:
    """(path, version) of the files under cfg.path matching cfg.pattern; the version is the
    modification time and size (local) or the ETag (S3)."""
    if cfg.path.startswith(("s3a://", "s3://")):
        import boto3
        scheme, rest = cfg.path.split("://", 1)
        bucket, _, prefix = rest.partition("/")
        client = boto3.client("s3", endpoint_url=cfg.endpoint) if cfg.endpoint \
            else boto3.client("s3")
        out = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                     Prefix=prefix):
            for obj in page.get("Contents", []):
                name = obj["Key"].rsplit("/", 1)[-1]
                if name and fnmatch.fnmatch(name, cfg.pattern):
                    out.append((f"{scheme}://{bucket}/{obj['Key']}", obj["ETag"].strip('"')))
        return out
    root = Path(cfg.path.removeprefix("file://"))
    now, out = time.time(), []
    for f in sorted(root.glob(cfg.pattern)) if root.is_dir() else []:
        st = f.stat()
        if f.is_file() and now - st.st_mtime >= SETTLE_S:
            out.append((str(f), f"{st.st_mtime_ns}-{st.st_size}"))
    return out


def new_files_sensor(p: LoadedPipeline, job_name: str, k: int, cfg: NewFiles
                     ) -> dg.SensorDefinition:
    """One run per new file: its run key is the file and its version, so a file is never
    run twice, even across daemon restarts (the cursor of seen files lives in the
    instance), and none is skipped (each look lists everything under the path)."""

    @dg.sensor(name=f"{job_name}_new_files" + (f"_{k + 1}" if k else ""), job_name=job_name,
               minimum_interval_seconds=cfg.minimum_interval_seconds,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Starts pipeline '{p.name}' for each new file {cfg.pattern} in "
                           f"{cfg.path}; the run sees it as ${{trigger.file}}.")
    def _sensor(context: dg.SensorEvaluationContext):
        seen = json.loads(context.cursor) if context.cursor else {}
        requests = []
        for path, version in list_files(cfg):
            if seen.get(path) == version:
                continue
            requests.append(dg.RunRequest(run_key=f"{path}@{version}",
                                          tags={TRIGGER_TAG: path}))
            seen[path] = version
        context.update_cursor(json.dumps(seen))
        return requests or dg.SkipReason(f"no new file {cfg.pattern} in {cfg.path}")

    return _sensor


def orchestration_defs(pipelines: Iterable[tuple[LoadedPipeline, Plan]]) -> dict:
    """Schedules and sensors of the pipelines (for Definitions)."""
    pairs = list(pipelines)
    jobs = {p.name: plan.job_name for p, plan in pairs}
    schedules = [s for p, plan in pairs if (s := schedule_for(p, plan.job_name))]
    sensors = [dependency_sensor(p, plan.job_name, jobs) for p, plan in pairs
               if p.config.dependencies]
    sensors += [new_files_sensor(p, plan.job_name, k, cfg) for p, plan in pairs
                for k, cfg in enumerate(p.config.sensors)]
    automated = [plan.job_name for p, plan in pairs if p.config.automation]
    if automated:  # Dagster's own default sensor for this starts stopped: ours runs
        sensors.append(dg.AutomationConditionSensorDefinition(
            "pipelines_automation", target=dg.AssetSelection.groups(*automated),
            default_status=dg.DefaultSensorStatus.RUNNING,
            minimum_interval_seconds=SENSOR_INTERVAL,
            description="Evaluates the `automation` of pipelines "
                        f"{', '.join(sorted(automated))} on their assets."))
    return {"schedules": schedules, "sensors": sensors}
