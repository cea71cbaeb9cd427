"""Plain data types of a loaded pipeline, shared by the loader and the dataflow check (which
then need not import each other)."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline_defs.config.model import PipelineConfig, StepModel


class Catalog(Protocol):
    """What config/ needs to know about methods (the step registry provides it)."""

    def model_for(self, kind: str, method: str) -> type[StepModel] | None: ...
    def methods(self) -> Iterable[tuple[str, str]]: ...
    def streams(self, kind: str, method: str) -> bool: ...
    def secret_fields(self, kind: str, method: str) -> tuple[str, ...]: ...


@dataclass(frozen=True)
class LoadedStep:
    index: int  # 1-based
    kind: str
    method: str
    name: str | None
    description: str | None
    config: StepModel
    raw_config: dict
    template: dict = field(default_factory=dict)
    """The config as the file writes it, ${param} placeholders unresolved (a run may set
    other parameter values)."""
    condition: str | None = None
    retries: Any = None  # config.orchestration.Retries
    pool: str | None = None
    owners: tuple[str, ...] | None = None  # a load's owners of its table
    tags: dict[str, str] | None = None  # a load's tags of its table
    line: int | None = None  # where the step begins in its file (1-based)
    sql: str | None = None  # a SQL file's clause that made the step, as written

    @property
    def label(self) -> str:
        return f"{self.kind}.{self.method}"


@dataclass(frozen=True)
class LoadedPipeline:
    file: str
    config: PipelineConfig
    steps: list[LoadedStep]
    params: dict[str, str] = field(default_factory=dict)
    """Every parameter's value as loaded, `DATE` (the run's date) included."""
    overrides: dict[str, str] = field(default_factory=dict)
    """The values given when loading (`--param`, the component's params), not defaults."""

    def dated(self, name: str) -> bool:
        """Does the default of param `name` depend on the run's date?"""
        return "${DATE" in str(self.config.params.get(name, "")) if self.config else False

    @property
    def name(self) -> str:
        return self.config.name


@dataclass(frozen=True)
class UnparsedConfig:
    """Stands in for the config of a step that has problems (unknown method, unknown keys),
    so that the dataflow check still sees what it registers and reads, and one `validate`
    reports every problem of the file."""

    register_as: str | None
    reads: bool
    partial: Any = None  # the method's model built from the fields as written, if any

    def named_inputs(self, registered=()) -> list[tuple[str, str]]:
        try:
            return list(self.partial.named_inputs(registered)) if self.partial else []
        except Exception:  # noqa: BLE001 - malformed fields name nothing
            return []

    def reads_current(self) -> bool:
        return self.reads
