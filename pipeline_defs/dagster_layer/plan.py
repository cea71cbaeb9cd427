"""How a checked pipeline runs: one node per step with the DataFrames it reads, the loads it
waits for, and where its rows are counted (observe() placed so that it costs no pass and
blocks no pushdown). Read by the Dagster layer and the run summary."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from pipeline_defs.config.assets import reads, writes
from pipeline_defs.config.dataflow import safe_name, walk
from pipeline_defs.config.types import LoadedPipeline, LoadedStep
from pipeline_defs.spark import acceleration


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

    @property
    def params_key(self) -> str | None:
        """The Dagster resource holding the pipeline's `params` and its logical time `DATE`
        for a run (None: it has neither params nor dates)."""
        p = self.pipeline
        uses_date = any("${DATE" in json.dumps(s.template) for s in p.steps)
        return f"params_{self.job_name}" if p.config.params or uses_date else None

    def consumers(self, index: int) -> list[StepNode]:
        return [n for n in self.nodes if index in n.inputs]

    def validation_group(self, index: int) -> list[int]:
        """The validations evaluated in one Spark pass with validate step `index`, in order
        (batch): a run of consecutive validations, each the only reader of the one before
        and reading no other DataFrame. The first of them runs the pass; each reports its
        own results. A step that is no validation, or a validation alone: [index]."""
        if self.pipeline.config.mode == "streaming" or self.node(index).step.kind != "validate":
            return [index]
        head = index
        while (prev := self._grouped_after(head)) is not None:
            head = prev
        group = [head]
        while True:
            nxt = [c for c in self.consumers(group[-1]) if self._grouped_after(c.step.index)
                   == group[-1]]
            if not nxt:
                return group
            group.append(nxt[0].step.index)

    def _grouped_after(self, index: int) -> int | None:
        """The validation whose group validate step `index` joins, if any."""
        n = self.node(index)
        if n.step.kind != "validate" or n.current is None or n.named:
            return None
        prev = self.node(n.current)
        if prev.step.kind == "validate" and [c.step.index for c in
                                              self.consumers(prev.step.index)] == [index]:
            return prev.step.index
        return None

    def quarantines(self) -> dict[int, list[int]]:
        """{step running the pass: [its group's steps with onFailure quarantine]} (batch)."""
        out: dict[int, list[int]] = {}
        if self.pipeline.config.mode == "streaming":
            return out
        for n in self.nodes:
            if n.step.kind == "validate" and \
                    getattr(n.step.config, "on_failure", None) == "quarantine":
                out.setdefault(self.validation_group(n.step.index)[0], []).append(n.step.index)
        return out

    def rows_reach(self, index: int) -> list[int]:
        """The loads that write this step's output rows: through steps that keep the rows
        (filter, derive, select, rename, validate, ...), never through an aggregate, join,
        pivot or SQL, whose output rows are not these rows."""
        out, todo, seen = [], [index], set()
        while todo:
            i = todo.pop()
            for c in self.consumers(i):
                if c.current != i or c.step.index in seen:
                    continue
                seen.add(c.step.index)
                if c.step.kind == "load":
                    out.append(c.step.index)
                    todo.append(c.step.index)  # a load leaves the rows current
                elif type(c.step.config).keeps_rows_identity:
                    todo.append(c.step.index)
        return sorted(out)

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


def _op_name(s: LoadedStep) -> str:
    if s.name:
        return s.name
    base = f"s{s.index:02d}_{s.method}"
    if s.config.register_as:
        base += f"_{s.config.register_as}"
    return safe_name(base)


def build_plan(p: LoadedPipeline, native: bool | None = None) -> Plan:
    """The step graph of a checked pipeline, with where row counts can be observed.

    `native` (default: unless PIPELINE_ACCELERATION=off): Spark's work runs natively (Comet),
    where an observe() is an operator Comet cannot run, and everything above it then stays on
    Spark; so with the default "ends", rows that come from a source Comet scans (Parquet) are
    counted only by the loads (the observe() sits on top of the query, just before the
    write) and the chains that end in them."""
    if native is None:
        native = acceleration.wanted({})
    plan = Plan(p, safe_name(p.name))
    for s, current, named, after, _ in walk(p.file, p.steps):
        # Extracts read sources that an earlier load may have written: keep file order there.
        plan.nodes.append(StepNode(s, _op_name(s), current, named,
                                   after if writes(s) or reads(s) else ()))
    _run_dead_ends(plan)
    counted = {n.step.index: _counted_by(plan, n) for n in plan.nodes}
    if p.config.row_counts == "ends":
        # only counts that come with an extract's chain or ride on a load's write: an
        # observe() between two transforms splits Spark's whole-stage code generation
        ends = {counted[n.step.index] for n in plan.nodes if n.step.kind in ("extract", "load")}
        if native:
            ends = {c for c in ends if c is None or plan.node(c).step.kind == "load" or not any(
                plan.node(i).step.config.scans_natively()
                for i in (*plan.upstream(c), c))}
        counted = {i: c if c in ends else None for i, c in counted.items()}
    for i, n in enumerate(plan.nodes):
        observe = n.step.kind != "load" and n.step.index in counted.values()
        plan.nodes[i] = StepNode(n.step, n.op_name, n.current, n.named, n.after, observe,
                                 counted[n.step.index])
    return plan


def _run_dead_ends(plan: Plan) -> None:
    """A step whose output nothing reads (an extract kept only for its check that the source
    is there, say) still runs: the next load waits for it (else the last load)."""
    loads = [n for n in plan.nodes if n.step.kind == "load"]
    if not loads:
        return
    for n in plan.nodes:
        if n.step.kind == "load" or plan.consumers(n.step.index) or \
                any(n.step.index in m.after for m in plan.nodes):
            continue
        target = next((m for m in loads if m.step.index > n.step.index), loads[-1])
        k = plan.nodes.index(target)
        plan.nodes[k] = StepNode(target.step, target.op_name, target.current, target.named,
                                 tuple(sorted({*target.after, n.step.index})))


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
