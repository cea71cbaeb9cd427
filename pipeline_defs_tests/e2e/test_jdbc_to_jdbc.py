"""A partitioned PostgreSQL read feeding an aggregate and a MySQL load, through Dagster, against
the real servers (issue 9.1: the load used to fail with a bare JVM AssertionError while reading
the row count of an Observation that a second action on the plan had left unfilled)."""
from __future__ import annotations

from decimal import Decimal

import dagster as dg
import pytest

from pipeline_defs.config.loader import load_pipeline
from pipeline_defs.dagster_layer.resources.vault import VaultResource
from pipeline_defs.definitions import default_resources, definitions_for
from pipeline_defs.steps.registry import builtin_registry
from pipeline_defs_tests.conftest import write_json

TRIPS = [(i, ("north", "south", "east")[i % 3], Decimal(f"{i % 50}.{i % 10}5"))
         for i in range(1, 301)]  # trip_id, region, distance


def _pipeline(tmp_path, partitioned: bool, mode: str = "overwrite") -> dict:
    extract = {"table": "trips", "credentialPath": "secret/data/pg"}
    if partitioned:
        extract.update(partitionColumn="trip_id", numPartitions=3)
    return {"name": "trips-by-region", "steps": [
        {"type": "extract", "method": "fromPostgres", "config": extract},
        {"type": "transform", "method": "aggregateData",
         "config": {"groupBy": ["region"],
                    "aggregations": {"n": "count(*)", "dist": "sum(distance)"}}},
        {"type": "load", "method": "toMySQL",
         "config": {"table": "trips_by_region", "mode": mode,
                    "credentialPath": "secret/data/mysql"}}]}


@pytest.fixture
def world(pg, mysql, vault, tmp_path):
    vault.put("secret", "pg", pg.secret())
    vault.put("secret", "mysql", mysql.secret())
    pg.sql("CREATE TABLE trips (trip_id int PRIMARY KEY, region text, distance numeric(8,2))")
    with pg.admin.cursor() as cur:
        cur.executemany("INSERT INTO trips VALUES (%s, %s, %s)", TRIPS)
    resources = {**default_resources(),
                 "vault": VaultResource(url=vault.url, token=vault.token,
                                        audit_log=str(tmp_path / "audit.jsonl"))}
    return resources


def _run(tmp_path, resources, raw):
    p = load_pipeline(write_json(tmp_path / "trips.json", raw), builtin_registry())
    job = definitions_for([p], resources).resolve_job_def("trips_by_region")
    return job.execute_in_process(instance=dg.DagsterInstance.ephemeral(),
                                  raise_on_error=False)


def _expected():
    out: dict[str, list] = {}
    for _, region, dist in TRIPS:
        n, d = out.get(region, (0, Decimal(0)))
        out[region] = (n + 1, d + dist)
    return sorted((r, n, d) for r, (n, d) in out.items())


@pytest.mark.parametrize("partitioned", [True, False])
@pytest.mark.parametrize("mode", ["overwrite", "append"])
def test_partitioned_postgres_read_aggregated_into_mysql(world, mysql, tmp_path, partitioned,
                                                         mode):
    result = _run(tmp_path, world, _pipeline(tmp_path, partitioned, mode))
    failures = [e.event_specific_data.user_failure_data.description
                for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert result.success, failures
    got = sorted((r, int(n), Decimal(d)) for r, n, d in
                 mysql.sql("SELECT region, n, dist FROM trips_by_region"))
    assert got == _expected()
    mat = next(e.event_specific_data.materialization for e in result.all_events
               if e.event_type_value == "ASSET_MATERIALIZATION")
    assert mat.metadata["dagster/row_count"].value == 3
    assert mat.metadata["dagster/table_name"].value == "trips_by_region"
    # the rows of the extract are counted by the same pass (one row per trip)
    assert mat.metadata["step_rows"].value["s01_fromPostgres"] == len(TRIPS)
