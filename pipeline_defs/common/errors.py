"""The project's exceptions. Every message says where, what, and how to fix it."""
from __future__ import annotations

from dataclasses import dataclass


class PipelineError(Exception):
    """Base of every error this project raises on purpose."""

    transient: bool = False
    """Would the same step likely succeed if tried again (a server down, restarting or busy)?
    Set by the code that raises it, from what failed (an SQLSTATE, an HTTP status, an
    exception type), never from the message's words."""

    def retriable(self, yes: bool = True) -> PipelineError:
        """This error, marked as one a retry may cure (`yes`)."""
        self.transient = yes
        return self


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a pipeline file, found before anything runs."""

    file: str
    message: str
    step: int | None = None  # 1-based, as a person counts
    method: str | None = None  # "transform.joinDataFrames"
    field: str | None = None  # "config.joinConditions"
    fix: str | None = None

    def __str__(self) -> str:
        where = self.file
        if self.step is not None:
            where += f", step {self.step}"
            if self.method:
                where += f" ({self.method})"
        if self.field:
            where += f", {self.field}"
        text = f"{where}: {self.message}"
        if self.fix:
            text += f" {self.fix}"
        return text


class ConfigError(PipelineError):
    """A pipeline file is wrong. Holds every problem found, not just the first."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        n = len(self.problems)
        head = "1 problem" if n == 1 else f"{n} problems"
        super().__init__(f"{head}:\n" + "\n".join(f"  - {p}" for p in self.problems))


class DataFrameResolutionError(ConfigError):
    """A step names a DataFrame that no earlier step registers."""


class RegistryError(PipelineError):
    """A method was registered twice or wrongly."""


class StepExecutionError(PipelineError):
    """A step failed while running. Names pipeline, step and method; config is sanitized."""

    def __init__(self, pipeline: str, step: int, method: str, reason: str,
                 config: dict | None = None):
        self.pipeline, self.step, self.method, self.reason = pipeline, step, method, reason
        self.config = config or {}
        super().__init__(f"pipeline '{pipeline}', step {step} ({method}) failed: {reason}")


class CredentialError(PipelineError):
    """A credential could not be read or is incomplete. Never contains a secret value."""


class UnsupportedError(PipelineError):
    """The configuration asks for something this version does not do yet."""
