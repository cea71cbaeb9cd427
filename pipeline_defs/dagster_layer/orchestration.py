"""What makes pipelines run by themselves: schedules, the sensors of `dependencies`,
Declarative Automation of their assets, retry policies. Built from the pipeline files' keys
(config/orchestration.py)."""
from __future__ import annotations

import fnmatch
import json
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode, urlsplit
from urllib.request import urlopen
from zoneinfo import ZoneInfo

import dagster as dg

from pipeline_defs.config.dates import iso
from pipeline_defs.config.loader import LoadedPipeline
from pipeline_defs.config.orchestration import Automation, Dependency, NewFiles, Retries
from pipeline_defs.config.params import DATE
from pipeline_defs.dagster_layer.plan import Plan

TRIGGER_TAG = "pipeline/trigger_file"  # the file a newFiles sensor started the run for
DATE_TAG = "pipeline/date"  # the run's logical time, from `--date` or a schedule's tick

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


def latest_complete(parts: dg.PartitionsDefinition, at: datetime | None = None) -> str | None:
    """The newest partition whose time window has ended at `at` (default now)."""
    keys = parts.get_partition_keys(current_time=at or datetime.now(UTC))
    return keys[-1] if keys else None


def schedule_for(p: LoadedPipeline, plan: Plan) -> dg.ScheduleDefinition | None:
    """The pipeline's `schedule`. Each tick's run carries its logical time, the tick in the
    schedule's timezone, as the `DATE` of its run config (so the UI's "Preview tick result"
    shows it) and as a tag; a partitioned pipeline runs its latest complete partition."""
    s = p.config.schedule
    if s is None:
        return None
    parts = partitions_def(p)
    job_name = plan.job_name
    what = (f"the latest complete partition of pipeline '{p.name}'" if parts is not None
            else f"pipeline '{p.name}'")

    @dg.schedule(name=f"{job_name}_schedule", job_name=job_name, cron_schedule=s.cron,
                 execution_timezone=s.timezone,
                 default_status=dg.DefaultScheduleStatus.RUNNING if s.enabled
                 else dg.DefaultScheduleStatus.STOPPED,
                 description=f"Runs {what} on '{s.cron}' ({s.timezone}), from {p.file}.")
    def _tick(context: dg.ScheduleEvaluationContext):
        tick = context.scheduled_execution_time.astimezone(ZoneInfo(s.timezone))
        key, when = None, iso(tick)
        if parts is not None:
            key = latest_complete(parts, context.scheduled_execution_time)
            if key is None:
                return dg.SkipReason("no complete partition yet")
            when = iso(parts.time_window_for_partition_key(key).start)
        config = {"resources": {plan.params_key: {"config": {DATE: when}}}} \
            if plan.params_key else {}
        return dg.RunRequest(run_key=key, partition_key=key, run_config=config,
                             tags={DATE_TAG: when})
    return _tick


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


@dataclass(frozen=True)
class Upstream:
    """What a run of a pipeline looks like in the run storage: a run of its job, or a run
    of Dagster's implicit asset job selecting its assets (a backfill, a materialization from
    the catalog, Declarative Automation)."""
    job: str
    keys: frozenset[dg.AssetKey]

    def ran(self, run: dg.DagsterRun) -> bool:
        return run.job_name == self.job or bool(self.keys & set(run.asset_selection or ()))


ASSET_JOB = "__ASSET_JOB"  # the job Dagster runs asset selections and backfills in


def _done_since(instance, up: Upstream, dep: Dependency, since: float, limit: int = 50):
    """(time, record) of the runs of pipeline `up` that satisfy `dep` after `since`."""
    out = []
    for job in (up.job, ASSET_JOB):
        records = instance.get_run_records(
            filters=dg.RunsFilter(job_name=job, statuses=_statuses(dep.wait_for_completion),
                                  updated_after=datetime.fromtimestamp(since, UTC)),
            limit=limit)
        out += [(t, r) for r in records if up.ran(r.dagster_run)
                and (t := _finished(r, dep.wait_for_completion)) is not None and t > since]
    return out


def _latest(instance, up: Upstream, dep: Dependency, since: float):
    """The newest run of pipeline `up` that satisfies `dep` after `since`, if any."""
    done = _done_since(instance, up, dep, since)
    return max(done, key=lambda x: x[0]) if done else None


