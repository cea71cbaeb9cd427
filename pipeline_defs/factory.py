"""PipelineConfig -> Dagster: one job per pipeline (one op per step, `ops.py`), an asset per
load target with lineage from its sources, the validations as asset checks.

DataFrames pass between ops as lazy plans (in-memory IO manager, in-process executor, one
SparkSession per run). Row counts come from `observe()` on the plans that run anyway."""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import dagster as dg

from pipeline_defs.config.dataflow import safe_name
from pipeline_defs.config.loader import LoadedPipeline
from pipeline_defs.ops import check_name, input_name, op_for
from pipeline_defs.plan import Plan, build_plan
from pipeline_defs.steps.registry import Registry
from pipeline_defs.stream_runs import watch_op


def asset_key_for(location: str, override: list[str] | None = None) -> dg.AssetKey:
    """A stable asset key from a path, table or topic: s3a://b/x/y -> s3a/b/x/y."""
    if override:
        return dg.AssetKey(override)
    scheme, sep, rest = location.partition("://")
    if not sep:
        scheme, rest = ("file", location) if "/" in location else ("table", location)
    parts = [safe_name(p) for p in re.split(r"[/.]", rest) if p and p not in (".", "..")]
    return dg.AssetKey([safe_name(scheme), *parts])


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


def build_pipeline(p: LoadedPipeline, registry: Registry) -> PipelineDefs:
    plan = build_plan(p)
    load_keys = {n.step.index: asset_key_for(n.step.config.location() or n.op_name,
                                             getattr(n.step.config, "asset_key", None))
                 for n in plan.nodes if n.step.kind == "load"}
    source_keys = {n.step.index: asset_key_for(n.step.config.location())
                   for n in plan.nodes
                   if n.step.kind == "extract" and n.step.config.location()}
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


def asset_specs(pipelines: Iterable[PipelineDefs]) -> list[dg.AssetSpec]:
    """One spec per asset key across all pipelines: load targets (with lineage from the
    sources they read) and the sources themselves."""
    deps: dict[dg.AssetKey, set[dg.AssetKey]] = {}
    info: dict[dg.AssetKey, dict] = {}
    for pd in pipelines:
        for i, key in pd.load_keys.items():
            upstream = [pd.source_keys[j] for j in pd.plan.upstream(i) if j in pd.source_keys]
            deps.setdefault(key, set()).update(k for k in upstream if k != key)
            node = pd.plan.node(i)
            info.setdefault(key, {
                "group_name": pd.plan.job_name,
                "description": f"Written by pipeline '{pd.plan.pipeline.name}' "
                               f"({node.step.label})",
                "kinds": {"spark", *filter(None, [pd.asset_kinds.get(i)])},
                "metadata": {"location": node.step.config.location() or ""}})
        for i, key in pd.source_keys.items():
            deps.setdefault(key, set())
            node = pd.plan.node(i)
            info.setdefault(key, {
                "group_name": "sources",
                "description": f"Read by pipeline '{pd.plan.pipeline.name}' ({node.step.label})",
                "kinds": set(filter(None, [pd.asset_kinds.get(i)])),
                "metadata": {"location": node.step.config.location() or ""}})
    return [dg.AssetSpec(k, deps=sorted(deps[k], key=lambda a: a.to_user_string()), **info[k])
            for k in sorted(deps, key=lambda a: a.to_user_string())]
