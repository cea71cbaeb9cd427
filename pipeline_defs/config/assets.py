"""The names of the tables pipelines read and write, as Dagster will show them (plain
strings here; the Dagster layer makes AssetKeys of them).

* A written table's key is its `assetKey`, else its own name: a path's last segment without
  its extension, the table of a database or catalog, the Kafka topic. Keys do not depend on
  the working directory. Two different locations with one key are a config error naming both
  files and suggesting `assetKey`.
* One table, one writing pipeline: a table written by several pipelines is a config error
  naming them (Dagster keeps one definition, and one history, per asset); other pipelines
  read it, which links them in the lineage graph. (One pipeline may write a table twice.)
* A table only read is a source, keyed `sources/<name>`; two different sources with one name
  are told apart by their location (`sources/<storage>/<location parts>`).
* An extract of a written table depends on that table's asset."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline_defs.common.errors import Problem
from pipeline_defs.config.params import DATE, SqlSpec, substitute_config
from pipeline_defs.config.types import LoadedPipeline, LoadedStep

Key = tuple[str, ...]


def key_part(text: str) -> str:
    """Letters, digits and _ (what Dagster's UI and selection syntax read without quoting)."""
    out = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_") or "unnamed"
    return out if not out[0].isdigit() else f"_{out}"


def normalized(location: str) -> str:
    """One spelling per location: `a/./b/` and `a/b` are the same table."""
    if "://" in location:
        return location.rstrip("/")
    return os.path.normpath(location)


def uri(location: str) -> str:
    """Where a table is, absolute: a local path resolved, URLs and tables as written."""
    if "://" in location or "/" not in location or location.startswith("models:/"):
        return location  # (models:/NAME: a model in MLflow's registry)
    return "file://" + os.path.abspath(location)


def _qualified(location: str) -> Key:
    scheme, sep, rest = location.partition("://")
    if not sep:
        scheme, rest = ("file", location) if "/" in location else ("table", location)
    parts = [key_part(p) for p in re.split(r"[/.]", rest) if p and p not in (".", "..")]
    return ("sources", key_part(scheme), *parts)


@dataclass
class Table:
    key: Key
    location: str  # as the file writes it (after parameters)
    catalog_name: str | None = None  # its name in its database or broker, if it has one
    writers: list[tuple[str, LoadedStep]] = field(default_factory=list)  # (pipeline, step)
    readers: list[tuple[str, LoadedStep]] = field(default_factory=list)

    @property
    def owner(self) -> str | None:
        return self.writers[0][0] if self.writers else None


@dataclass
class AssetNames:
    tables: dict[str, Table] = field(default_factory=dict)  # normalized location -> table
    dated: dict[str, str] = field(default_factory=dict)
    """A location that holds the run's date -> the table's location without it."""

    def of(self, step: LoadedStep) -> Table | None:
        loc = step.config.location()
        if not loc:
            return None
        norm = normalized(loc)
        return self.tables.get(self.dated.get(norm, norm))


def _undated(p: LoadedPipeline, s: LoadedStep) -> str | None:
    """The step's location without the part that the run's date changes (`.../orders/
    ${DATE}` is the table `.../orders`, whatever the day), or None when no date is in it."""
    if "${DATE" not in json.dumps(s.template) or not hasattr(s.config, "sql_fields"):
        return None
    model = type(s.config)
    try:
        other = model.model_validate(substitute_config(
            s.template, {**p.params, DATE: "1999-12-31"}, None, SqlSpec.of(model)
        )).location()
    except Exception:  # noqa: BLE001 - the step's own problems are reported elsewhere
        return None
    here = s.config.location()
    if not here or other == here:
        return None
    common = []
    for a, b in zip(here.rstrip("/").split("/"), other.rstrip("/").split("/"), strict=False):
        if a != b:
            break
        common.append(a)
    return "/".join(common) or None


def writes(s: LoadedStep) -> bool:
    """The step writes an asset: a load's table, a trained model."""
    return s.kind == "load" or getattr(s.config, "writes_asset", False)


def reads(s: LoadedStep) -> bool:
    """The step reads an asset: an extract's table, a model scored with."""
    return s.kind == "extract" or getattr(s.config, "reads_asset", False)


def _name_of(location: str) -> str | None:
    tail = location.rstrip("/").rsplit("/", 1)[-1]
    stem = tail.rsplit(".", 1)[0] if "." in tail.lstrip(".") else tail
    return stem.lstrip(".") or None


def asset_names(pipelines: Iterable[LoadedPipeline]) -> tuple[AssetNames, list[Problem]]:
    names, problems = AssetNames(), []
    ordered = sorted(pipelines, key=lambda p: p.file)
    by_key: dict[Key, tuple[str, LoadedPipeline, LoadedStep]] = {}
    for p in ordered:
        for s in p.steps:
            loc = s.config.location()
            if not writes(s) or not loc:
                continue
            norm = normalized(loc)
            undated = _undated(p, s)
            if undated:
                names.dated[norm] = norm = normalized(undated)
                loc = undated
            override = getattr(s.config, "asset_key", None)
            name = _name_of(undated) if undated else s.config.table_name()
            default = s.config.default_asset_key()
            key = tuple(override) if override else tuple(map(key_part, default)) if default \
                else (key_part(name or s.name or f"s{s.index}"),)
            table = names.tables.setdefault(norm, Table(key, loc, _catalog_name(s)))
            if override and table.key != key:
                problems.append(Problem(p.file, f"assetKey {list(key)} names {loc}, which "
                                        f"{table.owner} writes as {list(table.key)}.", s.index,
                                        s.label, "config.assetKey", "One table is one asset: "
                                        "use the same assetKey, or none."))
            if table.writers and table.owner != p.name:
                _, first = table.writers[0]
                problems.append(Problem(
                    p.file, f"writes {loc}, which pipeline '{table.owner}' writes too (step "
                    f"{first.index}).", s.index, s.label, "config",
                    "A table is one asset with one writing pipeline: write it from one "
                    "pipeline, and read it from the others."))
            table.writers.append((p.name, s))
            other = by_key.get(table.key)
            if other and other[0] != norm:
                _, op, os_ = other
                problems.append(Problem(
                    p.file, f"writes {loc} as asset {'/'.join(table.key)}, the key of "
                    f"{os_.config.location()} written by {op.file} (step {os_.index}).",
                    s.index, s.label, "config.assetKey", "Two tables cannot share an asset "
                    "key: give one of the loads \"assetKey\": [\"...\"]."))
            by_key.setdefault(table.key, (norm, p, s))
    _sources(names, ordered)
    return names, problems


def _sources(names: AssetNames, ordered: list[LoadedPipeline]) -> None:
    """Readers of written tables; tables only read become sources."""
    sources: dict[str, list[tuple[str, LoadedStep]]] = {}
    for p in ordered:
        for s in p.steps:
            loc = s.config.location()
            if not reads(s) or not loc or not s.config.table_name():
                continue
            table = names.of(s)
            if table is None and (undated := _undated(p, s)):
                table = names.tables.get(normalized(undated))
            if table is not None:
                table.readers.append((p.name, s))
            else:
                sources.setdefault(normalized(loc), []).append((p.name, s))
    short: dict[str, list[str]] = {}
    for norm, readers in sources.items():
        short.setdefault(key_part(readers[0][1].config.table_name()), []).append(norm)
    for name, locations in short.items():
        for norm in locations:
            readers = sources[norm]
            loc = readers[0][1].config.location()
            own = readers[0][1].config.default_asset_key()
            key = tuple(map(key_part, own)) if own else ("sources", name) \
                if len(locations) == 1 else _qualified(loc)
            names.tables[norm] = Table(key, loc, _catalog_name(readers[0][1]), [], readers)


def _catalog_name(s: LoadedStep) -> str | None:
    name = getattr(s.config, "catalog_name", None)
    return name() if name else None
