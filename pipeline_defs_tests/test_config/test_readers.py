"""Pipeline files are read by format (config/readers/): a new format is one reader and one
line in READERS. A TOML reader made here, in the test, proves it: its files are found in a
directory beside the JSON ones, load into the same PipelineConfig, steps and params as the
same pipeline in JSON, carry their steps' lines, and its problems name its file."""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from pipeline_defs.common.errors import ConfigError, Problem
from pipeline_defs.config import readers
from pipeline_defs.config.loader import load_pipeline, load_pipelines
from pipeline_defs.config.readers.document import Document

PIPELINE = {"name": "orders_toml", "params": {"src": "/data/orders.csv"}, "steps": [
    {"type": "extract", "method": "fromFile", "name": "orders_in",
     "config": {"path": "${src}", "format": "csv"}},
    {"type": "transform", "method": "filterRows", "config": {"condition": "amount > 0"}},
    {"type": "load", "method": "toFile", "name": "orders_out",
     "config": {"path": "/out/orders", "format": "parquet", "mode": "overwrite"}}]}

TOML = '''name = "orders_toml"
[params]
src = "/data/orders.csv"

[[steps]]
type = "extract"
method = "fromFile"
name = "orders_in"
config = { path = "${src}", format = "csv" }

[[steps]]
type = "transform"
method = "filterRows"
config = { condition = "amount > 0" }

[[steps]]
type = "load"
method = "toFile"
name = "orders_out"
config = { path = "/out/orders", format = "parquet", mode = "overwrite" }
'''


def read_toml(path: Path) -> Document | Problem:
    """The whole of a format: the file's text -> the JSON format's shape + step lines."""
    text = path.read_text()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return Problem(str(path), f"not valid TOML: {e}.", fix="Fix the TOML syntax.")
    lines = [n for n, line in enumerate(text.splitlines(), 1) if line.strip() == "[[steps]]"]
    return Document(data, lines)


@pytest.fixture
def toml_format(monkeypatch):
    monkeypatch.setitem(readers.READERS, ".toml", read_toml)  # the one line


def test_a_new_format_is_one_reader_and_its_line(tmp_path, registry, toml_format):
    (tmp_path / "a.toml").write_text(TOML)
    (tmp_path / "b.json").write_text(json.dumps({**PIPELINE, "name": "orders_json"}))
    (tmp_path / "notes.txt").write_text("not a pipeline")
    assert [f.name for f in readers.pipeline_files([tmp_path])] == ["a.toml", "b.json"]
    (from_toml,) = load_pipelines([tmp_path / "a.toml"], registry)
    from_json = load_pipeline(tmp_path / "b.json", registry)
    assert from_toml.config.model_copy(update={"name": "x"}) == \
        from_json.config.model_copy(update={"name": "x"})
    assert [s.config for s in from_toml.steps] == [s.config for s in from_json.steps]
    assert from_toml.params.keys() == from_json.params.keys()  # (and DATE, the run's date)
    assert from_toml.params["src"] == from_json.params["src"] == "/data/orders.csv"
    assert [s.line for s in from_toml.steps] == [5, 11, 16]


def test_the_new_format_s_problems_name_its_file(tmp_path, registry, toml_format):
    bad = tmp_path / "bad.toml"
    bad.write_text(TOML.replace('method = "filterRows"', 'method = "filterRowz"'))
    with pytest.raises(ConfigError, match=r"bad\.toml.*unknown transform method 'filterRowz'"
                                          r".*Did you mean 'filterRows'"):
        load_pipeline(bad, registry)
    broken = tmp_path / "broken.toml"
    broken.write_text("name = ")
    with pytest.raises(ConfigError, match=r"broken\.toml.*not valid TOML"):
        load_pipeline(broken, registry)


def test_without_its_line_the_format_is_not_a_pipeline(tmp_path, registry):
    (tmp_path / "a.toml").write_text(TOML)
    assert readers.pipeline_files([tmp_path]) == []
