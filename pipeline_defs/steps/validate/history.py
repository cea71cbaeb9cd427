"""validateMetricsHistory: this run's row count and null fractions against earlier runs,
the history kept in a Delta table."""
from __future__ import annotations

from datetime import UTC, datetime

from pydantic import Field
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.registry import step
from pipeline_defs.steps.validate.engine import finish
from pipeline_defs.steps.validate.rules import DatasetRule, RuleResult, Validator


# ---------------------------------------------------------------- metrics history
class ValidateMetricsHistory(Validator):
    """Compare this run's row count and null fractions with the last runs of the same
    pipeline step (z-score); the history is a Delta table, so it survives restarts."""

    columns: list[str] | None = Field(None, description="Columns whose null fraction is "
                                      "tracked (default all).")
    lookback: int = Field(10, ge=2, description="How many earlier passing runs to compare "
                                                "with.")
    min_runs: int = Field(3, ge=2, description="Judge only once this many runs are recorded.")
    threshold: float = Field(3.0, gt=0, description="Largest z-score that still passes.")
    history_path: str | None = Field(None, description="Delta table of metrics (default "
                                     "<quarantine root>/_metrics_history).")
    row_actions = False


def _zscore(value: float, history: list[float]) -> float:
    mean = sum(history) / len(history)
    var = sum((h - mean) ** 2 for h in history) / (len(history) - 1)
    if var == 0:
        return 0.0 if value == mean else float("inf")
    return abs(value - mean) / var ** 0.5


def _nulls_seen(column: str):
    return lambda seen: F.count(F.when(seen & F.col(column).isNull(), 1))


@step("validate", "validateMetricsHistory", ValidateMetricsHistory)
def validate_metrics_history(df: DataFrame, cfg: ValidateMetricsHistory, ctx: StepContext
                             ) -> DataFrame:
    path = cfg.history_path or \
        f"{(ctx.quarantine_root or 'quarantine').rstrip('/')}/_metrics_history"
    step_id = ctx.op_name or str(ctx.step)
    spark = ctx.spark
    past: dict[str, list[float]] = {}
    from delta.tables import DeltaTable
    if DeltaTable.isDeltaTable(spark, path):
        recent = (spark.read.format("delta").load(path)
                  .filter((F.col("pipeline") == ctx.pipeline) & (F.col("step") == step_id) &
                          F.col("passed")).select("run_id", "recorded_at").distinct()
                  .orderBy(F.col("recorded_at").desc()).limit(cfg.lookback))
        rows = (spark.read.format("delta").load(path)
                .filter((F.col("pipeline") == ctx.pipeline) & (F.col("step") == step_id))
                .join(recent.select("run_id"), "run_id").collect())
        for r in rows:
            past.setdefault(r.metric, []).append(r.value)
    cols = cfg.columns or df.columns

    def judge_for(metric: str):
        def judge(value, rows):
            current = float(value) if metric == "row_count" else \
                (float(value) / rows if rows else 0.0)
            seen = past.get(metric, [])
            if len(seen) < cfg.min_runs:
                return 0, f"{metric} = {current:.6g}; {len(seen)} earlier runs, judging from " \
                          f"{cfg.min_runs}"
            z = _zscore(current, seen)
            mean = sum(seen) / len(seen)
            return (1 if z > cfg.threshold else 0), \
                f"{metric} = {current:.6g} vs mean {mean:.6g} of {len(seen)} runs, z = {z:.2f}"
        return judge

    rules = [DatasetRule("row_count", f"row count within {cfg.threshold:g} sd of history",
                         lambda seen: F.count(F.when(seen, 1)), judge_for("row_count"))]
    rules += [DatasetRule(f"null_fraction({c})", f"null fraction of {c} within "
                          f"{cfg.threshold:g} sd of history",
                          _nulls_seen(c), judge_for(f"null_fraction({c})"), (c,))
               for c in cols]

    def record(results: list[RuleResult], rows: int | None) -> None:
        passed = bool(ctx.metadata.get("passed"))
        now = datetime.now(UTC)
        values = [("row_count", float(rows or 0))]
        for r in results:
            if r.name.startswith("null_fraction("):
                frac = float(r.detail.split(" = ", 1)[1].split(" ", 1)[0].rstrip(";"))
                values.append((r.name, frac))
        spark.createDataFrame(
            [(ctx.pipeline, step_id, ctx.run_id, now, m, v, passed) for m, v in values],
            "pipeline string, step string, run_id string, recorded_at timestamp, "
            "metric string, value double, passed boolean") \
            .write.format("delta").mode("append").save(path)
        ctx.metadata["history_location"] = path

    return finish(df, cfg, ctx, [], None, rules, record)
