"""PipelineConfig -> Dagster: one job per pipeline (one op per step, `ops.py`), an asset per
load target with lineage from its sources, the validations as asset checks.

DataFrames pass between ops as lazy plans (in-memory IO manager, in-process executor, one
SparkSession per run). Row counts come from `observe()` on the plans that run anyway."""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster._core.types.dagster_type import resolve_dagster_type

from pipeline_defs.config.assets import AssetNames, asset_names, reads, uri, writes
from pipeline_defs.config.dataflow import safe_name
from pipeline_defs.config.loader import LoadedPipeline
from pipeline_defs.dagster_layer.checks import check_name, evaluated_checks, table_check_name
from pipeline_defs.dagster_layer.metrics import remember
from pipeline_defs.dagster_layer.ops import op_for
from pipeline_defs.dagster_layer.orchestration import automation_condition, partitions_def
from pipeline_defs.dagster_layer.outputs import LOADED_TABLE, input_name
from pipeline_defs.dagster_layer.params import params_resource
from pipeline_defs.dagster_layer.plan import Plan, build_plan
from pipeline_defs.dagster_layer.stream_runs import STREAM_TOTALS, watch_op
from pipeline_defs.steps.registry import Registry


@dataclass
class PipelineDefs:
    assets: dg.AssetsDefinition
    """The pipeline as graph-backed assets: one op per step, each load's output an asset."""
    job: dg.UnresolvedAssetJobDefinition
    """The pipeline's job: materializes all of its assets (a selection materializes part)."""
    graph: dg.GraphDefinition
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
                                f"(step {s.index}, onFailure {s.config.on_failure})"
                                + (f"\n\n```sql\n{s.sql}\n```" if s.sql else "")))
        if self.plan.pipeline.config.mode == "batch":  # a stream's sink reports none
            for i, key in self.load_keys.items():
                s = self.plan.node(i).step
                for name, about in s.config.table_checks():
                    out.append(dg.AssetCheckSpec(
                        table_check_name(s, name), asset=key, blocking=False,
                        description=f"{about[0].upper()}{about[1:]}: checked by {s.label} "
                                    f"in pipeline '{self.plan.pipeline.name}' (step "
                                    f"{s.index}) after each write."))
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
    """The pipeline's checks as one op that runs once the assets it checks are written, and
    reports what the validate steps found in the same pass (validations are part of the
    pipeline's dataflow: they cannot be run alone against a stored table)."""
    job = plan.job_name

    @dg.multi_asset_check(specs=specs, name=f"{job}__checks", can_subset=True,
                          description=f"Validations of pipeline '{plan.pipeline.name}'")
    def _declared(context):
        found = evaluated_checks(context.op_execution_context.run_id)
        missing = [k for k in context.selected_asset_check_keys if k not in found]
        for key in sorted(context.selected_asset_check_keys, key=str):
            if key in found:
                yield found[key]
        if missing:
            names = ", ".join(f"{k.name} on {k.asset_key.to_user_string()}" for k in missing)
            raise dg.Failure(description=(
                f"{names}: these checks are evaluated while pipeline '{plan.pipeline.name}' "
                "writes the assets they check (its validate steps run in the same Spark pass "
                "as the write); materialize those assets, or launch job "
                f"'{job}', to evaluate them."))
    return _declared


def _dependencies(plan: Plan, ops: dict[int, dg.OpDefinition],
                  gates: dict[int, int] | None = None) -> dict:
    deps: dict[dg.NodeInvocation, dict[str, dg.DependencyDefinition]] = {}
    for n in plan.nodes:
        d = {}
        if (gates or {}).get(n.step.index) is not None:
            i = gates[n.step.index]
            d[f"model_s{i:02d}"] = dg.DependencyDefinition(plan.node(i).op_name, "model")
        if n.current is not None:
            d["df"] = dg.DependencyDefinition(plan.node(n.current).op_name, "result")
        for name, i in n.named.items():
            d[input_name(name)] = dg.DependencyDefinition(plan.node(i).op_name, "result")
        for j in n.after:  # a conditional step says "done" also when it was skipped
            d[f"after_s{j:02d}"] = dg.DependencyDefinition(
                plan.node(j).op_name, "done" if plan.node(j).step.condition else "result")
        deps[dg.NodeInvocation(ops[n.step.index].name, alias=n.op_name)] = d
    return deps


NOTHING = resolve_dagster_type(dg.Nothing)  # a graph input's type: an ordering, no value


@dataclass(frozen=True)
class GraphOutput:
    """A graph output: the asset of a table a load writes (`table`), or of a validation's
    quarantine table (`quarantine`); named after the asset it carries."""
    node: str
    node_output: str
    key: dg.AssetKey
    step: int
    kind: str  # "table" or "quarantine"


