"""Load pipeline files (read by the reader of their format, config/readers/), substitute
parameters, type every step, check the dataflow.

All problems of all files are collected and raised together as one ConfigError."""
from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from pydantic import BaseModel, ValidationError

from pipeline_defs.common.errors import ConfigError, DataFrameResolutionError, Problem
from pipeline_defs.common.secrets import SECRET_KEY
from pipeline_defs.config.assets import asset_names
from pipeline_defs.config.conditions import problems as condition_problems
from pipeline_defs.config.dataflow import check_columns, check_dataflow, check_streaming
from pipeline_defs.config.model import PipelineConfig, StepModel, StepSpec
from pipeline_defs.config.params import (
    BadDate,
    SqlSpec,
    UnresolvedParameter,
    UnsafeInSql,
    resolve_params,
    substitute,
    substitute_config,
)
from pipeline_defs.config.readers import pipeline_files, read
from pipeline_defs.config.types import Catalog, LoadedPipeline, LoadedStep, UnparsedConfig


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
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    kind = err["type"]
    if kind == "extra_forbidden":
        owner = _submodel(model, loc)
        known = _aliases(owner) if owner else []
        guess = _did_you_mean(str(loc[-1]), known)
        fix = f"Did you mean '{guess}'?" if guess else (
            f"Known keys: {', '.join(sorted(known))}." if known else "Remove it.")
        return path, f"unknown key '{loc[-1]}'.", fix
    if kind == "value_error" and isinstance(err.get("ctx", {}).get("error"), ValueError):
        return path, f"{err['ctx']['error']}.", ""
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
        out.append(Problem(file, msg, step, method,
                           f"{prefix}{path}" if path else prefix.rstrip("."), fix or None))
    return out


# ---------------------------------------------------------------- one file
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
                  env: Mapping[str, str] | None = None, check: bool = True,
                  date: str | None = None) -> LoadedPipeline:
    """Load one pipeline file. Raises ConfigError listing every problem found in it: every
    check runs on everything that parsed, so a problem in one step hides none elsewhere."""
    path = Path(path)
    file = str(path)
    doc = read(path)
    if isinstance(doc, Problem | list):
        raise ConfigError(doc if isinstance(doc, list) else [doc])
    data = doc.data
    problems: list[Problem] = []
    raw_steps = data.get("steps")
    per_step = isinstance(raw_steps, list) and bool(raw_steps)

    # The top level alone (each step is checked on its own below).
    top_data = {**data, "steps": [{"type": "extract", "method": "-"}]} if per_step else data
    try:
        top: PipelineConfig | None = PipelineConfig.model_validate(top_data)
    except ValidationError as e:
        problems += _problems_from(e, PipelineConfig, file, "")
        top = None

    params: dict[str, str] = {}
    try:
        defaults = top.params if top else _plain_params(data.get("params"))
        params = resolve_params(defaults, overrides or {}, env, date)
        if top and top.sensors:  # without a triggering file: the watched directory
            params.setdefault(TRIGGER_FILE, top.sensors[0].path)
            params.setdefault(TRIGGER_NAME, top.sensors[0].path.rstrip("/").rsplit("/", 1)[-1])
    except UnresolvedParameter as e:
        problems.append(Problem(file, f"parameter default reads ${{{e.name}}}, which is not "
                                "set.", field=e.where, fix="Set it, or give a default with "
                                "${env:NAME:-default}."))
    except BadDate as e:
        problems.append(Problem(file, f"{e}.", field="params", fix="Dates are yyyy-MM-dd; "
                                "placeholders ${DATE}, ${DATE-1}, ${DATE:yyyyMMdd}."))

    if top is not None:
        top, found = _top_level_params(file, top, params, env)
        problems += found

    steps: list[LoadedStep] = []  # the steps that parsed
    seen: list[LoadedStep] = []  # every step, with stand-ins, for the dataflow check
    for index, raw in enumerate(raw_steps if per_step else [], start=1):
        loaded, found = _load_step(file, index, raw, catalog, params, env)
        problems += found
        if loaded is not None:
            seen.append(loaded)
            if not found:
                steps.append(loaded)

    lines = doc.step_lines
    steps = [replace(s, line=lines[s.index - 1]) if s.index <= len(lines) else s for s in steps]
    steps = [replace(s, sql=doc.step_sql[s.index - 1]) if s.index <= len(doc.step_sql) else s
             for s in steps]
    problems += _step_problems(file, steps, params)
    env_now = os.environ if env is None else env
    if str(env_now.get("VAULT_REQUIRED", "")).strip().lower() in ("1", "true", "yes", "on"):
        problems.extend(literal_credentials(file, steps, catalog))
    flow: list[Problem] = []
    if check:
        problems += check_columns(file, seen)
        flow = check_dataflow(file, seen)
        mode = top.mode if top else data.get("mode")
        if mode == "streaming":
            flow += check_streaming(file, seen, catalog)
    if problems or flow:
        everything = sorted(problems + flow, key=lambda p: p.step or 0)  # stable: file order
        if doc.step_sql:  # a SQL file: where the step's clause is, as file:line
            everything = [replace(p, file=f"{p.file}:{lines[p.step - 1]}")
                          if p.step and p.step <= len(lines) and p.file == file else p
                          for p in everything]
        raise (ConfigError if problems else DataFrameResolutionError)(everything)
    return LoadedPipeline(file, top, steps, params, dict(overrides or {}))


