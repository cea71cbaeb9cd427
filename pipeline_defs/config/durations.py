"""Durations and triggers as the format writes them: 90, "90", "5 seconds", "10 minutes"."""
from __future__ import annotations

import re
from typing import Any

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|secs?|seconds?|m|mins?|"
                       r"minutes?|h|hours?|d|days?|w|weeks?)?\s*", re.I)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
TRIGGER_WORDS = ("availableNow", "once", "continuous")


class DurationError(ValueError):
    """Not a duration the format accepts."""


def seconds(value: str | int | float | None) -> float | None:
    """\"90\", 90, \"5 seconds\", \"10 minutes\", \"1 hour\", \"2 days\" -> seconds (None stays
    None)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.fullmatch(str(value))
    if not m:
        raise DurationError(f"'{value}' is not a duration; write e.g. \"30 seconds\" or "
                            "\"10 minutes\"")
    n, unit = float(m.group(1)), (m.group(2) or "s").lower()
    if unit.startswith(("ms", "milli")):
        return n / 1000
    return n * _UNIT_SECONDS[unit[0]]


def trigger_kwargs(trigger: str | None) -> dict[str, Any]:
    """The original's trigger strings as DataStreamWriter.trigger() arguments."""
    if trigger is None:
        return {}
    t = trigger.strip()
    if t.lower() in ("availablenow", "available_now", "available-now"):
        return {"availableNow": True}
    if t.lower() == "once":
        return {"once": True}
    if t.lower().startswith("continuous"):
        rest = t.split(None, 1)[1] if " " in t else "1 second"
        seconds(rest)
        return {"continuous": rest}
    try:
        seconds(t)
    except DurationError:
        raise DurationError(f"'{trigger}' is not a trigger; write a processing interval such "
                            "as \"5 seconds\", or availableNow, or once") from None
    return {"processingTime": t}
