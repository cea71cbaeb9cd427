"""Read pipeline files, substitute parameters, type every step, check the dataflow.

All problems of all files are collected and raised together as one ConfigError."""
from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel, ValidationError

from pipeline_defs.config.model import PipelineConfig, StepModel, StepSpec
from pipeline_defs.config.params import UnresolvedParameter, resolve_params, substitute
from pipeline_defs.errors import ConfigError, DataFrameResolutionError, Problem


class Catalog(Protocol):
    """What the loader needs to know about methods (the step registry provides it)."""

    def model_for(self, kind: str, method: str) -> type[StepModel] | None: ...
    def methods(self) -> Iterable[tuple[str, str]]: ...


@dataclass(frozen=True)
class LoadedStep:
    index: int  # 1-based
    kind: str
    method: str
    name: str | None
    description: str | None
    config: StepModel
    raw_config: dict

    @property
    def label(self) -> str:
        return f"{self.kind}.{self.method}"


@dataclass(frozen=True)
class LoadedPipeline:
    file: str
    config: PipelineConfig
    steps: list[LoadedStep]
    params: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.config.name


# ---------------------------------------------------------------- pydantic errors, taught
def _did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    choices = list(choices)
    for c in choices:
        if c.lower() == word.lower():
            return c
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def _aliases(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def _submodel(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model that owns the last key of `loc` (for suggestions on nested objects)."""
    current: type[BaseModel] | None = model
    for part in loc[:-1]:
        if current is None or not isinstance(part, str):
            continue
        hit = next((f for n, f in current.model_fields.items() if (f.alias or n) == part), None)
        ann = getattr(hit, "annotation", None) if hit else None
        current = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return current


def _explain(err: dict, model: type[BaseModel]) -> tuple[str, str, str]:
    """(field path, message, fix) for one pydantic error."""
    loc = tuple(err["loc"])
    path = ".".join(str(p) for p in loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        owner = _submodel(model, loc)
        known = _aliases(owner) if owner else []
        guess = _did_you_mean(str(loc[-1]), known)
        fix = f"Did you mean '{guess}'?" if guess else (
            f"Known keys: {', '.join(sorted(known))}." if known else "Remove it.")
        return path, f"unknown key '{loc[-1]}'.", fix
    if kind == "missing":
        return path, "is required but missing.", "Add it (see `pipeline schema`)."
    given = err.get("input")
    shown = json.dumps(given)[:80] if given is not None else "null"
    return path, f"{err['msg']} (got {shown}).", "See `pipeline schema` for the expected form."


def _problems_from(exc: ValidationError, model: type[BaseModel], file: str, prefix: str,
                   step: int | None = None, method: str | None = None) -> list[Problem]:
    out = []
    # Unknown keys first: "did you mean" explains the "missing" that usually follows.
    for err in sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden"):
        path, msg, fix = _explain(err, model)
        out.append(Problem(file, msg, step, method, f"{prefix}{path}" if path else prefix.rstrip("."),
                           fix))
    return out


# ---------------------------------------------------------------- one file
def _read_json(path: Path) -> dict | Problem:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return Problem(str(path), "file not found.", fix="Check the path.")
    except json.JSONDecodeError as e:
        return Problem(str(path), f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.",
                       fix="Fix the JSON syntax (a trailing comma or a missing quote?).")
    if not isinstance(data, dict):
        return Problem(str(path), "the top level must be a JSON object with name and steps.")
    return data


def _method_problem(file: str, index: int, spec: StepSpec, catalog: Catalog) -> Problem:
    known = sorted(catalog.methods())
    same_kind = [m for k, m in known if k == spec.type]
    other = [k for k, m in known if m == spec.method]
    if other:
        fix = f"'{spec.method}' is a {other[0]} method: set \"type\": \"{other[0]}\"."
    else:
        guess = _did_you_mean(spec.method, same_kind)
        fix = (f"Did you mean '{guess}'? " if guess else "") + \
              f"{spec.type} methods: {', '.join(same_kind)}."
    return Problem(file, f"unknown {spec.type} method '{spec.method}'.", index,
                   f"{spec.type}.{spec.method}", "method", fix)


def load_pipeline(path: str | Path, catalog: Catalog, overrides: Mapping[str, str] | None = None,
                  env: Mapping[str, str] | None = None, check: bool = True) -> LoadedPipeline:
    """Load one pipeline file. Raises ConfigError listing every problem found in it."""
    path = Path(path)
    file = str(path)
    data = _read_json(path)
    if isinstance(data, Problem):
        raise ConfigError([data])
    problems: list[Problem] = []

    try:
        top = PipelineConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_problems_from(e, PipelineConfig, file, "")) from None

    try:
        params = resolve_params(top.params, overrides or {}, env)
    except UnresolvedParameter as e:
        raise ConfigError([Problem(file, f"parameter default reads ${{{e.name}}}, which is not "
                                   "set.", field=e.where, fix="Set it, or give a default with "
                                   "${env:NAME:-default}.")]) from None

    steps: list[LoadedStep] = []
    for index, spec in enumerate(top.steps, start=1):
        label = f"{spec.type}.{spec.method}"
        model = catalog.model_for(spec.type, spec.method)
        if model is None:
            problems.append(_method_problem(file, index, spec, catalog))
            continue
        try:
            raw = substitute(spec.config, params, env, "config")
        except UnresolvedParameter as e:
            problems.append(Problem(file, f"placeholder ${{{e.name}}} has no value.", index,
                                    label, e.where, f"Add \"{e.name}\" to the pipeline's "
                                    f"`params`, or pass --param {e.name}=VALUE."))
            continue
        try:
            cfg = model.model_validate(raw)
        except ValidationError as e:
            problems.extend(_problems_from(e, model, file, "config.", index, label))
            continue
        for fpath, msg, fix in cfg.problems():
            problems.append(Problem(file, msg, index, label, f"config.{fpath}", fix))
        steps.append(LoadedStep(index, spec.type, spec.method, spec.name, spec.description, cfg,
                                raw))

    names = [s.name for s in steps if s.name]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        idx = [s.index for s in steps if s.name == dup]
        problems.append(Problem(file, f"step name '{dup}' is used by steps {idx}.", idx[-1],
                                field="name", fix="Give every step a distinct name."))
    for s in steps:
        if s.name and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", s.name):
            problems.append(Problem(file, f"step name '{s.name}' is not an identifier.", s.index,
                                    s.label, "name", "Use letters, digits and _ only."))
    env_now = os.environ if env is None else env
    if str(env_now.get("VAULT_REQUIRED", "")).strip().lower() in ("1", "true", "yes", "on"):
        problems.extend(literal_credentials(file, steps))
    if problems:
        raise ConfigError(problems)

    loaded = LoadedPipeline(file, top, steps, params)
    if check:
        from pipeline_defs.config.dataflow import check_dataflow
        flow_problems = check_dataflow(loaded)
        if flow_problems:
            raise DataFrameResolutionError(flow_problems)
    return loaded


CREDENTIAL_FIELDS = ("password", "accessKeyId", "secretAccessKey", "sessionToken")


def literal_credentials(file: str, steps: Iterable[LoadedStep]) -> list[Problem]:
    """Credentials written in the config (literally or through ${env:...}), which
    VAULT_REQUIRED forbids: with it, every secret comes from Vault."""
    from pipeline_defs.secrets import SECRET_KEY
    out = []
    for s in steps:
        found = [k for k in CREDENTIAL_FIELDS if s.raw_config.get(k) not in (None, "")]
        found += [f"properties.{k}" for k in (s.raw_config.get("properties") or {})
                  if SECRET_KEY.search(k)]
        out += [Problem(file, "a credential is written in the config, and Vault is required "
                        "(VAULT_REQUIRED=true).", s.index, s.label, f"config.{k}",
                        "Store it in a Vault secret and set \"credentialPath\" instead.")
                for k in found]
    return out


def pipeline_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand directories to their *.json pipeline files (the JSON Schema file excluded)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(f for f in sorted(p.glob("*.json")) if not f.name.endswith(".schema.json"))
        else:
            out.append(p)
    return out


def load_pipelines(paths: Iterable[str | Path], catalog: Catalog,
                   overrides: Mapping[str, str] | None = None) -> list[LoadedPipeline]:
    """Load many files; raise one ConfigError with the problems of all of them."""
    loaded, problems = [], []
    for f in pipeline_files(paths):
        try:
            loaded.append(load_pipeline(f, catalog, overrides))
        except ConfigError as e:
            problems.extend(e.problems)
    seen: dict[str, str] = {}
    for p in loaded:
        if p.name in seen:
            problems.append(Problem(p.file, f"pipeline name '{p.name}' is also used by "
                                    f"{seen[p.name]}.", field="name",
                                    fix="Pipeline names must be unique: rename one."))
        seen.setdefault(p.name, p.file)
    if problems:
        raise ConfigError(problems)
    return loaded