def _top_level_params(file: str, top: PipelineConfig, params: Mapping[str, str],
                      env: Mapping[str, str] | None) -> tuple[PipelineConfig, list[Problem]]:
    """${name} placeholders in the top-level paths (quarantineRoot,
    streaming.checkpointRoot), filled with the values the file is loaded with."""
    problems: list[Problem] = []

    def fill(value: str | None, where: str) -> str | None:
        if value is None or "${" not in value:
            return value
        try:
            return substitute(value, params, env, where)
        except UnresolvedParameter as e:
            problems.append(Problem(file, f"placeholder ${{{e.name}}} has no value.",
                                    field=where, fix="Add it to \"params\" or pass --param."))
        except BadDate as e:
            problems.append(Problem(file, f"{e}.", field=where))
        return value
    update = {"quarantine_root": fill(top.quarantine_root, "quarantineRoot")}
    if top.streaming is not None:
        update["streaming"] = top.streaming.model_copy(update={"checkpoint_root": fill(
            top.streaming.checkpoint_root, "streaming.checkpointRoot")})
    return top.model_copy(update=update), problems


def _step_problems(file: str, steps: list[LoadedStep], params: Mapping[str, str]
                   ) -> list[Problem]:
    """Step names (distinct identifiers) and conditions (parse, names that exist)."""
    problems: list[Problem] = []
    names = [s.name for s in steps if s.name]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        idx = [s.index for s in steps if s.name == dup]
        problems.append(Problem(file, f"step name '{dup}' is used by steps {idx}.", idx[-1],
                                field="name", fix="Give every step a distinct name."))
    for s in steps:
        if s.name and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", s.name):
            problems.append(Problem(file, f"step name '{s.name}' is not an identifier.", s.index,
                                    s.label, "name", "Use letters, digits and _ only."))
    for s in steps:
        if s.condition is not None:
            earlier = {e.name for e in steps if e.name and e.index < s.index}
            for msg in condition_problems(s.condition, earlier, params):
                problems.append(Problem(file, msg + ".", s.index, s.label, "condition",
                                        "See \"condition\" in docs/orchestration.md."))
    return problems


TRIGGER_FILE, TRIGGER_NAME = "trigger.file", "trigger.name"
_PARAM_FIX = ("In SQL a value is a literal: quote the placeholder ('${name}') for text and "
              "dates, or pass one number or true/false; a column or table name cannot come "
              "from a value (except in a field that is a name, such as a JDBC `table`). Dates "
              "are yyyy-MM-dd.")
_NAME_FIX = ("Pass a name such as sales_2024 or analytics.orders; for other characters, quote "
             "the name in the file (\"${name}\" for PostgreSQL, `${name}` for MySQL).")


def _param_fix(e: Exception) -> str:
    return _NAME_FIX if getattr(e, "in_name", False) else _PARAM_FIX


