"""What a reader gives the loader."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Document:
    """One pipeline file, read: `data` in the shape of the JSON format (name, params, steps,
    schedule, ...; validated into PipelineConfig by the loader, whatever the format) and the
    line (1-based) where each step begins in the file, for code references."""

    data: dict[str, Any]
    step_lines: list[int] = field(default_factory=list)
    step_sql: list[str] = field(default_factory=list)
    """For a SQL file: each step's clause as written (the Dagster UI shows it)."""
