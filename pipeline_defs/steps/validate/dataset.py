"""Validators of the whole dataset: row count, freshness, anomalies (statistics of a
column)."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import Field, field_validator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipeline_defs.config import durations
from pipeline_defs.config.model import check_duration
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.registry import step
from pipeline_defs.steps.validate.engine import finish
from pipeline_defs.steps.validate.rules import DatasetRule, RowRule, Validator


# ---------------------------------------------------------------- dataset rules
def _count_seen(seen):
    """Rows the rule sees: those earlier drop/quarantine steps of the group kept."""
    return F.count(F.when(seen, 1))


class ValidateRowCount(Validator):
    """The number of rows lies within [min, max]."""

    min: int | None = Field(None, ge=0, description="Fewest rows allowed.")
    max: int | None = Field(None, ge=0, description="Most rows allowed.")
    row_actions = False


@step("validate", "validateRowCount", ValidateRowCount)
def validate_row_count(df: DataFrame, cfg: ValidateRowCount, ctx: StepContext) -> DataFrame:
    def judge(n, rows):
        if cfg.min is not None and n < cfg.min:
            return 1, f"{n} rows, fewer than {cfg.min}"
        if cfg.max is not None and n > cfg.max:
            return 1, f"{n} rows, more than {cfg.max}"
        return 0, f"{n} rows"
    text = " AND ".join(t for t in (f"rows >= {cfg.min}" if cfg.min is not None else "",
                                    f"rows <= {cfg.max}" if cfg.max is not None else "") if t)
    return finish(df, cfg, ctx, [], None, [DatasetRule("row_count", text or "any",
                                                        _count_seen, judge)])


class ValidateFreshness(Validator):
    """The newest value of a timestamp column is at most maxAge old."""

    column: str = Field(description="Timestamp (or date) column.")
    max_age: str = Field(description="e.g. \"24 hours\", \"30 minutes\", \"2 days\".")
    row_actions = False

    _max_age = field_validator("max_age")(check_duration)


@step("validate", "validateFreshness", ValidateFreshness)
def validate_freshness(df: DataFrame, cfg: ValidateFreshness, ctx: StepContext) -> DataFrame:
    limit = durations.seconds(cfg.max_age)

    def judge(newest, rows):
        if newest is None:
            return 1, "no timestamp at all"
        if not isinstance(newest, datetime):
            newest = datetime.combine(newest, datetime.min.time())
        if newest.tzinfo is None:
            newest = newest.replace(tzinfo=UTC)
        age = (datetime.now(UTC) - newest).total_seconds()
        return (1 if age > limit else 0), f"newest {newest.isoformat()}, {age / 3600:.1f} h old"
    rule = DatasetRule(f"freshness({cfg.column})", f"max({cfg.column}) >= now - {cfg.max_age}",
                       lambda seen: F.max(F.when(seen, F.col(cfg.column).cast("timestamp"))),
                       judge, (cfg.column,))
    return finish(df, cfg, ctx, [], None, [rule])


# ---------------------------------------------------------------- anomalies
class DetectAnomalies(Validator):
    """Per-row outliers of a numeric column, by z-score (|x - mean| / stddev > threshold) or
    IQR (outside [q1 - threshold*IQR, q3 + threshold*IQR]). The statistics take one Spark
    pass; the rows are then judged like any validation (flag adds a boolean column)."""

    column: str = Field(description="Numeric column.")
    method: Literal["zscore", "iqr"] = Field("zscore", description="zscore or iqr.")
    threshold: float | None = Field(None, gt=0, description="z-score limit (default 3) or IQR "
                                    "multiplier (default 1.5).")
    on_failure: Literal["flag", "warn", "drop", "quarantine", "fail"] = Field(
        "flag", description="flag: add a boolean column and go on; or as for validators.")
    flag_column: str | None = Field(None, description="Name of the flag column (default "
                                    "<column>_is_anomaly).")

    def keeps_rows(self) -> bool:
        return self.on_failure in ("flag", "warn", "fail")


@step("validate", "detectAnomalies", DetectAnomalies)
def detect_anomalies(df: DataFrame, cfg: DetectAnomalies, ctx: StepContext) -> DataFrame:
    x = F.col(cfg.column).cast("double")
    if cfg.method == "zscore":
        limit = cfg.threshold or 3.0
        stats = df.agg(F.mean(x).alias("m"), F.stddev(x).alias("s")).first()
        mean, sd = stats["m"], stats["s"]
        ctx.metadata.update(mean=mean, stddev=sd)
        outlier = (F.abs(x - F.lit(mean)) / F.lit(sd)) > F.lit(limit) if sd else F.lit(False)
        text = f"|{cfg.column} - {mean:.6g}| / {sd or 0:.6g} <= {limit:g}"
    else:
        k = cfg.threshold or 1.5
        q1, q3 = df.agg(F.percentile_approx(x, [0.25, 0.75], 10000)).first()[0] or (None, None)
        lo, hi = (q1 - k * (q3 - q1), q3 + k * (q3 - q1)) if q1 is not None else (None, None)
        ctx.metadata.update(q1=q1, q3=q3, lower=lo, upper=hi)
        outlier = ((x < F.lit(lo)) | (x > F.lit(hi))) if lo is not None else F.lit(False)
        text = f"{cfg.column} within [{lo:.6g}, {hi:.6g}]" if lo is not None else "no data"
    outlier = F.coalesce(outlier, F.lit(False))
    if cfg.on_failure == "flag":
        df = df.withColumn(cfg.flag_column or f"{cfg.column}_is_anomaly", outlier)
    rule = RowRule(f"anomaly({cfg.column})", text, outlier, (cfg.column,))
    return finish(df, cfg, ctx, [rule])
