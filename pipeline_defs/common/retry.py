"""Retries with exponential backoff and jitter, written once (JDBC connections, Vault)."""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class GaveUp(Exception):
    """Every attempt failed with a transient error; `last` is the last one, `attempts` the
    number made."""

    def __init__(self, last: BaseException, attempts: int):
        super().__init__(str(last))
        self.last, self.attempts = last, attempts


def with_backoff(fn: Callable[[], T], transient: Callable[[BaseException], bool],
                 retries: int, first_delay_s: float, sleep: Callable[[float], None] = time.sleep
                 ) -> T:
    """fn(), retried up to `retries` times while `transient(error)` holds, waiting
    first_delay_s, then twice as long each time (plus up to 25% jitter). A non-transient
    error is raised at once; when the retries run out, GaveUp carries the last error."""
    delay = first_delay_s
    for attempt in range(retries + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - `transient` decides
            if not transient(e):
                raise
            if attempt == retries:
                raise GaveUp(e, attempt + 1) from e
            sleep(delay * (1 + random.random() / 4))
            delay *= 2
    raise AssertionError("unreachable")
