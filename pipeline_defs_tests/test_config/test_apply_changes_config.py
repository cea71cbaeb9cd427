"""applyChanges' config checked by `validate` before Spark starts: the columns it names against
an extract's declared schema (also through validations), an unorderable sequence column, and
the combinations that mean nothing (deletes or truncates with snapshots, tombstones of an SCD2
table, a key excluded), each naming step, field and fix."""
from __future__ import annotations

import pytest

from pipeline_defs.common.errors import ConfigError
from pipeline_defs.config.loader import load_pipeline
from pipeline_defs_tests.conftest import write_json

EXTRACT = {"type": "extract", "method": "fromFile", "config": {
    "path": "/data/changes.csv", "format": "csv",
    "schema": "id INT, op STRING, seq BIGINT, tags MAP<STRING, STRING>, name STRING"}}
CHECK = {"type": "validate", "method": "validateBusinessRules", "config": {
    "rules": ["seq > 0"]}}


def problems(tmp_path, registry, load: dict, before=(EXTRACT,)) -> str:
    f = write_json(tmp_path / "cdc.json", {"name": "cdc", "steps": [
        *before, {"type": "load", "method": "applyChanges", "name": "customers",
                  "config": {"path": "/lake/customers", **load}}]})
    with pytest.raises(ConfigError) as e:
        load_pipeline(f, registry)
    return str(e.value).replace(str(f), "cdc.json")


def test_columns_named_against_the_declared_schema(tmp_path, registry):
    text = problems(tmp_path, registry, {
        "keys": ["customer_id"], "sequenceBy": "tags", "exceptColumnList": ["op", "sq"]},
        before=(EXTRACT, CHECK))
    assert "3 problems" in text, text
    assert "step 3 (load.applyChanges), config.keys: names 'customer_id', which the input " \
        "does not have (its declared columns: id, op, seq, tags, name)" in text
    assert "config.exceptColumnList: names 'sq'" in text
    assert "config.sequenceBy: 'tags' is a MAP<STRING, STRING>, which has no order" in text
    # an expression, or columns nobody declared, are left to the run
    ok = write_json(tmp_path / "ok.json", {"name": "ok", "steps": [EXTRACT, {
        "type": "load", "method": "applyChanges", "config": {
            "path": "/lake/c", "keys": ["id"], "sequenceBy": "struct(seq, name)"}}]})
    assert load_pipeline(ok, registry).steps[1].config.sequence_by == "struct(seq, name)"


@pytest.mark.parametrize("load,field,text", [
    ({"source": "snapshot", "applyAsDeletes": "op = 'D'"}, "applyAsDeletes",
     "applyAsDeletes has no meaning with snapshots"),
    ({"storedAs": "scd2", "tombstoneRetention": "30 days"}, "tombstoneRetention",
     "an SCD2 table keeps every key's history"),
    ({"tombstoneRetention": "a month"}, "tombstoneRetention", "'a month' is not a duration"),
    ({"exceptColumnList": ["id", "op"]}, "exceptColumnList", "'id' is a key"),
    ({"trackHistoryColumnList": ["name"]}, "trackHistoryColumnList",
     "history is tracked only with storedAs scd2"),
])
def test_combinations_that_mean_nothing(tmp_path, registry, load, field, text):
    got = problems(tmp_path, registry, {"keys": ["id"], "sequenceBy": "seq", **load})
    assert f"step 2 (load.applyChanges), config.{field}: {text}" in got, got


def test_the_debezium_example_in_the_docs_is_valid(registry):
    from pipeline_defs_tests.conftest import REPO
    p = load_pipeline(REPO / "docs" / "examples" / "customers_cdc.json", registry)
    assert p.config.mode == "streaming" and p.steps[-1].method == "applyChanges"
