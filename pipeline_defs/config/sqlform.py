"""A pipeline in the JSON format's shape written as the SQL form (`pipeline sql file.json`).

Each step is written in the clause that says it best (EXTRACT FROM postgres.t ... WHERE,
TRANSFORM SELECT, VALIDATE CHECK, LOAD TO ...), and that clause is read back at once: when
it does not give the very same step, the step is written in the general form, `<KIND> METHOD
name WITH (key = value, ...)`, which always does. So reading the SQL back gives the JSON's
pipeline, key for key (tested over every example)."""
from __future__ import annotations

import json
from typing import Any

from pipeline_defs.config.readers.sql_file import (
    NAMED,
    SINKS,
    SOURCES,
    STEP_KEYS,
    Parser,
    SqlSyntaxError,
)

CLAUSE = {"extract": "EXTRACT", "transform": "TRANSFORM", "validate": "VALIDATE",
          "load": "LOAD"}
_STORE_OF = {**{m: k for k, m in SOURCES.items()}, **{m: k for k, m in SINKS.items()}}


def literal(v: Any) -> str:
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if v is None:
        return "NULL"
    if isinstance(v, int | float):
        return json.dumps(v)
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return json.dumps(v)


def ident(name: str) -> str:
    plain = name.replace("_", "a").isalnum() and not name[:1].isdigit() and name.isascii()
    return name if plain or name.startswith("${") else "`" + name.replace("`", "``") + "`"


def dotted(name: str) -> str:
    return ".".join(ident(p) for p in name.split(".")) if "${" not in name else name


def options(d: dict[str, Any], assign: bool = True) -> str:
    return "(" + ", ".join(f"{ident(k)} = {literal(v)}" for k, v in d.items()) + ")"


def step_tail(step: dict) -> str:
    own = {k: step[k] for k in STEP_KEYS if k in step}
    return f"\n  STEP {options(own)}" if own else ""


def general(step: dict) -> str:
    config = dict(step.get("config") or {})
    register = config.pop("registerAs", None)
    text = f"{CLAUSE[step['type']]} METHOD {step['method']}"
    if config:
        text += f" WITH {options(config)}"
    if register:
        text += f"\n  AS {ident(register)}"
    return text + step_tail(step)


def _store(step: dict) -> tuple[str, dict] | None:
    """`postgres.sales` / `delta '/p'` ... and the config keys left to say."""
    config = dict(step.get("config") or {})
    kind = _STORE_OF.get(step["method"])
    if kind is None:
        return None
    if kind in NAMED:
        key = "topic" if kind == "kafka" else "table"
        target = config.pop(key, None)
        if not isinstance(target, str):
            return None
        return f"{kind}.{dotted(target)}", config
    if kind == "s3":
        bucket, path = config.pop("bucket", None), config.pop("path", None)
        if not isinstance(bucket, str) or not isinstance(path, str):
            return None
        return f"s3 {literal(f's3a://{bucket}/{path}')}", config
    path = config.pop("path", None)
    return (f"{kind} {literal(path)}", config) if isinstance(path, str) else None


def _attributes(config: dict, load: bool) -> str | None:
    out = []
    if "credentialPath" in config:
        out.append(f"USING vault({literal(config.pop('credentialPath'))})")
    if "format" in config:
        out.append(f"FORMAT {config.pop('format')}")
    if load:
        if "partitionBy" in config:
            out.append("PARTITION BY " + ", ".join(ident(c) for c in config.pop("partitionBy")))
        merge = config.pop("merge", None)
        if merge is not None:
            if set(merge) != {"keyColumns"}:
                return None
            out.append("MODE merge KEYS (" + ", ".join(ident(c) for c in merge["keyColumns"])
                       + ")")
        elif config.get("mode") == "upsert" and "keyColumns" in config:
            config.pop("mode")
            out.append("MODE merge KEYS (" + ", ".join(ident(c) for c in
                                                       config.pop("keyColumns")) + ")")
        elif "mode" in config:
            out.append(f"MODE {config.pop('mode')}")
    extra = {**config.pop("options", {}), **config.pop("properties", {})}
    extra.update(config)  # the method's own keys (schema, startingOffsets, ...)
    if extra:
        out.append("OPTIONS " + options(extra))
    return " ".join(out)


def clause(steps: list[dict], k: int) -> tuple[str, int]:
    """The clause for steps[k] (and the filterRows after an extract, as its WHERE); how many
    steps it took."""
    step = steps[k]
    kind, method = step["type"], step["method"]
    config = dict(step.get("config") or {})
    register = config.pop("registerAs", None)
    if kind in ("extract", "load") and (found := _store({**step, "config": config})):
        target, rest = found
        attrs = _attributes(rest, kind == "load")
        if attrs is not None:
            word = "EXTRACT FROM" if kind == "extract" else "LOAD TO"
            text = f"{word} {target}" + (f"\n  {attrs}" if attrs else "")
            nxt = steps[k + 1] if k + 1 < len(steps) else None
            if kind == "extract" and register is None and not step_tail(step) and nxt and \
                    nxt["type"] == "transform" and nxt["method"] == "filterRows" and \
                    set(nxt.get("config") or {}) <= {"condition", "registerAs"}:
                cfg = nxt["config"]
                text += f"\n  WHERE {cfg['condition']}"
                if cfg.get("registerAs"):
                    text += f"\n  AS {ident(cfg['registerAs'])}"
                return text + step_tail(nxt), 2
            if register:
                text += f"\n  AS {ident(register)}"
            return text + step_tail(step), 1
    if kind == "transform" and method == "sql" and set(config) == {"query"}:
        text = f"TRANSFORM {config['query'].strip()}"
        if register:
            text += f"\n  AS {ident(register)}"
        return text + step_tail(step), 1
    if kind == "validate" and method == "validateBusinessRules" and register is None and \
            set(config) <= {"rules", "onFailure", "quarantinePath"} and config.get("rules") and \
            (config.get("onFailure") == "quarantine" or "quarantinePath" not in config):
        action = config.get("onFailure", "fail")
        on = "" if action == "fail" else f" ON VIOLATION {action.upper()}"
        if "quarantinePath" in config:
            on += f" {literal(config['quarantinePath'])}"
        text = "VALIDATE\n" + "\n".join(f"  CHECK {r}{on}" for r in config["rules"])
        return text + step_tail(step), 1
    return general(step), 1


def _reads_back(text: str, steps: list[dict]) -> bool:
    try:
        doc = Parser(f"CREATE PIPELINE p AS\n{text}", "<check>").pipeline()
    except SqlSyntaxError:
        return False
    return doc.data["steps"] == steps


def to_sql(data: dict) -> str:
    """The pipeline as the SQL form."""
    top = {k: v for k, v in data.items() if k not in ("name", "steps")}
    head = f"CREATE OR REPLACE PIPELINE {ident(str(data.get('name', 'pipeline')))}"
    if top:
        head += "\nWITH (\n" + ",\n".join(f"  {ident(k)} = {literal(v)}"
                                           for k, v in top.items()) + "\n)"
    parts, steps, k = [head + " AS"], list(data.get("steps") or []), 0
    while k < len(steps):
        text, n = clause(steps, k)
        if n and not _reads_back(text, steps[k:k + n]):
            text, n = general(steps[k]), 1
        parts.append(text)
        k += n
    return "\n".join(parts) + ";\n"
