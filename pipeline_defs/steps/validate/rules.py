"""What a validation is made of: its config (action and tolerance), its rules (row rules: a
boolean "violates" column each; dataset rules: an aggregate and a test of its value), their
results, and where quarantined rows go. Used by the batch engine and by streams alike."""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field
from pyspark.sql import Column
from pyspark.sql import functions as F

from pipeline_defs.common.errors import PipelineError
from pipeline_defs.config.model import StepModel
from pipeline_defs.steps.context import StepContext

RULES_COL, REASON_COL, RUN_COL, TIME_COL = "_dq_rules", "_dq_reason", "_dq_run_id", "_dq_time"


class ValidationFailed(PipelineError):
    """Data broke a validation rule whose action is `fail`."""


@dataclass(frozen=True)
class RowRule:
    name: str  # e.g. "not_null(amount)"
    text: str  # the rule as a person reads it
    violates: Column  # true for a violating row
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class DatasetRule:
    name: str
    text: str
    value: Callable[[Column], Column]
    """The aggregate, given which rows the rule sees (those earlier drop/quarantine steps of
    its group kept): e.g. `lambda seen: F.count(F.when(seen, 1))`."""
    judge: Callable[[Any, int], tuple[int, str]]  # (value, rows) -> (violations, detail)
    columns: tuple[str, ...] = ()


@dataclass
class RuleResult:
    name: str
    text: str
    columns: tuple[str, ...]
    violations: int
    detail: str = ""
    samples: list[dict] = field(default_factory=list)


Action = Literal["fail", "warn", "drop", "quarantine"]


class Validator(StepModel):
    on_failure: Action = Field("fail", description="fail: the run fails, nothing downstream is "
                               "loaded; warn: the check fails with WARN and the run goes on; "
                               "drop: violating rows are removed; quarantine: they are written "
                               "to the quarantine table with the rules they broke.")
    max_violations: int | None = Field(None, ge=0, description="Up to this many violating "
                                       "rows still count as a pass.")
    max_violation_fraction: float | None = Field(None, ge=0, le=1, description="Up to this "
                                                 "fraction of rows violating still passes.")
    quarantine_path: str | None = Field(None, description="Delta table for quarantined rows "
                                        "(default <quarantine root>/<pipeline>/<step>).")
    passes_filters = True  # rows go on unchanged or filtered: later filters still reach the source
    keeps_rows_identity = True
    row_actions: ClassVar[bool] = True  # drop/quarantine make sense (False: dataset rules)

    def keeps_rows(self) -> bool:
        return self.on_failure in ("fail", "warn")

    def problems(self):
        if self.on_failure in ("drop", "quarantine") and not type(self).row_actions:
            return [("onFailure", f"'{self.on_failure}' needs row rules; this validator "
                     "checks the whole dataset.", "Use fail or warn.")]
        return []


def passes(cfg: Validator, violations: int, rows: int) -> bool:
    if violations == 0:
        return True
    if cfg.max_violations is not None and violations <= cfg.max_violations:
        return True
    return bool(cfg.max_violation_fraction is not None and rows and
                violations / rows <= cfg.max_violation_fraction)


def quarantine_location(cfg: Validator, ctx: StepContext) -> str:
    if cfg.quarantine_path:
        return cfg.quarantine_path
    root = ctx.quarantine_root or "quarantine"
    op = re.sub(r"[^A-Za-z0-9_]+", "_", ctx.op_name or f"step{ctx.step}")
    return f"{root.rstrip('/')}/{re.sub(r'[^A-Za-z0-9_]+', '_', ctx.pipeline)}/{op}"


def flag(rules: list[RowRule]) -> Column:
    return F.array_compact(F.array(*[F.when(r.violates, F.lit(r.name)) for r in rules]))
