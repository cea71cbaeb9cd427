"""profileData: a one-pass profile of the current DataFrame, and validators it suggests."""
from __future__ import annotations

from datetime import UTC, datetime

from pydantic import Field
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import NumericType

from pipeline_defs.config.model import StepModel
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.registry import step


class ProfileData(StepModel):
    """Profile columns in one Spark pass: count, nulls, approximate distinct, min, max, mean,
    stddev, quantiles; shown in Dagster, optionally appended to a Delta table, with a
    suggested validator block. Rows pass unchanged."""
    keeps_rows_identity = True

    columns: list[str] | None = Field(None, description="Columns to profile (default all).")
    quantiles: list[float] = Field([0.25, 0.5, 0.75], description="Quantiles of numeric "
                                   "columns (approximate).")
    relative_error: float = Field(0.01, gt=0, le=1, description="Accuracy of approximate "
                                  "distinct counts and quantiles.")
    output_path: str | None = Field(None, description="Delta table to append the profile to "
                                    "(one row per column and run).")
    preserves_rows = True
    passes_filters = True


def profile(df: DataFrame, cfg: ProfileData) -> tuple[int, list[dict]]:
    cols = cfg.columns or df.columns
    types = {f.name: f.dataType for f in df.schema.fields}
    aggs = [F.count(F.lit(1)).alias("__rows")]
    for i, c in enumerate(cols):
        col = F.col(c)
        aggs += [F.count(col).alias(f"n{i}"),
                 F.approx_count_distinct(col, cfg.relative_error).alias(f"d{i}"),
                 F.min(col).alias(f"min{i}"), F.max(col).alias(f"max{i}")]
        if isinstance(types[c], NumericType):
            aggs += [F.mean(col).alias(f"mean{i}"), F.stddev(col).alias(f"sd{i}"),
                     F.percentile_approx(col, cfg.quantiles,
                                         int(1 / cfg.relative_error)).alias(f"q{i}")]
    row = df.agg(*aggs).first().asDict()
    rows = row["__rows"]
    out = []
    for i, c in enumerate(cols):
        numeric = isinstance(types[c], NumericType)
        out.append({
            "column": c, "type": types[c].simpleString(), "count": rows,
            "nulls": rows - row[f"n{i}"], "approx_distinct": row[f"d{i}"],
            "min": _plain(row[f"min{i}"]), "max": _plain(row[f"max{i}"]),
            "mean": row.get(f"mean{i}") if numeric else None,
            "stddev": row.get(f"sd{i}") if numeric else None,
            "quantiles": dict(zip(map(str, cfg.quantiles), row[f"q{i}"] or [], strict=False))
            if numeric else None})
    return rows, out


def _plain(v):
    return v if isinstance(v, (int, float, str, bool, type(None))) else str(v)


def suggest(rows: int, prof: list[dict]) -> list[dict]:
    """Validate steps that the profiled data passes: ready to paste into a pipeline."""
    steps = []
    not_null = [p["column"] for p in prof if p["nulls"] == 0 and rows]
    if not_null:
        steps.append({"type": "validate", "method": "validateNulls",
                      "config": {"notNullColumns": not_null}})
    ranges = {p["column"]: {"min": p["min"], "max": p["max"]} for p in prof
              if p["mean"] is not None and p["min"] is not None}
    if ranges:
        steps.append({"type": "validate", "method": "validateRanges",
                      "config": {"ranges": ranges}})
    keys = [p["column"] for p in prof if rows and p["nulls"] == 0 and
            p["approx_distinct"] >= 0.98 * rows]
    for k in keys[:1]:  # the likeliest key; approximate, so worth confirming
        steps.append({"type": "validate", "method": "validateUnique",
                      "config": {"columns": [k]}})
    return steps


@step("transform", "profileData", ProfileData, row_level=False)
def profile_data(df: DataFrame, cfg: ProfileData, ctx: StepContext) -> DataFrame:
    rows, prof = profile(df, cfg)
    ctx.metadata.update(rows=rows, profile=prof, suggested_validators=suggest(rows, prof))
    if cfg.output_path:
        now = datetime.now(UTC)
        records = [{**{k: (str(v) if k in ("min", "max", "quantiles") and v is not None
                           else v) for k, v in p.items()},
                    "pipeline": ctx.pipeline, "step": ctx.op_name or str(ctx.step),
                    "run_id": ctx.run_id, "profiled_at": now} for p in prof]
        schema = ("column string, type string, count long, nulls long, approx_distinct long, "
                  "min string, max string, mean double, stddev double, quantiles string, "
                  "pipeline string, step string, run_id string, profiled_at timestamp")
        ctx.spark.createDataFrame(records, schema).write.format("delta").mode("append") \
            .option("mergeSchema", "true").save(cfg.output_path)
        ctx.metadata["profile_location"] = cfg.output_path
    return df
