"""A load step's op: the write (a stream's load starts its query), its row counts from the
observations that write filled, and its materialization (schema, counts, column lineage)."""
from __future__ import annotations

import time

import dagster as dg

from pipeline_defs.config.assets import uri
from pipeline_defs.dagster_layer.checks import record_table_checks
from pipeline_defs.dagster_layer.outputs import (
    OBSERVE_WAIT_S,
    StepOutput,
    counted_by_this_action,
    observe,
    observed_rows,
    plain,
    table_schema,
)
from pipeline_defs.dagster_layer.plan import Plan, StepNode
from pipeline_defs.dagster_layer.stream_runs import start_stream
from pipeline_defs.steps.context import LoadResult, StepContext
from pipeline_defs.steps.lineage import column_sources
from pipeline_defs.steps.registry import StepDef


def _column_lineage(context, current: StepOutput) -> dg.TableColumnLineage | None:
    """Which columns of the tables read each written column comes from (Spark's analyzed
    plan, no job). Best effort: a plan shape it cannot read gives no lineage, never a failed
    load."""
    sources = dict(c for o in current.lineage() for c in o.columns)
    if not sources:
        return None
    try:
        found = column_sources(current.df)
    except Exception as e:  # noqa: BLE001 - lineage is metadata, the load succeeded
        context.log.debug(f"no column lineage: {type(e).__name__}: {e}")
        return None
    return dg.TableColumnLineage(deps_by_column={
        column: [dg.TableColumnDep(asset_key=sources[i][0], column_name=sources[i][1])
                 for i in sorted(ids) if i in sources]
        for column, ids in found.items()})


def run_load(context, plan: Plan, node: StepNode, stepdef: StepDef, current: StepOutput,
              ctx: StepContext, started: float, key: dg.AssetKey) -> dg.Output:
    if current.df.isStreaming:
        return start_stream(context, plan, node, stepdef, current, ctx, key)
    s = node.step
    df, obs = current.df, None
    if not s.config.counts_rows:
        df, obs = observe(df, context.run_id, node.op_name)
    ctx.activity = f"writing to {s.config.location() or 'its target'}"
    with counted_by_this_action(ctx.spark, current.lineage()):
        result: LoadResult = stepdef.fn(df, s.config, ctx)
    ctx.activity = "reading the row counts of the write"
    rows = result.rows if result.rows is not None else observed_rows(obs, OBSERVE_WAIT_S)
    duration = round(time.perf_counter() - started, 3)
    # Rows per upstream step: from the observations this write filled (each step counted
    # where build_plan placed its count), and from the load itself.
    observed = {o.step: observed_rows(o.observation) for o in current.lineage()
                if o.observation is not None}
    observed[s.index] = rows
    step_rows = {plan.node(i).op_name: observed[plan.node(i).counted_by]
                 for i in plan.upstream(s.index)
                 if observed.get(plan.node(i).counted_by) is not None}
    meta = {"location": result.location, "dagster/uri": uri(result.location),
            "format": result.format, "mode": result.mode,
            "dagster/column_schema": table_schema(result.schema or current.df.schema),
            "duration_s": duration, "step_rows": dg.MetadataValue.json(step_rows),
            **{k: plain(v) for k, v in result.metadata.items()}}
    if rows is not None:
        meta["dagster/row_count"] = int(rows)
    if s.config.catalog_name():
        meta["dagster/table_name"] = s.config.catalog_name()
    lineage = _column_lineage(context, current)
    if lineage is not None:
        meta["dagster/column_lineage"] = lineage
    if result.checks:
        record_table_checks(context, s, key, result.checks)
    context.log.info(f"{s.label} wrote {rows if rows is not None else '?'} rows to "
                     f"{result.location} in {duration:.1f}s")
    return dg.Output({"location": result.location, "rows": rows}, metadata=meta)
