"""A run's parameters: the pipeline's `params` as run configuration (the Launchpad shows and
changes them), their values for this run, and the run's logical time (${DATE})."""
from __future__ import annotations

from dataclasses import replace

import dagster as dg

from pipeline_defs.config.dates import iso, parse_time
from pipeline_defs.config.loader import (
    TRIGGER_FILE,
    TRIGGER_NAME,
    with_params,
)
from pipeline_defs.config.params import DATE, now, resolve_params
from pipeline_defs.dagster_layer.orchestration import DATE_TAG, TRIGGER_TAG
from pipeline_defs.dagster_layer.plan import Plan, StepNode
from pipeline_defs.steps.registry import Registry


def params_resource(plan: Plan) -> dg.ResourceDefinition:
    """The pipeline's `params` as run configuration: the Launchpad shows each with its
    default (the file's, with the environment applied) and a run may change it. `DATE` and
    the params whose default depends on it are empty by default: the run's date decides."""
    p = plan.pipeline

    def pipeline_params(init) -> dict[str, str]:
        return dict(init.resource_config or {})
    pipeline_params.__qualname__ = "pipeline_params"  # its type as dg list defs / the UI show it

    fields = {name: dg.Field(str, default_value="" if p.dated(name) else value,
                             is_required=False,
                             description=f"${{{name}}} in the steps of pipeline '{p.name}'"
                             + (f"; empty: {p.config.params[name]} of the run's date"
                                if p.dated(name) else ""))
              for name, value in p.params.items() if name != DATE}
    fields[DATE] = dg.Field(str, default_value="", is_required=False, description=(
        "The run's logical time, yyyy-MM-dd or yyyy-MM-ddTHH:mm (${DATE}, ${DATE-1}, "
        "${DATE:yyyyMMdd}, ${DATE:HH}); empty: the partition's start, the schedule tick's, "
        "`pipeline run --date`'s, else now"))
    return dg.ResourceDefinition(resource_fn=pipeline_params, config_schema=fields,
                                 description=f"Parameters of pipeline '{p.name}' ({p.file})")


def run_params(context, plan: Plan, key: str | None) -> dict[str, str]:
    """This run's parameter values: what the run config sets, else what the definitions were
    loaded with, with `DATE` the run's date and the defaults that depend on it re-read."""
    p = plan.pipeline
    given = {k: v for k, v in (dict(getattr(context.resources, key)) if key else {}).items()
             if v != ""}
    date = given.pop(DATE, None) or run_time(context)
    base = {k: v for k, v in p.params.items() if k != DATE and not p.dated(k)}
    base.update({k: v for k, v in p.overrides.items() if k != DATE})
    trigger = context.run.tags.get(TRIGGER_TAG)
    if trigger:  # the file a newFiles sensor started this run for
        base.update({TRIGGER_FILE: trigger, TRIGGER_NAME: trigger.rstrip("/").rsplit("/", 1)[-1]})
    base.update(given)
    return resolve_params(p.config.params if p.config else {}, base, None, date)


def with_run_params(context, plan: Plan, node: StepNode, registry: Registry,
                     key: str | None) -> StepNode:
    """The node with its step configured by this run's parameter values."""
    step = with_params(plan.pipeline, node.step, registry, run_params(context, plan, key))
    return node if step is node.step else replace(node, step=step)


def run_time(context) -> str:
    """The run's logical time (yyyy-MM-ddTHH:mm:ss, local to its timezone): its partition's
    start (in the partitions' timezone: an hourly partition keeps its hour), the time
    `pipeline run --date` or its schedule's tick gave (tag `pipeline/date`, in the
    schedule's timezone), else now."""
    if context.has_partition_key:
        try:
            return iso(context.partition_time_window.start)
        except Exception:  # noqa: BLE001 - not a time partition: its key is the time
            return iso(parse_time(context.partition_key))
    if context.run.tags.get(DATE_TAG):
        return iso(parse_time(context.run.tags[DATE_TAG]))
    return now()
