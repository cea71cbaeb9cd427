"""PipelineConfig -> Dagster: one job per pipeline (one op per step, `ops.py`), an asset per
load target with lineage from its sources, the validations as asset checks.

DataFrames pass between ops as lazy plans (in-memory IO manager, in-process executor, one
SparkSession per run). Row counts come from `observe()` on the plans that run anyway."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import dagster as dg

from pipeline_defs.config.assets import AssetNames, asset_names, uri
from pipeline_defs.config.dataflow import safe_name
from pipeline_defs.config.loader import LoadedPipeline
from pipeline_defs.ops import check_name, input_name, op_for
from pipeline_defs.plan import Plan, build_plan
from pipeline_defs.steps.registry import Registry
from pipeline_defs.stream_runs import watch_op


@dataclass
class PipelineDefs:
    job: dg.JobDefinition
    plan: Plan
    load_keys: dict[int, dg.AssetKey] = field(default_factory=dict)
    source_keys: dict[int, dg.AssetKey] = field(default_factory=dict)
    check_targets: dict[int, list[dg.AssetKey]] = field(default_factory=dict)
    asset_kinds: dict[int, str] = field(default_factory=dict)
    """What each extract reads and each load writes, as its method's registration says."""

    def check_specs(self) -> list[dg.AssetCheckSpec]:
        out = []
        for i, keys in self.check_targets.items():
            s = self.plan.node(i).step
            for key in keys:
                out.append(dg.AssetCheckSpec(
                    check_name(s), asset=key, blocking=s.config.on_failure == "fail",
                    description=f"{s.label} in pipeline '{self.plan.pipeline.name}' "
                                f"(step {s.index}, onFailure {s.config.on_failure})"))
        return out


def asset_checks(pipelines: Iterable[PipelineDefs]) -> list:
    """Declares each pipeline's validations as asset checks; they are evaluated by the
    validate ops of the pipeline's job, in the same run as the loads they protect."""
    out = []
    for pd in pipelines:
        specs = pd.check_specs()
        if not specs:
            continue
        out.append(_declared_checks(pd.plan, specs))
    return out


def _declared_checks(plan: Plan, specs: list[dg.AssetCheckSpec]):
    job = plan.job_name

    @dg.multi_asset_check(specs=specs, name=f"{job}__checks",
                          description=f"Validations of pipeline '{plan.pipeline.name}'")
    def _declared(context):
        raise dg.Failure(description=f"These checks run inside job '{job}': launch that job "
                                     "to evaluate them.")
    return _declared


def build_pipeline(p: LoadedPipeline, registry: Registry, names: AssetNames | None = None
                   ) -> PipelineDefs:
    names = names if names is not None else asset_names([p])[0]
    plan = build_plan(p)
    tables = {n.step.index: names.of(n.step) for n in plan.nodes
              if n.step.kind in ("extract", "load")}
    load_keys = {i: dg.AssetKey(list(t.key)) for i, t in tables.items()
                 if t is not None and plan.node(i).step.kind == "load"}
    source_keys = {i: dg.AssetKey(list(t.key)) for i, t in tables.items()
                   if t is not None and plan.node(i).step.kind == "extract"}
    check_targets = {n.step.index: [load_keys[j] for j in load_keys
                                    if n.step.index in plan.upstream(j)]
                     for n in plan.nodes if n.step.kind == "validate"}
    ops = {n.step.index: op_for(plan, n, registry, load_keys, check_targets)
           for n in plan.nodes}
    deps: dict[str, dict[str, dg.DependencyDefinition]] = {}
    for n in plan.nodes:
        d = {}
        if n.current is not None:
            d["df"] = dg.DependencyDefinition(plan.node(n.current).op_name, "result")
        for name, i in n.named.items():
            d[input_name(name)] = dg.DependencyDefinition(plan.node(i).op_name, "result")
        for j in n.after:
            d[f"after_s{j:02d}"] = dg.DependencyDefinition(plan.node(j).op_name, "result")
        deps[dg.NodeInvocation(ops[n.step.index].name, alias=n.op_name)] = d
    node_defs = list(ops.values())
    if p.config.mode == "streaming":
        loads = [n for n in plan.nodes if n.step.kind == "load"]
        watch = watch_op(plan, loads)
        node_defs.append(watch)
        deps[dg.NodeInvocation(watch.name, alias="streams")] = {
            f"s{n.step.index:02d}": dg.DependencyDefinition(n.op_name, "result")
            for n in loads}
    graph = dg.GraphDefinition(name=plan.job_name, node_defs=node_defs,
                               dependencies=deps, description=p.config.description)
    job = graph.to_job(
        executor_def=dg.in_process_executor,
        tags={"pipeline/name": p.name, "pipeline/mode": p.config.mode, **p.config.tags,
              # dagster.yaml limits runs per value of this tag to one (streaming pipelines)
              **({"pipeline/streaming": plan.job_name} if p.config.mode == "streaming"
                 else {})},
        metadata={"pipeline_file": p.file, "steps": len(p.steps)},
        description=p.config.description or f"Pipeline '{p.name}' from {p.file}")
    kinds = {n.step.index: registry.get(n.step.kind, n.step.method).kind_of(n.step.config)
             for n in plan.nodes if n.step.kind in ("extract", "load")}
    return PipelineDefs(job, plan, load_keys, source_keys, check_targets,
                        {i: k for i, k in kinds.items() if k})


def asset_specs(pipelines: Iterable[PipelineDefs], names: AssetNames) -> list[dg.AssetSpec]:
    """One spec per table: those pipelines write (grouped by their owner pipeline, with
    lineage from the tables their data came from) and those they only read (group
    `sources`, listing every pipeline that reads them)."""
    deps: dict[dg.AssetKey, set[dg.AssetKey]] = {}
    kinds: dict[dg.AssetKey, set[str]] = {}
    for pd in pipelines:
        for i, key in pd.load_keys.items():
            upstream = [pd.source_keys[j] for j in pd.plan.upstream(i) if j in pd.source_keys]
            deps.setdefault(key, set()).update(k for k in upstream if k != key)
            kinds.setdefault(key, {"spark"}).update(filter(None, [pd.asset_kinds.get(i)]))
        for i, key in pd.source_keys.items():
            deps.setdefault(key, set())
            if key not in pd.load_keys.values():
                kinds.setdefault(key, set()).update(filter(None, [pd.asset_kinds.get(i)]))
    specs = []
    for table in sorted(names.tables.values(), key=lambda t: t.key):
        key = dg.AssetKey(list(table.key))
        if key not in deps:
            continue
        writers = sorted({p for p, _ in table.writers})
        readers = sorted({p for p, _ in table.readers})
        if writers:
            text = f"Written by pipeline {', '.join(map(repr, writers))}"
            group = safe_name(table.owner)
        else:
            text = f"Read by pipeline {', '.join(map(repr, readers))}"
            group = "sources"
        if writers and readers:
            text += f"; read by {', '.join(map(repr, readers))}"
        specs.append(dg.AssetSpec(
            key, deps=sorted(deps[key], key=lambda a: a.to_user_string()), group_name=group,
            description=f"{text}. Location: {table.location}", kinds=kinds.get(key, set()),
            metadata={"dagster/uri": uri(table.location), "location": table.location}))
    return specs
