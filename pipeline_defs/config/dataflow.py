"""The dataflow of a pipeline: which step reads which DataFrame, checked before Spark starts.

Semantics of the original format: steps run in order; each extract, transform and validate
step's output becomes the *current* DataFrame; a load writes the current DataFrame and leaves
it current; `registerAs` also stores a step's output under a name."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from collections.abc import Sequence

from pipeline_defs.config.types import Catalog, LoadedPipeline, LoadedStep, UnparsedConfig
from pipeline_defs.errors import Problem


def safe_name(text: str) -> str:
    """A Dagster-safe name: letters, digits and _ only, not starting with a digit."""
    out = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "unnamed"
    return out if not out[0].isdigit() else f"_{out}"


@dataclass(frozen=True)
class StepNode:
    step: LoadedStep
    op_name: str
    current: int | None  # index of the step whose output is this step's current DataFrame
    named: dict[str, int]  # DataFrame name -> index of the step that registered it
    after: tuple[int, ...]  # side effects that must happen first (earlier loads)
    observe: bool = False  # count this step's output rows with observe()
    counted_by: int | None = None  # the step whose count is this step's row count

    @property
    def inputs(self) -> list[int]:
        return ([self.current] if self.current is not None else []) + list(self.named.values())


@dataclass
class Plan:
    pipeline: LoadedPipeline
    job_name: str
    nodes: list[StepNode] = field(default_factory=list)

    def node(self, index: int) -> StepNode:
        return self.nodes[index - 1]

    def consumers(self, index: int) -> list[StepNode]:
        return [n for n in self.nodes if index in n.inputs]

    def upstream(self, index: int) -> list[int]:
        """Every step whose output flows into step `index` (transitively), in order."""
        seen: set[int] = set()
        todo = list(self.node(index).inputs)
        while todo:
            i = todo.pop()
            if i not in seen:
                seen.add(i)
                todo.extend(self.node(i).inputs)
        return sorted(seen)


def _walk(file: str, steps: Sequence[LoadedStep]):
    """Yield (step, current producer, {name: producer}, earlier loads, problems) in order."""
    current: int | None = None
    registered: dict[str, int] = {}
    loads: list[int] = []
    for s in steps:
        problems: list[Problem] = []
        named: dict[str, int] = {}
        for fpath, name in s.config.named_inputs(tuple(registered)):
            if name in registered:
                named[name] = registered[name]
            else:
                have = ", ".join(sorted(registered)) or "none"
                problems.append(Problem(
                    file, f"names '{name}', which no earlier step registers. "
                    f"Registered so far: {have}.", s.index, s.label, f"config.{fpath}",
                    "Add \"registerAs\" to the step that produces it, or fix the name."))
        uses = s.config.reads_current()
        if uses and current is None:
            problems.append(Problem(
                file, f"a {s.kind} step needs an input DataFrame, and no earlier step "
                "produces one.", s.index, s.label, None,
                "Put an extract step before it."))
        yield s, (current if uses else None), named, tuple(loads[-1:]), problems
        if s.kind == "load":
            loads.append(s.index)
            out = current
        else:
            out = s.index
        current = out
        if s.config.register_as and out is not None:
            registered[s.config.register_as] = out


def check_dataflow(file: str, steps: Sequence[LoadedStep]) -> list[Problem]:
    """Names read before they are registered, steps with no input (stand-ins of steps that
    did not parse take part with what they register and read)."""
    return [pr for *_, problems in _walk(file, steps) for pr in problems]


def check_streaming(file: str, steps: Sequence[LoadedStep], catalog: Catalog
                    ) -> list[Problem]:
    """What a streaming pipeline's runtime would refuse, found before Spark starts: methods
    without a streaming form (dataset-level validations, sinks with no stream writer),
    config that has no meaning on a stream, loads that no streaming source feeds."""
    out: list[Problem] = []
    sources: dict[int, bool] = {}  # step -> a stream flows out of it
    def streaming(kind: str) -> list[str]:
        return sorted(m for k, m in catalog.methods() if k == kind and catalog.streams(k, m))
    for s, current, named, _, _ in _walk(file, steps):
        inputs = ([current] if current is not None else []) + list(named.values())
        fed = any(sources.get(i) for i in inputs)
        if isinstance(s.config, UnparsedConfig):
            sources[s.index] = s.kind != "extract" and fed  # unknown: no further claims
            continue
        ok = catalog.streams(s.kind, s.method)
        if s.kind == "extract":
            sources[s.index] = ok  # a batch extract is a static side (e.g. of a join)
        elif s.kind == "load":
            sources[s.index] = fed
            if not ok:
                out.append(Problem(file, f"{s.method} has no streaming writer.", s.index,
                                   s.label, "method", "Streaming sinks: "
                                   + ", ".join(streaming("load")) +
                                   ". Or write this target from a batch pipeline."))
            elif not fed:
                out.append(Problem(file, "no stream reaches this load: none of the extracts "
                                   "before it reads a stream.", s.index, s.label, None,
                                   "Read a stream with " + ", ".join(
                                       streaming("extract")) +
                                   ", or set \"mode\": \"batch\"."))
        else:
            sources[s.index] = fed
            if fed and not ok:
                what = ("checks the whole dataset" if s.kind == "validate"
                        else "needs the whole dataset")
                fix = ("In a streaming pipeline only row rules run, per micro-batch: "
                       + ", ".join(streaming("validate")) +
                       ". Check the sink with a batch pipeline instead."
                       if s.kind == "validate" else "Run it in a batch pipeline instead.")
                out.append(Problem(file, f"{s.method} {what}, which a stream never has.",
                                   s.index, s.label, "method", fix))
        if fed or s.kind == "extract":
            for fpath, msg, fix in s.config.streaming_problems():
                out.append(Problem(file, msg, s.index, s.label, f"config.{fpath}", fix))
    return out


def _op_name(s: LoadedStep) -> str:
    if s.name:
        return s.name
    base = f"s{s.index:02d}_{s.method}"
    if s.config.register_as:
        base += f"_{s.config.register_as}"
    return safe_name(base)


def build_plan(p: LoadedPipeline) -> Plan:
    """The step graph of a checked pipeline, with where row counts can be observed."""
    plan = Plan(p, safe_name(p.name))
    for s, current, named, after, _ in _walk(p.file, p.steps):
        # Extracts read sources that an earlier load may have written: keep file order there.
        plan.nodes.append(StepNode(s, _op_name(s), current, named,
                                   after if s.kind in ("load", "extract") else ()))
    counted = {n.step.index: _counted_by(plan, n) for n in plan.nodes}
    for i, n in enumerate(plan.nodes):
        observe = n.step.kind != "load" and n.step.index in counted.values()
        plan.nodes[i] = StepNode(n.step, n.op_name, n.current, n.named, n.after, observe,
                                 counted[n.step.index])
    return plan


def _reaches_filter(plan: Plan, index: int, seen: set[int] | None = None) -> bool:
    """Could a filter in a later step be pushed down through this step's output?"""
    seen = seen if seen is not None else set()
    for c in plan.consumers(index):
        if c.step.index in seen:
            continue
        seen.add(c.step.index)
        model = type(c.step.config)
        if model.filters or (model.passes_filters and _reaches_filter(plan, c.step.index, seen)):
            return True
    return False


def _counted_by(plan: Plan, n: StepNode) -> int | None:
    """Where this step's output rows are counted, at the lowest cost:

    * row-preserving steps (enrichData, renameColumns, validations, ...) share the count of
      the step after them, so a chain of them is counted once, at its end;
    * a chain that ends in loads is counted by the first load (it observes what it writes);
    * otherwise at the chain's end, unless an observe() there would block a filter that
      Spark could push further down (then the step is not counted: None);
    * a load's own input is counted by the load."""
    if n.step.kind == "load":
        return n.step.index
    if n.step.kind == "validate":
        return None  # a validation reports the rows it checked, from its own pass
    end = n
    while True:
        consumers = plan.consumers(end.step.index)
        if len(consumers) == 1 and consumers[0].step.kind != "load" and \
                consumers[0].step.config.keeps_rows():
            end = consumers[0]
            continue
        break
    if not consumers:
        return None
    loads = [c for c in consumers if c.step.kind == "load"]
    if len(loads) == len(consumers):
        return loads[0].step.index
    return None if _reaches_filter(plan, end.step.index) else end.step.index