def _plain_params(value) -> dict[str, str]:
    """The file's params when the top level failed to parse (best effort, for the steps)."""
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items() if isinstance(v, str)}
    return {}


def _load_step(file: str, index: int, raw, catalog: Catalog, params: dict[str, str],
               env: Mapping[str, str] | None) -> tuple[LoadedStep | None, list[Problem]]:
    """(the step, or a stand-in carrying what it registers and reads; its problems)."""
    if not isinstance(raw, dict):
        return None, [Problem(file, "a step must be a JSON object with type, method and "
                              "config.", index, field="steps")]
    problems: list[Problem] = []
    try:
        spec = StepSpec.model_validate(raw)
    except ValidationError as e:
        label = f"{raw.get('type')}.{raw.get('method')}"
        problems += _problems_from(e, StepSpec, file, "", index, label)
        known = {k: raw[k] for k in ("type", "method", "name", "description", "config")
                 if k in raw and isinstance(raw[k], str | dict)}
        try:
            spec = StepSpec.model_validate(known)
        except ValidationError:
            return _stand_in(index, raw, None), problems
    label = f"{spec.type}.{spec.method}"
    model = catalog.model_for(spec.type, spec.method)
    if model is None:
        problems.append(_method_problem(file, index, spec, catalog))
        return _stand_in(index, spec.config, None, spec), problems
    try:
        cfg_raw = substitute_config(spec.config, params, env, SqlSpec.of(model))
    except UnresolvedParameter as e:
        problems.append(Problem(file, f"placeholder ${{{e.name}}} has no value.", index,
                                label, e.where, f"Add \"{e.name}\" to the pipeline's "
                                f"`params` (or the step's `parameters`), or pass --param "
                                f"{e.name}=VALUE."))
        return _stand_in(index, spec.config, model, spec), problems
    except (BadDate, UnsafeInSql) as e:
        problems.append(Problem(file, f"{e}.", index, label, getattr(e, "where", "config"),
                                _param_fix(e)))
        return _stand_in(index, spec.config, model, spec), problems
    try:
        cfg = model.model_validate(cfg_raw)
    except ValidationError as e:
        problems += _problems_from(e, model, file, "config.", index, label)
        return _stand_in(index, cfg_raw, model, spec), problems
    for fpath, msg, fix in cfg.problems():
        problems.append(Problem(file, msg, index, label, f"config.{fpath}", fix))
    if spec.type == "load" and cfg.cache:
        problems.append(Problem(file, "a load's output is a table, not a DataFrame to cache.",
                                index, label, "config.cache", "Put \"cache\": true on the "
                                "step whose output later steps read more than once."))
    if spec.type != "load" and (spec.owners or spec.tags):
        problems.append(Problem(file, "owners and tags describe the table a load writes.",
                                index, label, "owners" if spec.owners else "tags",
                                "Move them to the load step, or to the pipeline's top level."))
    return LoadedStep(index, spec.type, spec.method, spec.name, spec.description, cfg,
                      cfg_raw, dict(spec.config), spec.condition, spec.retries,
                      spec.pool, tuple(spec.owners) if spec.owners is not None else None,
                      spec.tags), problems


def _stand_in(index: int, config, model: type[StepModel] | None,
              spec: StepSpec | None = None) -> LoadedStep:
    """A step that did not parse, as far as the dataflow check needs it: the name it
    registers and, when its method is known, the DataFrames its config names."""
    config = config if isinstance(config, dict) else {}
    kind = spec.type if spec else "transform"
    register_as = config.get("registerAs") if isinstance(config.get("registerAs"), str) else None
    reads, partial = kind != "extract", None
    if model is not None:
        reads = model.uses_current
        try:  # the fields as written (unvalidated): enough to say which DataFrames it names
            partial = model.model_construct(**{f: config[a] for f, a in _alias_map(model).items()
                                               if a in config})
            reads = partial.reads_current()
        except Exception:  # noqa: BLE001 - a stand-in never adds problems of its own
            partial = None
    return LoadedStep(index, kind, spec.method if spec else "?", spec.name if spec else None,
                      None, UnparsedConfig(register_as, reads, partial), config)


