"""Validation inside a stream: row rules applied to every row of every micro-batch."""
from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipeline_defs.common.errors import UnsupportedError
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.validate.rules import (
    REASON_COL,
    RULES_COL,
    RUN_COL,
    TIME_COL,
    RowRule,
    ValidationFailed,
    Validator,
    flag,
    quarantine_location,
)


def per_micro_batch(df: DataFrame, cfg: Validator, ctx: StepContext, rules: list[RowRule],
                     schema_errors: list[str], dataset_rules: list, finalize) -> DataFrame:
    """A validation inside a stream: its row rules apply to every row of every micro-batch.
    fail stops the query (and the run) at the first violating row; warn counts violations
    per micro-batch (logged by the run's stream watcher); drop filters; quarantine writes the
    violating rows to the quarantine Delta table by a query of their own."""
    from pipeline_defs.steps import streaming
    if dataset_rules or finalize:  # the load-time check refuses such files: a product bug
        raise UnsupportedError(f"{ctx.method} has dataset rules, which a stream never has.")
    if schema_errors:
        msg = "; ".join(schema_errors)
        if cfg.on_failure == "fail":
            raise ValidationFailed(f"{ctx.method}: {msg}")
        ctx.log.warning(f"{ctx.method}: {msg}")
    if not rules:
        return df
    broken = F.greatest(*[F.coalesce(r.violates, F.lit(False)) for r in rules]) \
        if len(rules) > 1 else F.coalesce(rules[0].violates, F.lit(False))
    ctx.metadata["rules"] = [r.text for r in rules]
    if cfg.on_failure == "fail":
        return df.filter(F.when(broken, F.raise_error(F.concat(
            F.lit(f"{ctx.method} (step {ctx.step}) failed: a row broke "),
            F.array_join(flag(rules), ", ")))).otherwise(F.lit(True)))
    if cfg.on_failure == "warn":
        metric = f"dq_step{ctx.step}"
        ctx.metadata["observed_metric"] = metric
        return df.observe(metric, F.count(F.lit(1)).alias("rows"),
                          *[F.count(F.when(r.violates, 1)).alias(r.name) for r in rules])
    if cfg.on_failure == "quarantine":
        location = quarantine_location(cfg, ctx)
        bad = (df.filter(broken).withColumn(RULES_COL, flag(rules))
               .withColumn(REASON_COL, F.concat(F.lit("broke: "), F.array_join(RULES_COL, ", ")))
               .withColumn(RUN_COL, F.lit(ctx.run_id))
               .withColumn(TIME_COL, F.current_timestamp()))
        settings = ctx.streaming
        q = (bad.writeStream.queryName(f"{ctx.pipeline}.quarantine.s{ctx.step}.{ctx.run_id[:8]}")
             .format("delta").option("mergeSchema", "true")
             .option("checkpointLocation", streaming.checkpoint_for(None, ctx, settings)
                     + "_quarantine")
             .trigger(**(streaming.trigger_kwargs(settings.trigger) or {}))
             .start(location))
        streaming.register(ctx.run_id, q, ctx.step, f"quarantine of step {ctx.step}")
        ctx.metadata["quarantine_location"] = location
    return df.filter(~broken)
