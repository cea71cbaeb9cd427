"""A step's `condition`, evaluated when its op runs: counts read from the DataFrames it
names (persisted, so the step reads them from the cache), values from the run's parameters."""
from __future__ import annotations

import dagster as dg

from pipeline_defs.config.dates import parse_time
from pipeline_defs.config.params import DATE
from pipeline_defs.dagster_layer.metrics import job_group
from pipeline_defs.dagster_layer.outputs import (
    StepOutput,
    counted_by_this_action,
)
from pipeline_defs.dagster_layer.params import (
    run_params,
)
from pipeline_defs.dagster_layer.plan import Plan


def condition_holds(context, plan: Plan, s, condition, current: StepOutput | None,
                     named: dict[str, StepOutput], params_key: str | None) -> bool:
    """Evaluates the step's `condition`. A count persists the DataFrame it counts first, so
    the step then reads it from the cache: one Spark job, the data computed once."""
    outputs = {o.op_name: o for src in [current, *named.values()] if src is not None
               for o in src.lineage()}
    op_name = plan.node(s.index).op_name
    context.resources.spark.spark.sparkContext.setJobGroup(
        job_group(plan.job_name, op_name, context.run_id),
        f"{plan.pipeline.name} step {s.index} condition")
    params = run_params(context, plan, params_key)
    seen: dict[str, object] = {}

    def rows(o: StepOutput | None, what: str) -> int:
        if o is None:
            raise dg.Failure(description=f"step {s.index} ({s.label}): condition "
                             f"`{condition.text}` needs {what}, which this step does not "
                             "read.", allow_retries=False)
        with counted_by_this_action(context.resources.spark.spark, o.lineage()):
            return o.df.persist().count()

    def value_of(name: str):
        if name == "previous_step_count":
            value = rows(current, "the previous step's rows")
        elif name == "execution_date":  # the logical time's date
            value = params.get("execution_date") or parse_time(params[DATE]).date().isoformat()
        elif name.startswith("steps."):
            step = name.split(".")[1]
            value = rows(outputs.get(step), f"the rows of step '{step}'")
        else:
            value = params.get(name, plan.pipeline.params.get(name))
        seen[name] = value
        return value

    holds = condition.evaluate(value_of)
    values = ", ".join(f"{k}={v!r}" for k, v in seen.items())
    if not holds:
        context.log.info(f"step {s.index} ({s.label}) skipped: condition `{condition.text}` "
                         f"is false ({values}); the steps that need it are skipped too")
    else:
        context.log.debug(f"condition `{condition.text}` holds ({values})")
    return holds
