"""A load whose connections the database drops mid-INSERT (Spark's JDBC writer) is retried by
its `retries` (the bulk loader's COPY, cut by a real restart: test_database_restarts.py); the
target then holds exactly the source's rows (the database's own count and sum), the summary
has one SUCCESS line and counts what the attempt that succeeded read and wrote."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from pipeline_defs_tests.conftest import background_run, write_json
from pipeline_defs_tests.e2e.test_kill_mid_load import _wait_for

N = 2_000_000


# COPY (the bulk loader's fast path) cut by a real restart: test_database_restarts.py
@pytest.mark.parametrize("fast_path, statement", [(False, "INSERT")])
def test_a_load_retried_after_its_connections_dropped_counts_the_good_attempt(
        pg, vault, tmp_path, spark, fast_path, statement):
    """Spark's JDBC writer (batched INSERTs: a Spark SQL action, whose failure fills the row
    counts riding on its plan)."""
    data = tmp_path / "big"
    spark.range(0, N, numPartitions=4).selectExpr(
        "id", "concat('name-', id) AS name", "id * 3 AS score").write.parquet(str(data))
    path = vault.put("secret", "postgres/retried", pg.secret())
    f = write_json(tmp_path / "retried.json", {
        "name": "retried", "retries": {"maxRetries": 2, "delaySeconds": 1},
        # every step counted, the Parquet extract too (with native execution only the loads
        # count rows that come from Parquet: docs/acceleration.md)
        "rowCounts": "all", "steps": [
            {"type": "extract", "method": "fromFile", "name": "scores_in",
             "config": {"path": str(data)}},
            # the extract is counted in its own op (an observe() on its output): the failed
            # attempt's write fills that count with what it had read when it was cut off
            {"type": "transform", "method": "deduplicate", "name": "latest",
             "config": {"columns": ["id"]}},
            {"type": "load", "method": "toPostgres", "name": "scores_out",
             "config": {"table": "scores", "mode": "overwrite", "credentialPath": path,
                        "fastPath": fast_path}}]})
    proc, reader, box = background_run(f, tmp_path, vault)
    # rows have reached the staging table: the database now drops the COPY connections
    _wait_for(pg, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                  f"AND query LIKE '{statement} %_pd_stage_scores_%' AND state = 'active' AND "
                  "EXISTS (SELECT 1 FROM pg_class WHERE relname LIKE "
                  "'\\_pd\\_stage\\_scores\\_%' AND relkind = 'r' AND "
                  "pg_relation_size(oid) > 0)", proc)
    pg.sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
           f"current_database() AND query LIKE '{statement} %_pd_stage_%' "
           "AND pid <> pg_backend_pid()")
    reader.join()
    out, err = box["out"]
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert "attempt 1 of step 3 (load.toPostgres) failed with a transient error" in err
    lines = out.splitlines()
    assert [ln for ln in lines if ln.startswith("pipeline retried:")] == \
        [next(ln for ln in lines if ln.startswith("pipeline retried: SUCCESS"))]
    rows = {ln.split()[0]: ln.split()[3] for ln in lines if ln.startswith(("  scores_",
                                                                            "  latest"))}
    source = pq.read_table(data).to_pandas()
    assert rows == {"scores_in": f"{len(source):,}", "latest": f"{len(source):,}",
                    "scores_out": f"{len(source):,}"}, out[-2000:]
    assert pg.sql("SELECT count(*), sum(score) FROM scores") == [
        (len(source), int(source["score"].sum()))]
