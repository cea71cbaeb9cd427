"""When a pipeline runs: its schedule, the pipelines it waits for, lineage-driven automation,
retries and concurrency pools (the top-level and step-level keys; Dagster makes them real)."""
from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, Field, field_validator, model_validator

from pipeline_defs.config.base import FormatModel

_ALIASES = {"@hourly", "@daily", "@weekly", "@monthly", "@yearly", "@annually", "@midnight"}
_NAMES = {
    3: {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())},
    4: {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())},
}
_RANGES = [(0, 59, "minute"), (0, 23, "hour"), (1, 31, "day of month"), (1, 12, "month"),
           (0, 7, "day of week")]


def cron_problem(cron: str) -> str | None:
    """Why `cron` is not a five-field cron expression Dagster can run, or None."""
    text = cron.strip()
    if text.lower() in _ALIASES:
        return None
    fields = text.split()
    if len(fields) != 5:
        return (f"'{cron}' has {len(fields)} fields; a cron expression has five (minute hour "
                "day-of-month month day-of-week), e.g. \"0 6 * * *\", or @daily/@hourly")
    for k, (field, (lo, hi, what)) in enumerate(zip(fields, _RANGES, strict=True)):
        for part in field.split(","):
            base, _, step = part.partition("/")
            if step and not step.isdigit():
                return f"'{cron}': step '/{step}' of the {what} field is not a number"
            if base == "*":
                continue
            ends = base.split("-")
            if len(ends) > 2 or not all(ends):
                return f"'{cron}': '{part}' is not a valid {what} value or range"
            for end in ends:
                value = _NAMES.get(k, {}).get(end.lower()) if not end.isdigit() else int(end)
                if value is None or not lo <= value <= hi:
                    return f"'{cron}': {what} '{end}' is outside {lo}-{hi}"
    return None


def timezone_problem(tz: str) -> str | None:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        return f"unknown timezone '{tz}' (an IANA name such as \"UTC\" or \"Europe/Paris\")"
    return None


def _cron(v: str) -> str:
    if problem := cron_problem(v):
        raise ValueError(problem)
    return v.strip()


def _timezone(v: str) -> str:
    if problem := timezone_problem(v):
        raise ValueError(problem)
    return v


Cron = Annotated[str, AfterValidator(_cron)]
Timezone = Annotated[str, AfterValidator(_timezone)]


class Schedule(FormatModel):
    cron: Cron = Field(description="Cron expression (five fields), e.g. \"0 6 * * *\", or "
                                   "@daily / @hourly.")
    timezone: Timezone = Field("UTC", description="IANA timezone the cron is read in.")
    enabled: bool = Field(True, description="Running when the definitions load (a toggle in "
                                            "the UI then wins).")


class Dependency(FormatModel):
    pipeline: str = Field(description="Name of the pipeline to wait for (its \"name\").")
    wait_for_completion: bool = Field(
        True, description="true: start when its run succeeds; false: when its run starts.")
    timeout: int | None = Field(
        None, ge=1, description="Milliseconds to wait, once one upstream has succeeded, for "
                                "the others; then that wait is given up (shown on the sensor's "
                                "tick).")
    catch_up: bool = Field(
        False, description="false (Dagster's rule for run-status sensors): only upstream runs "
        "that end after the sensor's first tick count. true: a run of the upstream that ended "
        "before the sensor existed (since this pipeline last ran) counts too, so the first "
        "tick may start this pipeline at once.")


class Automation(FormatModel):
    """Declarative Automation of a pipeline's assets on what they read."""

    on_cron: Cron | None = Field(None, description="Run on this cron once every upstream "
                                                   "asset has been updated since the last tick.")
    timezone: Timezone = Field("UTC", description="Timezone of onCron.")


Triggers = Literal["eager"] | Automation

_STARTS = {"daily": ("%Y-%m-%d", "2024-01-01"), "monthly": ("%Y-%m-%d", "2024-01-01"),
           "hourly": ("%Y-%m-%d-%H:%M", "2024-01-01-00:00")}


class Partitions(FormatModel):
    """Time partitions: one run per day (hour, month), its key the run's ${DATE}."""

    type: Literal["daily", "hourly", "monthly"] = Field(description="daily, hourly or "
                                                                    "monthly.")
    start: str = Field(description="First partition: yyyy-MM-dd (hourly: yyyy-MM-dd-HH:mm).")
    end: str | None = Field(None, description="Partitions end before this (default: now).")
    timezone: Timezone = Field("UTC", description="Timezone of the partition boundaries.")

    @model_validator(mode="after")
    def _dates(self):
        import datetime as dt
        fmt, example = _STARTS[self.type]
        for name in ("start", "end"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                dt.datetime.strptime(value, fmt)
            except ValueError:
                raise ValueError(f"{name} '{value}' is not a {self.type} partition start "
                                 f"(e.g. \"{example}\")") from None
        return self


class Retries(FormatModel):
    max_retries: int = Field(2, ge=0, le=20, description="Retries after the first attempt.")
    delay_seconds: float = Field(10, ge=0, description="Wait before the first retry.")
    backoff: Literal["constant", "linear", "exponential"] = Field(
        "exponential", description="How the wait grows between retries.")


POOL = re.compile(r"^[A-Za-z0-9_.\-/]+$")


class NewFiles(FormatModel):
    """A sensor: each new file (new path, or a path with a new modification time or ETag)
    under `path` starts one run, with ${trigger.file} (its full path) and ${trigger.name}
    (its name) for the steps."""

    type: Literal["newFiles"] = Field(description="newFiles.")
    path: str = Field(description="Directory to watch: a local path, file://, s3a:// / s3:// "
                                  "bucket and prefix, or a Hadoop hdfs:// / webhdfs:// "
                                  "directory.")
    pattern: str = Field("*", description="File name pattern, e.g. \"*.csv\".")
    minimum_interval_seconds: int = Field(30, ge=1, description="Seconds between looks.")
    endpoint: str | None = Field(None, description="S3-compatible endpoint (default: "
                                                   "AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL).")
    webhdfs: str | None = Field(None, description="For hdfs:// paths: the NameNode's web "
                                                  "address the sensor lists through (default "
                                                  "http://<namenode host>:9870).")

    @field_validator("path")
    @classmethod
    def _scheme(cls, v: str) -> str:
        scheme = v.split("://", 1)[0] if "://" in v else ""
        if scheme not in ("", "file", "s3a", "s3", "hdfs", "webhdfs", "swebhdfs"):
            raise ValueError(f"'{scheme}://' paths are not watched; use a local path, "
                             "file://, s3a://, s3://, hdfs:// or webhdfs://")
        if scheme in ("hdfs", "webhdfs", "swebhdfs") and not urlsplit(v).hostname:
            raise ValueError(f"'{v}' names no NameNode: write {scheme}://<namenode>[:port]"
                             "/directory")
        return v

    @field_validator("webhdfs")
    @classmethod
    def _web(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/]+", v):
            raise ValueError(f"'{v}' is not a web address: write http://<namenode>:9870")
        return v

    @model_validator(mode="after")
    def _keys_for_the_scheme(self):
        scheme = self.path.split("://", 1)[0] if "://" in self.path else ""
        if self.webhdfs and scheme != "hdfs":
            raise ValueError("'webhdfs' is for hdfs:// paths only (a webhdfs:// path already "
                             "names the web address)")
        if self.endpoint and scheme not in ("s3a", "s3"):
            raise ValueError("'endpoint' is for s3a:// and s3:// paths only")
        return self
