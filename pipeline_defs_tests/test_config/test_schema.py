"""configs/pipeline.schema.json is generated from the models and must not go stale."""
from __future__ import annotations

import json

import jsonschema
import pytest

from pipeline_defs.config.schema import pipeline_schema, schema_text
from pipeline_defs_tests.conftest import COMPAT, CONFIGS


def test_committed_schema_is_current(registry):
    committed = (CONFIGS / "pipeline.schema.json").read_text()
    assert committed == schema_text(registry), (
        "configs/pipeline.schema.json is stale: run `pipeline schema -o "
        "configs/pipeline.schema.json`")


@pytest.mark.parametrize("path", sorted(COMPAT.glob("*.json")) + sorted(
    p for p in CONFIGS.glob("*.json") if not p.name.endswith(".schema.json")),
    ids=lambda p: p.stem)
def test_examples_validate_against_schema(path, registry):
    jsonschema.validate(json.loads(path.read_text()), pipeline_schema(registry))


def test_schema_rejects_unknown_key(registry):
    bad = {"name": "p", "steps": [{"type": "transform", "method": "filterRows",
                                   "config": {"conditon": "x"}}]}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, pipeline_schema(registry))


def test_every_field_is_described(registry):
    for d in registry.all():
        for name, f in d.model.model_fields.items():
            assert f.description, f"{d.kind}.{d.method}.{f.alias or name} has no description"


def test_method_reference_is_current(registry):
    from pipeline_defs.steps.reference import replace_reference
    from pipeline_defs_tests.conftest import REPO
    doc = (REPO / "docs" / "methods.md").read_text()
    assert doc == replace_reference(doc, registry), (
        "the method reference in docs/methods.md is stale: run `pipeline docs`")
    for d in registry.all():
        assert f"**`{d.method}`**" in doc


def test_readme_links_resolve():
    """Every relative link of README.md and docs/ names a file that exists."""
    import re

    from pipeline_defs_tests.conftest import REPO
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
