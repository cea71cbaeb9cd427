"""The example pipelines in configs/ run through Dagster; their outputs are read back and
compared with the same computation done in plain Python on the sample data."""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import dagster as dg
import pytest
from delta.tables import DeltaTable

from pipeline_defs.definitions import build_definitions
from pipeline_defs_tests.conftest import copy_configs


def spark_round(x: Decimal, digits: int = 2) -> Decimal:
    """Spark's round() of a DECIMAL: HALF_UP."""
    return x.quantize(Decimal(1).scaleb(-digits), ROUND_HALF_UP)


def _orders(data: Path) -> list[dict]:
    """The sample orders, money as exact decimals (as the examples read it: DECIMAL(10,2))."""
    out = []
    for f in sorted(data.glob("orders*/*.jsonl")):
        out += [json.loads(line, parse_float=Decimal) for line in f.read_text().splitlines()]
    return out


def _customers(data: Path) -> dict[int, dict]:
    with (data / "customers.csv").open() as f:
        return {int(r["customer_id"]): r for r in csv.DictReader(f)}


@pytest.fixture
def run(spark, sample_data, tmp_path):
    """Run a job of configs/ against the sample data, outputs under tmp_path."""
    out = tmp_path / "out"
    configs = copy_configs(tmp_path / "configs")

    def go(job: str, data_dir: Path = sample_data) -> dg.ExecuteInProcessResult:
        defs = build_definitions(configs, params={"data_dir": str(data_dir),
                                                  "output_dir": str(out)})
        go.instance = dg.DagsterInstance.ephemeral()  # its event log: the run's log lines
        result = defs.resolve_job_def(job).execute_in_process(instance=go.instance)
        assert result.success
        return result
    go.out = out
    return go


def _materializations(result) -> dict[str, dict]:
    out = {}
    for e in result.all_events:
        if e.event_type_value == "ASSET_MATERIALIZATION":
            mat = e.event_specific_data.materialization
            out[mat.asset_key.path[-1]] = {k: getattr(v, "value", getattr(v, "data", getattr(
                v, "text", v))) for k, v in mat.metadata.items()}
    return out


def test_orders_enrichment(run, spark, sample_data):
    result = run("orders_enrichment")
    customers = _customers(sample_data)
    completed = [o for o in _orders(sample_data) if o["status"] == "completed" and
                 o["amount"] > 0 and o["customer_id"] is not None]
    delta = spark.read.format("delta").load(str(run.out / "delta" / "enriched_orders"))
    assert delta.count() == len(completed)
    got = {r.order_id: (r.country, r.year, r.unit_price, r.is_large) for r in delta.collect()}
    assert got == {o["order_id"]: (customers[o["customer_id"]]["country"],
                                   int(o["order_date"][:4]),
                                   spark_round(o["amount"] / o["quantity"]), o["amount"] >= 250)
                   for o in completed}
    assert sorted(DeltaTable.forPath(spark, str(run.out / "delta" / "enriched_orders"))
                  .detail().first()["partitionColumns"]) == ["year"]
    monthly = spark.read.parquet(str(run.out / "files" / "monthly_sales"))
    expect: dict = defaultdict(lambda: [Decimal(0), 0])
    for o in completed:
        k = (customers[o["customer_id"]]["country"], int(o["order_date"][:4]),
             int(o["order_date"][5:7]))
        expect[k][0] += o["amount"]
        expect[k][1] += 1
    got = {(r.country, r.year, r.month): (r.amount_sum, r.order_id_count)
           for r in monthly.collect()}
    assert got == {k: (v[0], v[1]) for k, v in expect.items()}  # exact: money is DECIMAL
    assert monthly.columns == ["country", "year", "month", "amount_sum", "order_id_count",
                               "avg_unit_price"]
    types = dict(monthly.dtypes)
    assert types["amount_sum"] == "decimal(20,2)" and types["avg_unit_price"].startswith(
        "decimal(")
    mats = _materializations(result)
    assert mats["enriched_orders"]["dagster/row_count"] == len(completed)
    assert mats["enriched_orders"]["delta_version"] == 0
    assert mats["monthly_sales"]["dagster/row_count"] == len(expect)
    assert [c.name for c in mats["monthly_sales"]["dagster/column_schema"].columns] == \
        monthly.columns
    assert mats["enriched_orders"]["step_rows"]["completed"] == len(
        [o for o in _orders(sample_data) if o["status"] == "completed" and o["amount"] > 0])


