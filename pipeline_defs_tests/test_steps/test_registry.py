"""The registry carries everything the product needs to know about a method: a connector
registered from outside the product (pipeline_defs_tests/toy_connector.py) validates, runs in
batch and runs as a stream through Dagster, with no product file edited; so does one that
Spark reaches through a Python data source (steps/pysource.py)."""
from __future__ import annotations

import json
import sqlite3
from contextlib import closing

import pytest

from pipeline_defs.common.errors import ConfigError, RegistryError
from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.definitions import default_resources, definitions_for
from pipeline_defs.steps import pysource
from pipeline_defs.steps.context import StepContext
from pipeline_defs.steps.registry import Registry, StepDef, builtin_registry
from pipeline_defs_tests import toy_connector
from pipeline_defs_tests.conftest import run_job, streams_outputs, write_json


@pytest.fixture
def toy_registry():
    reg = builtin_registry().extended()
    toy_connector.register(reg)
    return reg


def _inbox(tmp_path, name, ids):
    d = tmp_path / "inbox"
    d.mkdir(exist_ok=True)
    (d / name).write_text("".join(json.dumps({"id": i, "note": f"n{i}"}) + "\n" for i in ids))
    return d


def _outbox_ids(path) -> list[int]:
    return sorted(json.loads(line)["id"] for f in path.glob("part-*.json")
                  for line in f.read_text().splitlines() if line)


def pipeline(tmp_path, mode: str, outbox) -> dict:
    return {"name": f"toy_{mode}", "mode": mode,
            "streaming": {"trigger": "availableNow",
                          "checkpointRoot": str(tmp_path / "checkpoints")},
            "steps": [
                {"type": "extract", "method": "fromInbox", "config": {"inbox": str(
                    tmp_path / "inbox")}},
                {"type": "transform", "method": "filterRows", "config": {"condition": "id > 2"}},
                {"type": "load", "method": "toOutbox", "config": {"outbox": str(outbox)}}]}


def test_a_connector_registered_from_outside_validates_and_runs(toy_registry, tmp_path):
    _inbox(tmp_path, "a.json", range(1, 11))
    # validate: known to the catalog, did-you-mean on its keys, streaming capability read
    bad = write_json(tmp_path / "bad.json", {"name": "b", "steps": [
        {"type": "extract", "method": "fromInbox", "config": {"inbx": "/x"}},
        {"type": "load", "method": "toOutbox", "config": {"outbox": "/y"}}]})
    with pytest.raises(ConfigError, match="config.inbx: unknown key 'inbx'. Did you mean "
                                          "'inbox'?"):
        load_pipeline(bad, toy_registry)
    assert toy_registry.streams("extract", "fromInbox")
    assert toy_registry.streams("load", "toOutbox")
    assert not builtin_registry().streams("extract", "fromInbox")  # the built-in one unchanged

    # a batch run
    batch = load_pipeline(write_json(tmp_path / "batch.json",
                                     pipeline(tmp_path, "batch", tmp_path / "out_batch")),
                          toy_registry)
    result = run_job(batch, registry=toy_registry)
    assert _outbox_ids(tmp_path / "out_batch") == list(range(3, 11))
    mat = next(e.event_specific_data.materialization for e in result.all_events
               if e.event_type_value == "ASSET_MATERIALIZATION")
    assert mat.metadata["dagster/row_count"].value == 8
    specs = {s.key: s for s in definitions_for([batch], default_resources(), toy_registry)
             .resolve_all_asset_specs()}
    assert {"spark", "outbox"} <= set(specs[mat.asset_key].kinds)

    # a streaming run, then a second one that resumes from the checkpoint
    stream = load_pipeline(write_json(tmp_path / "stream.json",
                                      pipeline(tmp_path, "streaming", tmp_path / "out_stream")),
                           toy_registry)
    run_job(stream, registry=toy_registry)
    assert _outbox_ids(tmp_path / "out_stream") == list(range(3, 11))
    _inbox(tmp_path, "b.json", range(11, 14))
    result = run_job(stream, registry=toy_registry)
    assert _outbox_ids(tmp_path / "out_stream") == list(range(3, 14))
    assert streams_outputs(result)[0]["input_rows"] == 3


