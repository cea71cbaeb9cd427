"""The method registry: `@step(kind, method, Model)` on a function is all a method needs."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pipeline_defs.config.model import StepModel
from pipeline_defs.errors import RegistryError

KINDS = ("extract", "transform", "validate", "load")
_BUILTIN_MODULES = ("extract", "transform", "validate", "load", "profile")


@dataclass(frozen=True)
class StepDef:
    kind: str
    method: str
    model: type[StepModel]
    fn: Callable
    streams: bool = False
    """It works in a streaming pipeline: an extract that reads a stream, a load that writes
    one, a transform or validation that applies row by row (per micro-batch)."""

    @property
    def summary(self) -> str:
        doc = (self.model.__doc__ or self.fn.__doc__ or "").strip()
        return " ".join(doc.split("\n\n")[0].split())


class Registry:
    def __init__(self) -> None:
        self._defs: dict[tuple[str, str], StepDef] = {}

    def register(self, kind: str, method: str, model: type[StepModel], fn: Callable,
                 streams: bool = False) -> None:
        if kind not in KINDS:
            raise RegistryError(f"{fn.__qualname__}: kind '{kind}' is not one of {KINDS}.")
        if (kind, method) in self._defs:
            other = self._defs[(kind, method)].fn
            raise RegistryError(f"{kind}.{method} is registered twice: by {other.__module__}."
                                f"{other.__qualname__} and {fn.__module__}.{fn.__qualname__}.")
        if not issubclass(model, StepModel):
            raise RegistryError(f"{kind}.{method}: its model must subclass StepModel.")
        self._defs[(kind, method)] = StepDef(kind, method, model, fn, streams)

    # Catalog protocol (what config/ needs)
    def model_for(self, kind: str, method: str) -> type[StepModel] | None:
        d = self._defs.get((kind, method))
        return d.model if d else None

    def methods(self) -> Iterable[tuple[str, str]]:
        return list(self._defs)

    def streams(self, kind: str, method: str) -> bool:
        d = self._defs.get((kind, method))
        return bool(d and d.streams)

    def get(self, kind: str, method: str) -> StepDef:
        return self._defs[(kind, method)]

    def all(self) -> list[StepDef]:
        order = {k: i for i, k in enumerate(KINDS)}
        return sorted(self._defs.values(), key=lambda d: (order[d.kind], d.method))


REGISTRY = Registry()


def step(kind: str, method: str, model: type[StepModel], *, streams: bool | None = None
         ) -> Callable[[Callable], Callable]:
    """Register `fn(df, cfg, ctx)` as method `kind.method` configured by `model`.

    `streams`: whether it works in a streaming pipeline (default: transforms do, being row by
    row unless they say otherwise; extracts, validations and loads must declare it)."""
    def deco(fn: Callable) -> Callable:
        REGISTRY.register(kind, method, model, fn,
                          streams if streams is not None else kind == "transform")
        return fn
    return deco


def builtin_registry() -> Registry:
    """The registry with every built-in method imported."""
    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"pipeline_defs.steps.{mod}")
    return REGISTRY