def test_sales_pivot(run, spark, sample_data):
    run("sales_pivot")
    completed_2024 = [o for o in _orders(sample_data) if o["status"] == "completed" and
                      o["order_date"].startswith("2024")]
    expect: dict = defaultdict(Decimal)
    for o in completed_2024:
        expect[(o["region"], o["product_category"])] += o["amount"]
    with_text = {}
    for f in sorted((run.out / "files" / "region_by_category").glob("part-*.csv")):
        with f.open(newline="") as fh:
            with_text.update({r["region"]: r for r in csv.DictReader(fh)})
    assert sorted(with_text) == sorted({k[0] for k in expect})
    for region, r in with_text.items():
        assert list(r) == ["region", "books", "electronics", "garden", "toys"]
        for cat in ("books", "electronics", "garden", "toys"):
            assert Decimal(r[cat]) == expect[(region, cat)]  # written exactly, no float noise
    ranking = spark.read.format("delta").load(str(run.out / "delta" / "category_ranking"))
    got = {(r.region, r.product_category): (r.revenue, r.rank_in_region)
           for r in ranking.collect()}
    assert len(got) == 16
    for region in {k[0] for k in expect}:
        ordered = sorted((c for (rg, c) in expect if rg == region),
                         key=lambda c: -expect[(region, c)])
        assert [got[(region, c)][1] for c in ordered] == [1, 2, 3, 4]
        assert all(got[(region, c)][0] == expect[(region, c)] for c in ordered)


def test_customer_upsert_merges_latest_change(run, spark, sample_data, tmp_path):
    result = run("customer_upsert")
    with (sample_data / "customer_updates.csv").open() as f:
        changes = list(csv.DictReader(f))
    latest: dict = {}
    for c in changes:
        k = int(c["customer_id"])
        if k not in latest or c["updated_at"] > latest[k]["updated_at"]:
            latest[k] = c
    path = str(run.out / "delta" / "customers")
    table = {r.customer_id: (r.email, r.country) for r in spark.read.format("delta").load(
        path).collect()}
    assert table == {k: (c["email"], c["country"].upper()) for k, c in latest.items()}
    assert _materializations(result)["customers"]["delta_operation"] == "WRITE"

    # a second batch: one newer change, one stale change, one new customer
    newer_id, stale_id = sorted(latest)[:2]
    second = tmp_path / "second"
    second.mkdir()
    (second / "customer_updates.csv").write_text(
        "customer_id,name,email,country,segment,updated_at\n"
        f"{newer_id},N,newer@example.com,de,consumer,2030-01-01 00:00:00\n"
        f"{stale_id},S,stale@example.com,fr,consumer,2000-01-01 00:00:00\n"
        "9999,New,new@example.com,es,business,2030-01-01 00:00:00\n")
    result = run("customer_upsert", second)
    mats = _materializations(result)["customers"]
    assert (mats["delta_operation"], mats["delta_version"]) == ("MERGE", 1)
    assert (mats["delta_numTargetRowsUpdated"], mats["delta_numTargetRowsInserted"]) == (1, 1)
    table2 = {r.customer_id: (r.email, r.country) for r in spark.read.format("delta").load(
        path).collect()}
    assert table2[newer_id] == ("newer@example.com", "DE")
    assert table2[stale_id] == table[stale_id]
    assert table2[9999] == ("new@example.com", "ES")
    assert len(table2) == len(table) + 1