def test_registering_a_name_twice_or_a_stream_form_first_is_refused(toy_registry):
    with pytest.raises(RegistryError, match="extract.fromInbox is registered twice"):
        toy_connector.register(toy_registry)
    with pytest.raises(RegistryError, match="register extract.fromNothing with @step before "
                                            "its streaming form"):
        Registry().stream_reader("fromNothing")(lambda cfg, ctx: None)


def test_every_builtin_method_declares_what_the_product_needs(registry):
    for d in registry.all():
        assert isinstance(d, StepDef)
        if d.kind in ("extract", "load"):
            assert d.asset_kind is not None, f"{d.kind}.{d.method} declares no asset kind"
    assert registry.get("load", "toPostgres").secret_fields == ("password",)
    assert set(registry.get("extract", "fromS3").secret_fields) == {
        "accessKeyId", "secretAccessKey", "sessionToken"}
    assert [m for k, m in registry.methods() if k == "load" and registry.streams(k, m)] and \
        not registry.streams("load", "toS3")


def _ledger(path, ids) -> None:
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE IF NOT EXISTS ledger (id INTEGER, note TEXT)")
        db.executemany("INSERT INTO ledger VALUES (?, ?)", [(i, f"n{i}") for i in ids])


def _ledger_rows(path, table: str = "ledger") -> list[tuple]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute(f"SELECT id, note FROM {table} ORDER BY id").fetchall()


def test_a_python_data_source_connector_is_one_module_and_its_registration(tmp_path, spark):
    """fromLedger/toLedger (toy_connector.py): a store Spark reaches through Python workers,
    registered like any method: read in partitions, written all or nothing, streamed."""
    reg = builtin_registry().extended()
    toy_connector.register_ledger(reg)
    src, dst = tmp_path / "src.db", tmp_path / "dst.db"
    _ledger(src, range(1, 11))
    _ledger(dst, [100])

    def ledger_pipeline(name: str, mode: str = "batch", **load) -> dict:
        return {"name": name, "mode": mode,
                "streaming": {"trigger": "availableNow",
                              "checkpointRoot": str(tmp_path / "checkpoints")},
                "steps": [
                    {"type": "extract", "method": "fromLedger",
                     "config": {"path": str(src), "partitions": 3}},
                    {"type": "transform", "method": "filterRows", "config": {"condition":
                                                                            "id > 2"}},
                    {"type": "load", "method": "toLedger", "config": {"path": str(dst),
                                                                      **load}}]}
    # the read is split into the partitions the source plans, read by Python workers
    ctx = StepContext(spark=spark, pipeline="t", step=1, method="fromLedger")
    df = pysource.read(ctx, toy_connector.LedgerSource, {"path": str(src), "partitions": 3})
    assert df.rdd.getNumPartitions() == 3
    assert sorted(tuple(r) for r in df.collect()) == _ledger_rows(src)

    # a batch run through Dagster: the rows the filter kept, appended (sqlite3 reads them)
    batch = load_pipeline(write_json(tmp_path / "l.json", ledger_pipeline("ledger")), reg)
    result = run_job(batch, registry=reg)
    assert _ledger_rows(dst) == [(i, f"n{i}") for i in range(3, 11)] + [(100, "n100")]
    mat = next(e.event_specific_data.materialization for e in result.all_events
               if e.event_type_value == "ASSET_MATERIALIZATION")
    assert mat.metadata["dagster/row_count"].value == 8

    # a write that fails in one partition commits nothing: the table as it was, no staged row
    before = _ledger_rows(dst)
    failing = load_pipeline(write_json(tmp_path / "f.json", ledger_pipeline(
        "ledger_fails", mode="batch", failOn=9)), reg)
    with pytest.raises(Exception, match="the ledger refuses id 9"):
        run_job(failing, registry=reg)
    assert _ledger_rows(dst) == before
    assert _ledger_rows(dst, "ledger_staged") == []

    # a stream: the rows there are, then only the new ones on the next run
    out = tmp_path / "stream_out"
    stream = pipeline(tmp_path, "streaming", out)
    stream["steps"][0] = {"type": "extract", "method": "fromLedger", "config": {"path": str(src)}}
    toy_connector.register(reg)
    stream_job = load_pipeline(write_json(tmp_path / "s.json", stream), reg)
    run_job(stream_job, registry=reg)
    assert _outbox_ids(out) == list(range(3, 11))
    _ledger(src, range(11, 14))
    run_job(stream_job, registry=reg)
    assert _outbox_ids(out) == list(range(3, 14))