INITIATED = ("Initiated: only upstream runs that end after this tick count (Dagster's rule "
             "for run-status sensors); \"catchUp\": true on a dependency counts earlier ones.")


def _since(context, p: LoadedPipeline, job_name: str, jobs: Mapping[str, Upstream],
           cursor: dict) -> dict[str, float] | None:
    """Per upstream pipeline, the time after which its runs count. The first tick (no
    cursor) starts from now, as Dagster's run-status sensors do, except for a dependency
    with `catchUp`, which counts the runs since this pipeline last ran (ever, if never).
    None: this first tick only initiates the cursor."""
    since = cursor.get("since")
    if isinstance(since, dict):
        return {d.pipeline: float(since.get(d.pipeline, 0.0)) for d in p.config.dependencies}
    if since is not None:  # a cursor of the previous form: one time for all
        return {d.pipeline: float(since) for d in p.config.dependencies}
    now = time.time()
    last = 0.0
    if any(d.catch_up for d in p.config.dependencies):
        mine = [r for j in (job_name, ASSET_JOB) for r in context.instance.get_run_records(
            filters=dg.RunsFilter(job_name=j), limit=20) if jobs[p.name].ran(r.dagster_run)]
        last = max((r.create_timestamp.timestamp() for r in mine), default=0.0)
    out = {d.pipeline: last if d.catch_up else now for d in p.config.dependencies}
    if any(d.catch_up for d in p.config.dependencies):
        return out
    context.update_cursor(json.dumps({"since": out}))
    return None


def dependency_sensor(p: LoadedPipeline, job_name: str, jobs: Mapping[str, Upstream]
                      ) -> dg.SensorDefinition:
    """Starts the pipeline once every pipeline it depends on has succeeded (or started, with
    waitForCompletion false) since it last ran. Reads the run storage, so it sees upstream
    runs whatever launched them (UI, schedule, sensor, backfill, `pipeline run`, `dagster job
    execute`). Only runs that end after the sensor's first tick count (Dagster's convention
    for run-status sensors), unless a dependency says `catchUp`. A `timeout` gives up a
    wait that some upstreams satisfied and others did not within it; the tick says so.
    Mine: runs of this pipeline's job or of its assets."""
    deps = p.config.dependencies
    names = ", ".join(f"'{d.pipeline}'" for d in deps)
    parts = partitions_def(p)

    @dg.sensor(name=f"{job_name}_after_upstreams", job_name=job_name,
               minimum_interval_seconds=SENSOR_INTERVAL,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Starts pipeline '{p.name}' when {names} "
                           f"{'have' if len(deps) > 1 else 'has'} succeeded since it last ran.")
    def _sensor(context: dg.SensorEvaluationContext):
        cursor = json.loads(context.cursor) if context.cursor else {}
        since = _since(context, p, job_name, jobs, cursor)
        if since is None:
            return dg.SkipReason(INITIATED)
        if parts is not None:
            return _partitioned_tick(context, p, job_name, jobs, parts, cursor, since)
        found = {d.pipeline: _latest(context.instance, jobs[d.pipeline], d, since[d.pipeline])
                 for d in deps}
        done = {n: f for n, f in found.items() if f is not None}
        now = time.time()
        if len(done) == len(deps):
            newest = max(t for t, _ in done.values())
            context.update_cursor(json.dumps({"since": {d.pipeline: newest for d in deps}}))
            runs = ", ".join(f"{n}: {r.dagster_run.run_id}" for n, (_, r) in done.items())
            return dg.RunRequest(
                run_key=f"{job_name}:{newest}",
                tags={"pipeline/triggered_by": runs[:250]})
        waiting = [d.pipeline for d in deps if d.pipeline not in done]
        if done:
            first = min(t for t, _ in done.values())
            limits = [d.timeout for d in deps if d.timeout]
            if limits and now - first > min(limits) / 1000:
                context.update_cursor(json.dumps({"since": {d.pipeline: now for d in deps}}))
                return dg.SkipReason(
                    f"Gave up waiting: {', '.join(sorted(done))} finished at "
                    f"{datetime.fromtimestamp(first, UTC):%Y-%m-%d %H:%M:%S} UTC but "
                    f"{', '.join(waiting)} did not within the timeout "
                    f"({min(limits)} ms); waiting for a new round of all of {names}.")
        context.update_cursor(json.dumps({"since": since}))
        return dg.SkipReason(f"Waiting for {', '.join(waiting)}"
                             + (f" ({', '.join(sorted(done))} done)" if done else ""))

    return _sensor