def test_orders_quality_quarantines_exactly_the_bad_rows(run, spark, sample_data):
    result = run("orders_quality")
    orders = [o for o in _orders(sample_data) if o["order_date"].startswith("2025")]
    statuses = {"completed", "pending", "cancelled", "refunded"}

    def broken(o):  # the three validations are one group: rule names carry their step
        out = []
        if o["customer_id"] is None:
            out.append("order_rules:rule[0]")
        if not o["amount"] > 0:
            out.append("order_rules:rule[1]")
        if o["status"] not in statuses:
            out.append("order_rules:rule[2]")
        return out
    expect_bad = {o["order_id"]: broken(o) for o in orders if broken(o)}
    assert len(expect_bad) > 40  # the sample data has defects of every kind
    q = spark.read.format("delta").load(str(run.out / "quarantine" / "orders_2025"))
    got = {r.order_id: r._dq_rules for r in q.collect()}
    assert got == expect_bad
    assert {r._dq_run_id for r in q.collect()} == {result.run_id}
    assert all(r._dq_reason == "broke: " + ", ".join(r._dq_rules) for r in q.collect())
    clean = spark.read.format("delta").load(str(run.out / "delta" / "orders_2025"))
    assert sorted(r.order_id for r in clean.collect()) == sorted(
        o["order_id"] for o in orders if o["order_id"] not in expect_bad)

    checks = {e.event_specific_data.check_name: e.event_specific_data
              for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}
    assert set(checks) == {"order_rules", "one_row_per_order", "enough_orders"}
    rules = checks["order_rules"]
    assert rules.passed is False and rules.severity.value == "WARN"
    md = rules.metadata
    # a row that broke two rules is one failing row, and two rule violations
    assert md["failing_rows"].value == len(expect_bad) == md["quarantined_rows"].value
    assert md["rule_violations"].value == sum(len(v) for v in expect_bad.values())
    assert md["rule_violations"].value > md["failing_rows"].value  # the sample data has both
    assert md["action"].text == "quarantine"
    assert md["quarantine_location"].text == str(run.out / "quarantine" / "orders_2025")
    samples = md["samples"].records  # a table: the rule, then the row (masked columns ***)
    assert samples and all(r.data["customer_id"] == "***" for r in samples)
    by_rule = {}
    for r in samples:
        by_rule.setdefault(r.data["rule"], []).append(r.data["order_id"])
    assert all(len(v) <= 5 and all(expect_bad.get(int(i)) for i in v)
               for v in by_rule.values()), by_rule
    assert checks["one_row_per_order"].passed and checks["enough_orders"].passed
    assert rules.asset_key.path == ["orders_2025"]
    # the run's log says it in one sentence; the sample rows are in the metadata, not the log
    (warning,) = [e.user_message for e in run.instance.all_logs(result.run_id)
                  if "found problems" in e.user_message]
    assert warning.startswith(f"validate.validateBusinessRules found problems "
                              f"({len(expect_bad)} of {len(orders)} rows broke a rule): "), \
        warning
    assert warning.endswith("Samples of the rows are in the step's metadata. "
                            "[action: quarantine]"), warning
    assert "{" not in warning and "\n" not in warning and len(warning) < 600, warning


def test_asset_checks_are_declared(tmp_path):
    defs = build_definitions(copy_configs(tmp_path / "configs"))
    keys = {(k.asset_key.path[-1], k.name) for k in defs.resolve_asset_graph().asset_check_keys}
    assert {("orders_2025", "order_rules"), ("orders_2025", "one_row_per_order"),
            ("enriched_orders", "keys_present"), ("enriched_orders", "sane_amounts")} <= keys
    # monthly_sales is an aggregate: it holds none of the rows those validations checked
    assert not {k for k in keys if k[0] in ("monthly_sales", "region_by_category")}