def io_name(key: dg.AssetKey) -> str:
    """A graph input's or output's name: the asset it carries (`sales/orders` ->
    `sales__orders`)."""
    return safe_name("__".join(key.path))


def _about(p: LoadedPipeline, plan: Plan, out: GraphOutput, kinds: dict[int, str],
           names: AssetNames | None = None) -> tuple[str, dict, str | None]:
    """(description, definition metadata, storage kind) of a graph output's asset."""
    step = plan.node(out.step).step
    refs = {"dagster/code_references": dg.CodeReferencesMetadataValue(code_references=[
        dg.LocalFileCodeReference(file_path=str(Path(p.file).resolve()),
                                  line_number=step.line or 1,
                                  label=f"{Path(p.file).name}, step {step.index}")])}
    if out.kind == "quarantine":
        root = p.config.quarantine_root or os.environ.get("PIPELINE_QUARANTINE_ROOT",
                                                          "quarantine")
        location = step.config.quarantine_path or \
            f"{root.rstrip('/')}/{safe_name(p.name)}/{plan.node(step.index).op_name}"
        text = (f"Rows that broke the rules of step {step.index} ({step.label}) of pipeline "
                f"'{p.name}', with the rules and why (_dq_rules, _dq_reason). Location: "
                f"{location}")
        return text, {"dagster/uri": uri(location), "location": location,
                      "pipeline_file": p.file, **refs}, "delta"
    if out.kind == "model":
        location = step.config.location() or ""
        return (f"Model trained by pipeline '{p.name}' (step {step.index}, {step.label}) on "
                "the data upstream of it. Location: " + location +
                (f" (also saved to {step.config.model_path})"
                 if getattr(step.config, "model_path", None) and
                 location != step.config.model_path else ""),
                {"dagster/uri": uri(location), "location": location, "pipeline_file": p.file,
                 **refs}, kinds.get(step.index))
    table = names.of(step) if names is not None else None
    location = table.location if table is not None else step.config.location() or ""
    meta = {"dagster/uri": uri(location), "location": location, "pipeline_file": p.file,
            **refs}
    if step.config.catalog_name():
        meta["dagster/table_name"] = step.config.catalog_name()
    return (f"Written by pipeline '{p.name}' (step {step.index}, {step.label}). Location: "
            f"{location}" + _sql_lineage(plan, step.index), meta, kinds.get(step.index))


def _sql_lineage(plan: Plan, index: int) -> str:
    """For a SQL file: the clauses the table comes from, in file order, as one SQL block."""
    steps = [plan.node(i).step for i in sorted({*plan.upstream(index), index})]
    clauses = list(dict.fromkeys(s.sql for s in steps if s.sql))
    if not clauses:
        return ""
    return "\n\nThe SQL it comes from:\n\n```sql\n" + "\n".join(clauses) + "\n```"


