"""The method registry: a method's registration says everything the rest of the product needs.

    @step("load", "toDeltaLake", ToDeltaLake, asset_kind="delta")
    def to_delta_lake(df, cfg, ctx) -> LoadResult: ...

    @stream_writer("toDeltaLake")
    def write_delta_stream(df, cfg, ctx, sink) -> StreamingQuery: ...

The static checks, the streaming runtime, the Dagster layer, the docs and `pipeline list` read
it; none of them switch on method names. A connector is one module of registrations."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from pydantic import SecretStr

from pipeline_defs.common.errors import RegistryError
from pipeline_defs.config.model import StepModel

KINDS = ("extract", "transform", "validate", "load")
_BUILTIN_MODULES = ("files", "delta", "cdc", "jdbc", "kafka", "transform", "reshape",
                    "profile", "validate", "ml")


@dataclass(frozen=True)
class StepDef:
    kind: str
    method: str
    model: type[StepModel]
    fn: Callable
    """The batch function: (current DataFrame or None, config, StepContext) -> DataFrame;
    a load returns a LoadResult."""
    row_level: bool = True
    """A transform or validation that works row by row, so it applies to every micro-batch of
    a stream; False for ones that need the whole dataset."""
    stream_read: Callable | None = None
    """Extracts that read a stream: (config, StepContext) -> streaming DataFrame."""
    stream_write: Callable | None = None
    """Loads that write a stream: (DataFrame, config, StepContext, Sink) -> StreamingQuery."""
    asset_kind: str | Callable[[StepModel], str] | None = None
    """What an extract reads or a load writes, as a Dagster kind: "delta", "postgres", or a
    function of the config (a file's format)."""
    aliases: tuple[str, ...] = ()
    """Other names files may use for the method (e.g. the improvement plan's
    repartitionData): one registration, one entry in the docs."""

    @property
    def streams(self) -> bool:
        """Works in a streaming pipeline."""
        if self.kind == "extract":
            return self.stream_read is not None
        if self.kind == "load":
            return self.stream_write is not None
        return self.row_level

    def kind_of(self, cfg: StepModel) -> str | None:
        return self.asset_kind(cfg) if callable(self.asset_kind) else self.asset_kind

    @property
    def secret_fields(self) -> tuple[str, ...]:
        """The config keys holding credentials: the model's SecretStr fields."""
        return secret_fields(self.model)

    @property
    def summary(self) -> str:
        doc = (self.model.__doc__ or self.fn.__doc__ or "").strip()
        return " ".join(doc.split("\n\n")[0].split())


def secret_fields(model: type[StepModel]) -> tuple[str, ...]:
    out = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if ann is SecretStr or SecretStr in getattr(ann, "__args__", ()):
            out.append(f.alias or name)
    return tuple(out)


class Registry:
    def __init__(self) -> None:
        self._defs: dict[tuple[str, str], StepDef] = {}
        self._aliases: dict[tuple[str, str], str] = {}  # (kind, alias) -> method

    def _key(self, kind: str, method: str) -> tuple[str, str]:
        return kind, self._aliases.get((kind, method), method)

    def register(self, d: StepDef) -> None:
        if d.kind not in KINDS:
            raise RegistryError(f"{d.fn.__qualname__}: kind '{d.kind}' is not one of {KINDS}.")
        for name in (d.method, *d.aliases):
            if self._key(d.kind, name) in self._defs:
                other = self._defs[self._key(d.kind, name)].fn
                raise RegistryError(f"{d.kind}.{name} is registered twice: by "
                                    f"{other.__module__}.{other.__qualname__} and "
                                    f"{d.fn.__module__}.{d.fn.__qualname__}.")
        if not issubclass(d.model, StepModel):
            raise RegistryError(f"{d.kind}.{d.method}: its model must subclass StepModel.")
        self._defs[(d.kind, d.method)] = d
        self._aliases.update({(d.kind, a): d.method for a in d.aliases})

    # ------------------------------------------------------------ decorators
    def step(self, kind: str, method: str, model: type[StepModel], *,
             row_level: bool | None = None,
             asset_kind: str | Callable[[StepModel], str] | None = None,
             aliases: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
        """Register `fn(df, cfg, ctx)` as method `kind.method` configured by `model`.
        `row_level` (transforms and validations): it applies row by row, so also to streams;
        transforms are unless they say otherwise, validations must say so. `aliases`: other
        names of the same method."""
        def deco(fn: Callable) -> Callable:
            self.register(StepDef(kind, method, model, fn,
                                  row_level if row_level is not None else kind == "transform",
                                  asset_kind=asset_kind, aliases=aliases))
            return fn
        return deco

    def stream_reader(self, method: str) -> Callable[[Callable], Callable]:
        """`fn(cfg, ctx) -> DataFrame` reads extract `method` as a stream."""
        return self._attach("extract", method, "stream_read")

    def stream_writer(self, method: str) -> Callable[[Callable], Callable]:
        """`fn(df, cfg, ctx, sink) -> StreamingQuery` writes a stream for load `method`."""
        return self._attach("load", method, "stream_write")

    def _attach(self, kind: str, method: str, what: str) -> Callable[[Callable], Callable]:
        def deco(fn: Callable) -> Callable:
            d = self._defs.get((kind, method))
            if d is None:
                raise RegistryError(f"{fn.__qualname__}: register {kind}.{method} with @step "
                                    "before its streaming form.")
            if getattr(d, what) is not None:
                raise RegistryError(f"{kind}.{method} has a {what} already.")
            self._defs[(kind, method)] = replace(d, **{what: fn})
            return fn
        return deco

    def extended(self) -> Registry:
        """A copy to add methods to (a plugin, a test) without changing this registry."""
        out = Registry()
        out._defs = dict(self._defs)
        out._aliases = dict(self._aliases)
        return out

    # ------------------------------------------------------------ the catalog config/ reads
    def model_for(self, kind: str, method: str) -> type[StepModel] | None:
        d = self._defs.get(self._key(kind, method))
        return d.model if d else None

    def methods(self) -> Iterable[tuple[str, str]]:
        """Every name a file may use, aliases included."""
        return [*self._defs, *self._aliases]

    def streams(self, kind: str, method: str) -> bool:
        d = self._defs.get(self._key(kind, method))
        return bool(d and d.streams)

    def secret_fields(self, kind: str, method: str) -> tuple[str, ...]:
        d = self._defs.get(self._key(kind, method))
        return d.secret_fields if d else ()

    # ------------------------------------------------------------ lookups
    def get(self, kind: str, method: str) -> StepDef:
        return self._defs[self._key(kind, method)]

    def all(self) -> list[StepDef]:
        order = {k: i for i, k in enumerate(KINDS)}
        return sorted(self._defs.values(), key=lambda d: (order[d.kind], d.method))


REGISTRY = Registry()
step = REGISTRY.step
stream_reader = REGISTRY.stream_reader
stream_writer = REGISTRY.stream_writer


def builtin_registry() -> Registry:
    """The registry with every built-in method imported."""
    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"pipeline_defs.steps.{mod}")
    return REGISTRY