def _alias_map(model: type[BaseModel]) -> dict[str, str]:
    return {name: (f.alias or name) for name, f in model.model_fields.items()}


def literal_credentials(file: str, steps: Iterable[LoadedStep], catalog: Catalog
                        ) -> list[Problem]:
    """Credentials written in the config (literally or through ${env:...}), which
    VAULT_REQUIRED forbids: with it, every secret comes from Vault. The credential keys are
    the method's secret fields, and the secret-looking keys of free-form properties."""
    out = []
    for s in steps:
        found = [k for k in catalog.secret_fields(s.kind, s.method)
                 if s.raw_config.get(k) not in (None, "")]
        found += [f"properties.{k}" for k in (s.raw_config.get("properties") or {})
                  if SECRET_KEY.search(k)]
        found += [k for k in s.raw_config if "." in k and SECRET_KEY.search(k)]  # sasl.jaas...
        out += [Problem(file, "a credential is written in the config, and Vault is required "
                        "(VAULT_REQUIRED=true).", s.index, s.label, f"config.{k}",
                        "Store it in a Vault secret and set \"credentialPath\" instead.")
                for k in found]
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
    problems += asset_names(loaded)[1]  # two tables, one key: across files
    if any(Path(p).is_dir() for p in paths):  # a whole directory: every upstream is known
        problems += dependency_problems(loaded)
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


def dependency_problems(pipelines: list[LoadedPipeline]) -> list[Problem]:
    """`dependencies` that name no loaded pipeline, or that wait on each other in a cycle."""
    names = {p.name: p for p in pipelines}
    found = ", ".join(sorted(names)) or "none"
    problems = []
    for p in pipelines:
        for i, d in enumerate(p.config.dependencies):
            if d.pipeline not in names:
                near = difflib.get_close_matches(d.pipeline, names, 1)
                problems.append(Problem(
                    p.file, f"names pipeline '{d.pipeline}', which is not among the pipelines "
                    f"loaded ({found}).", field=f"dependencies[{i}].pipeline",
                    fix=f"Did you mean '{near[0]}'?" if near else
                    "Use the \"name\" of a pipeline file in the same directory."))
            elif d.pipeline == p.name:
                problems.append(Problem(p.file, "a pipeline cannot wait for itself.",
                                        field=f"dependencies[{i}].pipeline",
                                        fix="Remove this dependency."))
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for d in names[name].config.dependencies:
            up = d.pipeline
            if up not in names or up == name:
                continue
            if state.get(up) == 1:
                chain = path + [name]
                cycle = chain[chain.index(up):] + [up]
                problems.append(Problem(
                    names[name].file, "dependencies form a cycle: " + " -> ".join(
                        f"'{c}'" for c in cycle) + " (each waits for the next).",
                    field="dependencies",
                    fix="A pipeline cannot (indirectly) wait for itself: remove one of them."))
            elif up not in state:
                visit(up, path + [name])
        state[name] = 2

    for name in sorted(names):
        if name not in state:
            visit(name, [])
    return problems


def with_params(pipeline: LoadedPipeline, step: LoadedStep, catalog: Catalog,
                params: Mapping[str, str]) -> LoadedStep:
    """The step with the run's parameter values (a run may set other values than the file's
    defaults, from the Launchpad or `--param`). Raises ConfigError naming file, step and
    field when the values make the step invalid."""
    if dict(params) == pipeline.params or not step.template:
        return step
    label = step.label
    model = catalog.model_for(step.kind, step.method)
    try:
        raw = substitute_config(step.template, params, None, SqlSpec.of(model))
    except UnresolvedParameter as e:
        raise ConfigError([Problem(pipeline.file, f"placeholder ${{{e.name}}} has no value.",
                                   step.index, label, e.where, "Set it in the run's params.")]
                          ) from None
    except (BadDate, UnsafeInSql) as e:
        raise ConfigError([Problem(pipeline.file, f"{e}.", step.index, label,
                                   getattr(e, "where", "config"), _param_fix(e))]) from None
    try:
        cfg = model.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_problems_from(e, model, pipeline.file, "config.", step.index, label)
                          ) from None
    return replace(step, config=cfg, raw_config=raw)