def code_version(plan: Plan, index: int) -> str:
    """What the asset written by step `index` runs: that step and every step upstream of it,
    as the file writes them (method, config with its placeholders, condition), hashed. It
    changes when one of them changes, so the UI can say the table is out of date."""
    steps = [plan.node(i).step for i in [*plan.upstream(index), index]]
    text = json.dumps([[s.kind, s.method, s.template, s.condition] for s in steps],
                      sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _check_targets(p: LoadedPipeline, plan: Plan, load_keys: dict[int, dg.AssetKey],
                   model_keys: dict[int, dg.AssetKey]) -> dict[int, list[dg.AssetKey]]:
    """The assets each validation checks: the tables its rows reach; a model's validation
    (evaluateModel), the models trained upstream of it. Streams are validated per
    micro-batch (the run's log and the op's metadata say what broke): no asset check."""
    out = {}
    for n in plan.nodes:
        if n.step.kind != "validate" or p.config.mode != "batch":
            continue
        i = n.step.index
        keys = {model_keys[j] for j in plan.upstream(i) if j in model_keys} \
            if type(n.step.config).checks_model else set()
        out[i] = sorted(keys or {load_keys[j] for j in plan.rows_reach(i) if j in load_keys},
                        key=lambda k: k.path)
    return out


def _model_gates(plan: Plan, model_keys: dict[int, dg.AssetKey],
                 check_targets: dict[int, list[dg.AssetKey]]) -> dict[int, int]:
    """{validate step: the trainModel step whose model it passes on}: a model checked by
    evaluateModel steps is materialized by the last of them, once they have all passed (or
    only warned), so its checks always see their results and a model that fails a blocking
    check is not materialized. (MLflow holds every version trained; aliases move only on
    evaluateModel's promoteTo.)"""
    gates = {}
    for i, key in model_keys.items():
        checking = [j for j, keys in check_targets.items() if key in keys
                    and type(plan.node(j).step.config).checks_model]
        if checking:
            gates[max(checking)] = i
    return gates


def _outputs(plan: Plan, load_keys: dict[int, dg.AssetKey],
             model_keys: dict[int, dg.AssetKey] | None = None,
             gated_by: dict[int, int] | None = None) -> dict[str, GraphOutput]:
    """The graph's outputs: one per table (its first load), one per quarantine table, one
    per trained model (from the evaluateModel step that gates it, if any)."""
    first_load: dict[dg.AssetKey, int] = {}
    for i, key in load_keys.items():
        first_load.setdefault(key, i)
    streaming = plan.pipeline.config.mode == "streaming"
    out = {}
    for key, i in first_load.items():
        node, node_output = ("streams", f"sink_s{i:02d}") if streaming else \
            (plan.node(i).op_name, "result")
        out[io_name(key)] = GraphOutput(node, node_output, key, i, "table")
    for i, key in (model_keys or {}).items():
        node = plan.node((gated_by or {}).get(i, i)).op_name
        out[io_name(key)] = GraphOutput(node, "model", key, i, "model")
    for evaluator, steps in plan.quarantines().items():
        for i in steps:  # quarantine tables: written by the pass of the group's last step
            key = dg.AssetKey(["quarantine", plan.job_name, plan.node(i).op_name])
            out[io_name(key)] = GraphOutput(plan.node(evaluator).op_name,
                                            f"quarantine_s{i:02d}", key, i, "quarantine")
    return out


def build_pipeline(p: LoadedPipeline, registry: Registry, names: AssetNames | None = None
                   ) -> PipelineDefs:
    """The pipeline's graph (one op per step) as assets: each load's output is the asset of
    its table (in a streaming pipeline, the `streams` op's output per sink, recorded when the
    run's queries end); an extract of a known table (a source, or another pipeline's table)
    is a graph input, so lineage crosses pipelines."""
    names = names if names is not None else asset_names([p])[0]
    plan = build_plan(p)
    tables = {n.step.index: names.of(n.step) for n in plan.nodes
              if reads(n.step) or writes(n.step)}
    load_keys = {i: dg.AssetKey(list(t.key)) for i, t in tables.items()
                 if t is not None and plan.node(i).step.kind == "load"}
    model_keys = {i: dg.AssetKey(list(t.key)) for i, t in tables.items()
                  if t is not None and writes(plan.node(i).step)
                  and plan.node(i).step.kind != "load"}
    source_keys = {i: dg.AssetKey(list(t.key)) for i, t in tables.items()
                   if t is not None and reads(plan.node(i).step)}
    check_targets = _check_targets(p, plan, load_keys, model_keys)
    written = {*load_keys.values(), *model_keys.values()}
    inputs = {i: key for i, key in source_keys.items() if key not in written}
    gates = _model_gates(plan, model_keys, check_targets)
    ops = {n.step.index: op_for(plan, n, registry, load_keys, check_targets,
                                source=n.step.index in inputs,
                                table_key=source_keys.get(n.step.index),
                                passes_model=gates.get(n.step.index)) for n in plan.nodes}
    deps = _dependencies(plan, ops, gates)
    node_defs = list(ops.values())
    outputs = _outputs(plan, load_keys, model_keys, {i: j for j, i in gates.items()})
    if p.config.mode == "streaming":
        loads = [n for n in plan.nodes if n.step.kind == "load"]
        watch = watch_op(plan, loads, {o.step: o.key for o in outputs.values()})
        node_defs.append(watch)
        deps[dg.NodeInvocation(watch.name, alias="streams")] = {
            f"s{n.step.index:02d}": dg.DependencyDefinition(n.op_name, "result")
            for n in loads}
    input_mappings, source_by_key = [], {}
    for i, key in inputs.items():
        name = source_by_key.setdefault(key, io_name(key))
        input_mappings.append(dg.InputMapping(
            graph_input_name=name, mapped_node_name=plan.node(i).op_name,
            mapped_node_input_name="source", dagster_type=NOTHING,
            graph_input_description=f"The table {key.to_user_string()}, read by step {i}"))
    kinds = {n.step.index: registry.get(n.step.kind, n.step.method).kind_of(n.step.config)
             for n in plan.nodes if reads(n.step) or writes(n.step)}
    about = {name: _about(p, plan, o, kinds, names) for name, o in outputs.items()}
    graph = dg.GraphDefinition(
        # not the job's name: an asset job's own graph carries that one
        name=f"{plan.job_name}_steps", node_defs=node_defs, dependencies=deps,
        description=p.config.description, input_mappings=input_mappings,
        output_mappings=[dg.OutputMapping(
            graph_output_name=name, mapped_node_name=o.node, mapped_node_output_name=o.node_output,
            dagster_type=STREAM_TOTALS if o.node == "streams" else LOADED_TABLE,
            graph_output_description=about[name][0]) for name, o in outputs.items()])
    # what each asset comes from: the tables read upstream of it, and a model trained
    # upstream of it (a trainModel's scored rows come from its model)
    lineage = {name: {source_keys[j] for j in plan.upstream(o.step) if j in inputs} |
               ({model_keys[j] for j in plan.upstream(o.step) if j in model_keys}
                if o.kind == "table" else set())
               for name, o in outputs.items()}
    assets = dg.AssetsDefinition.from_graph(
        graph, keys_by_input_name={v: k for k, v in source_by_key.items()},
        keys_by_output_name={name: o.key for name, o in outputs.items()},
        internal_asset_deps=lineage, group_name=plan.job_name, can_subset=True,
        tags_by_output_name={name: _asset_tags(p, plan.node(o.step).step, about[name][2])
                             for name, o in outputs.items()},
        owners_by_output_name={name: _owners(p, plan.node(o.step).step)
                               for name, o in outputs.items()},
        code_versions_by_output_name={name: code_version(plan, o.step)
                                      for name, o in outputs.items()},
        descriptions_by_output_name={name: a[0] for name, a in about.items()},
        partitions_def=partitions_def(p),
        # the pipeline's params: this job's Launchpad shows its own, no other pipeline's
        resource_defs={plan.params_key: params_resource(plan)} if plan.params_key else None,
        automation_conditions_by_output_name={
            name: automation_condition(p.config.automation) for name, o in outputs.items()
            if o.kind in ("table", "model")} if p.config.automation else None,
        metadata_by_output_name={name: a[1] for name, a in about.items()})
    job = dg.define_asset_job(
        plan.job_name, selection=dg.AssetSelection.assets(assets),
        executor_def=dg.in_process_executor,
        tags={"pipeline/name": p.name, "pipeline/mode": p.config.mode,
              # DataFrames live in the run's memory: a retried run starts from the beginning
              "dagster/retry_strategy": "ALL_STEPS", **p.config.tags,
              # dagster.yaml limits runs per value of this tag to one (streaming pipelines)
              **({"pipeline/streaming": plan.job_name} if p.config.mode == "streaming"
                 else {})},
        metadata={"pipeline_file": p.file, "steps": len(p.steps),
                  "dagster/code_references": dg.CodeReferencesMetadataValue(code_references=[
                      dg.LocalFileCodeReference(file_path=str(Path(p.file).resolve()),
                                                line_number=1, label=Path(p.file).name)])},
        description=p.config.description or f"Pipeline '{p.name}' from {p.file}")
    remember(graph.name, p)  # the run's metrics find the pipeline of its steps
    return PipelineDefs(assets, job, graph, plan, load_keys, source_keys, check_targets,
                        {i: k for i, k in kinds.items() if k})


def _asset_tags(p: LoadedPipeline, step, kind: str | None) -> dict[str, str]:
    """Dagster's kinds (the storage, and spark), the pipeline's tags, the load's over them
    (a quarantine table: the pipeline's)."""
    own = step.tags if step.kind == "load" and step.tags else {}
    return {**{f"dagster/kind/{k}": "" for k in ("spark", kind) if k}, **p.config.tags,
            **own}


def _owners(p: LoadedPipeline, step) -> list[str]:
    """The load's owners when it names them, else the pipeline's."""
    if step.kind == "load" and step.owners is not None:
        return list(step.owners)
    return list(p.config.owners)


def source_specs(pipelines: Iterable[PipelineDefs], names: AssetNames) -> list[dg.AssetSpec]:
    """The tables pipelines only read: external assets in group `sources`, listing every
    pipeline that reads them."""
    kinds: dict[dg.AssetKey, set[str]] = {}
    for pd in pipelines:
        for i, key in pd.source_keys.items():
            kinds.setdefault(key, set()).update(filter(None, [pd.asset_kinds.get(i)]))
    specs = []
    for table in sorted(names.tables.values(), key=lambda t: t.key):
        key = dg.AssetKey(list(table.key))
        if table.writers or key not in kinds:
            continue
        readers = sorted({p for p, _ in table.readers})
        specs.append(dg.AssetSpec(
            key, group_name="sources", kinds=kinds[key],
            description=f"Read by pipeline {', '.join(map(repr, readers))}. Location: "
                        f"{table.location}",
            metadata={"dagster/uri": uri(table.location), "location": table.location,
                      **({"dagster/table_name": table.catalog_name}
                         if table.catalog_name else {})}))
    return specs