def _partitioned_tick(context, p: LoadedPipeline, job_name: str, jobs: Mapping[str, Upstream],
                      parts: dg.PartitionsDefinition, cursor: dict, since: dict[str, float]):
    """A partitioned pipeline runs a partition once every upstream has finished a run for
    it: the upstream run's own partition when it is one of this pipeline's (a backfill of
    three upstream days runs the same three days here), else the latest complete partition.
    Partitions some upstreams finished wait in the cursor (a `timeout` drops them)."""
    deps = p.config.dependencies
    pending: dict[str, dict[str, list]] = cursor.get("pending", {})  # key: {dep: [t, run]}
    newest = dict(since)
    for d in deps:
        for t, r in _done_since(context.instance, jobs[d.pipeline], d, since[d.pipeline],
                                limit=500):
            k = r.dagster_run.tags.get("dagster/partition")
            k = k if k and parts.has_partition_key(k) else latest_complete(parts)
            if k is not None:
                pending.setdefault(k, {})[d.pipeline] = [t, r.dagster_run.run_id]
            newest[d.pipeline] = max(newest[d.pipeline], t)
    requests, gave_up, now = [], [], time.time()
    limits = [d.timeout for d in deps if d.timeout]
    for k, got in sorted(pending.items()):
        if len(got) == len(deps):
            runs = ", ".join(f"{n}: {run}" for n, (_, run) in sorted(got.items()))
            requests.append(dg.RunRequest(
                run_key=f"{job_name}:{k}:{max(t for t, _ in got.values())}", partition_key=k,
                tags={"pipeline/triggered_by": runs[:250]}))
        elif limits and now - min(t for t, _ in got.values()) > min(limits) / 1000:
            gave_up.append(k)
    for k in [r.partition_key for r in requests] + gave_up:
        del pending[k]
    context.update_cursor(json.dumps({"since": newest, "pending": pending}))
    if requests:
        return requests
    if gave_up:
        return dg.SkipReason(f"Gave up waiting for partitions {', '.join(gave_up)}: not every "
                             f"upstream finished them within the timeout ({min(limits)} ms).")
    return dg.SkipReason("Waiting for " + (", ".join(
        f"{k} ({', '.join(sorted(got))} done)" for k, got in sorted(pending.items()))
        or "upstream runs"))


# ---------------------------------------------------------------- newFiles
SETTLE_S = 2.0  # a local file modified this recently may still be being written: next look


def list_files(cfg: NewFiles) -> list[tuple[str, str]]:
    """(path, version) of the files under cfg.path matching cfg.pattern; the version is the
    modification time and size (local, HDFS) or the ETag (S3)."""
    scheme = cfg.path.split("://", 1)[0] if "://" in cfg.path else "file"
    if scheme in ("s3a", "s3"):
        return _list_s3(cfg)
    if scheme in ("hdfs", "webhdfs", "swebhdfs"):
        return _list_hdfs(cfg)
    root = Path(cfg.path.removeprefix("file://"))
    now, out = time.time(), []
    for f in sorted(root.glob(cfg.pattern)) if root.is_dir() else []:
        st = f.stat()
        if f.is_file() and now - st.st_mtime >= SETTLE_S:
            out.append((str(f), f"{st.st_mtime_ns}-{st.st_size}"))
    return out


def _list_s3(cfg: NewFiles) -> list[tuple[str, str]]:
    import boto3
    scheme, rest = cfg.path.split("://", 1)
    bucket, _, prefix = rest.partition("/")
    client = boto3.client("s3", endpoint_url=cfg.endpoint) if cfg.endpoint \
        else boto3.client("s3")
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            name = obj["Key"].rsplit("/", 1)[-1]
            if name and fnmatch.fnmatch(name, cfg.pattern):
                out.append((f"{scheme}://{bucket}/{obj['Key']}", obj["ETag"].strip('"')))
    return out


def webhdfs_url(cfg: NewFiles) -> str:
    """The WebHDFS REST address listing cfg.path: hdfs://nn:8020/d through the NameNode's web
    address (cfg.webhdfs, default http://nn:9870), webhdfs://nn:9870/d directly."""
    u = urlsplit(cfg.path)
    if u.scheme == "hdfs":
        web = (cfg.webhdfs or f"http://{u.hostname}:9870").rstrip("/")
    else:
        web = f"{'https' if u.scheme == 'swebhdfs' else 'http'}://{u.netloc}"
    return f"{web}/webhdfs/v1/{u.path.strip('/')}"