def test_params_are_run_config_with_their_defaults(tmp_path, sample_data):
    """A pipeline's `params` are its run config (the Launchpad shows them with their
    defaults); a run with other values writes where they say."""
    defs = build_definitions(copy_configs(tmp_path / "configs"),
                             params={"data_dir": str(sample_data),
                                     "output_dir": str(tmp_path / "default")})
    job = defs.resolve_job_def("customer_upsert")
    schema = job.run_config_schema.config_type.fields["resources"].config_type \
        .fields["params_customer_upsert"].config_type.fields["config"].config_type.fields
    assert schema["output_dir"].default_value == str(tmp_path / "default")
    assert schema["data_dir"].default_value == str(sample_data)
    other = tmp_path / "other"
    result = job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        run_config={"resources": {"params_customer_upsert": {"config": {
            "output_dir": str(other)}}}})
    assert result.success
    assert (other / "delta" / "customers" / "_delta_log").is_dir()
    assert not (tmp_path / "default").exists()


def test_the_sql_example_country_revenue(run, sample_data, spark):
    """configs/country_revenue.sql: completed 2025 orders joined to their customers, revenue
    per country and category over 5,000, as Python computes it from the sample files."""
    run("country_revenue")
    customers = _customers(sample_data)
    totals: dict = defaultdict(lambda: [Decimal(0), 0])
    for f in sorted((sample_data / "orders_2025").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            o = json.loads(line, parse_float=Decimal)
            c = customers.get(o["customer_id"])
            if o["status"] == "completed" and c is not None:
                key = (c["country"], o["product_category"])
                totals[key][0] += o["amount"]
                totals[key][1] += 1
    expected = sorted((k[0], k[1], t, n) for k, (t, n) in totals.items() if t > 5000)
    got = sorted((r.country, r.category, r.revenue, r.orders) for r in spark.read.format(
        "delta").load(str(run.out / "delta" / "country_revenue")).collect())
    assert got == expected and len(expected) >= 5


def test_the_churn_model_is_trained_registered_promoted_and_scores(run, sample_data,
                                                                    tmp_path, monkeypatch):
    import pandas as pd
    monkeypatch.setenv("PIPELINE_MLFLOW_DIR", str(tmp_path / "mlruns"))  # a store of its own
    result = run("churn_model")
    held = pd.read_parquet(run.out / "delta" / "churn_held_back")
    subscribers = pd.read_csv(sample_data / "subscriptions.csv")
    assert set(held["subscriber_id"]) < set(subscribers["subscriber_id"])
    accuracy = float((held["prediction"] == held["churned"]).mean())
    majority = max(subscribers["churned"].mean(), 1 - subscribers["churned"].mean())
    assert accuracy >= majority + 0.05  # it learnt something: better than always "stays"
    model = _materializations(result)["churn"]
    assert model["metric/accuracy"] == pytest.approx(accuracy, abs=5e-5)  # shown to 4 places
    # materialized by the check that promoted it: both its aliases
    assert (model["name"], model["version"], model["aliases"]) == \
        ("churn", "1", "latest-trained, champion")

    run("churn_scoring")  # by the alias the first run's check moved: models:/churn@champion
    scored = pd.read_parquet(run.out / "delta" / "churn_scores").sort_values("subscriber_id")
    new = pd.read_csv(sample_data / "subscriptions_new.csv")
    assert scored["subscriber_id"].tolist() == new["subscriber_id"].tolist()
    assert list(scored.columns) == ["subscriber_id", "plan", "tenure_months", "will_churn",
                                    "churn_probability"]
    assert scored["churn_probability"].between(0, 1).all()
    assert set(scored["will_churn"]) == {0, 1}
    # new subscribers come from the same rule: about as many leave as in the training data
    assert abs(scored["churn_probability"].mean() - subscribers["churned"].mean()) < 0.08
