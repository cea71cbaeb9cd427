"""The JSON Schema of pipeline files, generated from the models (configs/pipeline.schema.json)."""
from __future__ import annotations

import json

from pydantic.json_schema import models_json_schema

from pipeline_defs.config.model import PipelineConfig, StepSpec


def _lenient_booleans(node):
    """The original format accepted "true"/"false" strings for booleans (and so do we)."""
    if isinstance(node, dict):
        if node.get("type") == "boolean":
            rest = {k: v for k, v in node.items() if k != "type"}
            return {**rest, "anyOf": [{"type": "boolean"}, {"enum": ["true", "false"]}]}
        return {k: _lenient_booleans(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_lenient_booleans(v) for v in node]
    return node


def pipeline_schema(catalog) -> dict:
    """JSON Schema (draft 2020-12) with one branch per (type, method)."""
    methods = sorted(catalog.methods())
    models = [catalog.model_for(k, m) for k, m in methods]
    _, top = models_json_schema([(m, "validation") for m in {*models, PipelineConfig}],
                                ref_template="#/$defs/{model}")
    defs = top.get("$defs", {})
    base = PipelineConfig.model_json_schema(ref_template="#/$defs/{model}")
    defs.update(base.pop("$defs", {}))
    spec = StepSpec.model_json_schema()["properties"]
    branches = []
    for (kind, method), model in zip(methods, models, strict=True):
        doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        branches.append({
            "title": f"{kind}.{method}", "description": doc, "type": "object",
            "additionalProperties": False, "required": ["type", "method"],
            "properties": {"type": {"const": kind}, "method": {"const": method},
                           "name": spec["name"], "description": spec["description"],
                           "config": {"$ref": f"#/$defs/{model.__name__}"}}})
    base["properties"]["steps"]["items"] = {"oneOf": branches}
    base.pop("$defs", None)
    return _lenient_booleans({"$schema": "https://json-schema.org/draft/2020-12/schema",
                              "$id": "pipeline.schema.json", **base,
                              "$defs": dict(sorted(defs.items()))})


def schema_text(catalog) -> str:
    return json.dumps(pipeline_schema(catalog), indent=2, sort_keys=False) + "\n"