def _list_hdfs(cfg: NewFiles) -> list[tuple[str, str]]:
    """The directory's files through WebHDFS (plain HTTP: the sensor's process has no JVM).
    A file modified within SETTLE_S of the NameNode's own clock (its Date header) may still
    be being written, and Hadoop's in-flight names (`_COPYING_`, hidden) are left for the
    next look."""
    url = webhdfs_url(cfg)
    query = {"op": "LISTSTATUS"}
    if os.environ.get("HADOOP_USER_NAME"):
        query["user.name"] = os.environ["HADOOP_USER_NAME"]
    try:
        with urlopen(f"{url}?{urlencode(query)}", timeout=30) as r:
            body, date = json.load(r), r.headers.get("Date")
    except HTTPError as e:
        detail = e.read().decode(errors="replace")[:300]
        if e.code == 404:
            return []  # the directory does not exist (yet): nothing new
        raise RuntimeError(f"newFiles: listing {cfg.path} through {url} failed: HTTP "
                           f"{e.code} {detail}") from None
    except (URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise RuntimeError(f"newFiles: cannot list {cfg.path}: {reason} at {url} (set the "
                           "sensor's 'webhdfs' to the NameNode's web address, e.g. "
                           "http://namenode:9870)") from None
    # The header has whole seconds: its second's end is the closest bound to "now".
    now_ms = parsedate_to_datetime(date).timestamp() * 1000 + 999 if date \
        else time.time() * 1000
    base = cfg.path.rstrip("/")
    out = []
    for st in body["FileStatuses"]["FileStatus"]:
        name = st["pathSuffix"]
        if (st["type"] != "FILE" or name.startswith((".", "_")) or name.endswith("_COPYING_")
                or not fnmatch.fnmatch(name, cfg.pattern)
                or now_ms - st["modificationTime"] < SETTLE_S * 1000):
            continue
        out.append((f"{base}/{name}", f"{st['modificationTime']}-{st['length']}"))
    return sorted(out)


def new_files_sensor(p: LoadedPipeline, job_name: str, k: int, cfg: NewFiles
                     ) -> dg.SensorDefinition:
    """One run per new file: its run key is the file and its version, so a file is never
    run twice, even across daemon restarts (the cursor of seen files lives in the
    instance), and none is skipped (each look lists everything under the path). A
    partitioned pipeline's run is for its latest complete partition."""
    parts = partitions_def(p)

    @dg.sensor(name=f"{job_name}_new_files" + (f"_{k + 1}" if k else ""), job_name=job_name,
               minimum_interval_seconds=cfg.minimum_interval_seconds,
               default_status=dg.DefaultSensorStatus.RUNNING,
               description=f"Starts pipeline '{p.name}' for each new file {cfg.pattern} in "
                           f"{cfg.path}; the run sees it as ${{trigger.file}}.")
    def _sensor(context: dg.SensorEvaluationContext):
        seen = json.loads(context.cursor) if context.cursor else {}
        requests = []
        key = latest_complete(parts) if parts is not None else None
        if parts is not None and key is None:
            return dg.SkipReason(f"pipeline '{p.name}' has no complete partition yet")
        for path, version in list_files(cfg):
            if seen.get(path) == version:
                continue
            requests.append(dg.RunRequest(run_key=f"{path}@{version}", partition_key=key,
                                          tags={TRIGGER_TAG: path}))
            seen[path] = version
        context.update_cursor(json.dumps(seen))
        return requests or dg.SkipReason(f"no new file {cfg.pattern} in {cfg.path}")

    return _sensor


def orchestration_defs(pipelines: Iterable[tuple[LoadedPipeline, Plan, Iterable[dg.AssetKey]]]
                       ) -> dict:
    """Schedules and sensors of the pipelines (for Definitions): each pipeline, its plan and
    its asset keys."""
    triples = list(pipelines)
    pairs = [(p, plan) for p, plan, _ in triples]
    jobs = {p.name: Upstream(plan.job_name, frozenset(keys)) for p, plan, keys in triples}
    schedules = [s for p, plan in pairs if (s := schedule_for(p, plan))]
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
