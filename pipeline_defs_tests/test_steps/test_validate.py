"""The original five validators: exact counts, fail and warn, one Spark job per step."""

from __future__ import annotations

from decimal import Decimal

import pytest

from pipeline_defs.steps.validate import ValidationFailed, ValidationGroup, dataset, history, rows


def cfg(model, **kw):
    return model.model_validate(kw)


@pytest.fixture
def tx(spark):
    return spark.createDataFrame(
        [
            (1, 10, 5.0, "completed"),
            (2, None, -1.0, "pending"),
            (3, 11, 2e6, "odd"),
            (4, 12, None, "failed"),
        ],
        "transaction_id long, customer_id long, amount double, status string",
    )


def test_schema_pass_and_fail(tx, ctx):
    ok = cfg(
        rows.ValidateSchema,
        expectedColumns=[
            {"name": "transaction_id", "type": "long"},
            {"name": "amount", "type": "double"},
        ],
    )
    assert rows.validate_schema(tx, ok, ctx()) is tx
    bad = cfg(
        rows.ValidateSchema,
        expectedColumns=[{"name": "amount", "type": "int"}, {"name": "day", "type": "date"}],
    )
    with pytest.raises(
        ValidationFailed, match="column 'amount' is double, expected int; column 'day' is missing"
    ):
        rows.validate_schema(tx, bad, ctx())


def test_nulls_counts_per_column(tx, ctx):
    c = ctx()
    with pytest.raises(
        ValidationFailed,
        match=r"not_null\(customer_id\): 1 of 4 rows violate "
        r"`customer_id IS NOT NULL`; not_null\(amount\)",
    ):
        rows.validate_nulls(
            tx,
            cfg(rows.ValidateNulls, notNullColumns=["transaction_id", "customer_id", "amount"]),
            c,
        )
    assert c.metadata["violations"] == {
        "not_null(transaction_id)": 0,
        "not_null(customer_id)": 1,
        "not_null(amount)": 1,
    }


def test_ranges_ignore_nulls(tx, ctx):
    c = ctx()
    with pytest.raises(ValidationFailed):
        rows.validate_ranges(
            tx,
            cfg(
                rows.ValidateRanges,
                ranges={"amount": {"min": 0.01, "max": 1000000}, "customer_id": {"min": 1}},
            ),
            c,
        )
    assert c.metadata["violations"] == {"range(amount)": 2, "range(customer_id)": 0}


def test_business_rules_warn_goes_on(tx, ctx):
    c = ctx()
    out = rows.validate_business_rules(
        tx,
        cfg(
            rows.ValidateBusinessRules,
            onFailure="warn",
            rules=["status IN ('pending', 'completed', 'failed')", "amount > 0"],
        ),
        c,
    )
    assert out is tx
    assert c.metadata["violations"] == {"rule[0]": 1, "rule[1]": 2}
    assert c.metadata["passed"] is False and c.metadata["rows"] == 4


def test_referential_integrity_null_keys_are_not_violations(spark, tx, ctx):
    customers = spark.createDataFrame([(10,), (11,)], "id long")
    c = ctx({"customers": customers})
    with pytest.raises(ValidationFailed, match=r"references\(customer_id\): 1 of 4 rows"):
        rows.validate_referential_integrity(
            tx,
            cfg(
                rows.ValidateReferentialIntegrity,
                foreignKey="customer_id",
                referencedDataFrame="customers",
                referencedColumn="id",
            ),
            c,
        )
    assert c.metadata["violations"] == {"references(customer_id)": 1}


def test_all_rules_of_a_step_read_the_data_once(spark, ctx, counted_reads):
    """Every source row is computed exactly once, however many rules the step has."""
    from pyspark.sql import functions as F

    counted, reads = counted_reads
    df = spark.range(200).select(counted("id").alias("id"), (F.col("id") % 7).alias("g"))
    c = ctx()
    rows.validate_business_rules(
        df,
        cfg(
            rows.ValidateBusinessRules,
            onFailure="warn",
            rules=["id >= 0", "g < 7", "id < 200", "g + id >= 0"],
        ),
        c,
    )
    assert reads.value == 200
    assert c.metadata["violations"] == {"rule[0]": 0, "rule[1]": 0, "rule[2]": 0, "rule[3]": 0}


def test_counts_and_samples_of_violations(spark, ctx):
    from pyspark.sql import functions as F

    df = spark.range(200).select(F.col("id"), (F.col("id") % 7).alias("g"))
    c = ctx()
    rows.validate_business_rules(
        df,
        cfg(
            rows.ValidateBusinessRules,
            onFailure="warn",
            rules=["id > 0", "g <> 3", "id < 150", "g + id > 2"],
        ),
        c,
    )
    assert c.metadata["violations"] == {"rule[0]": 1, "rule[1]": 29, "rule[2]": 50, "rule[3]": 2}
    samples = {r.name: r.samples for r in c.results}
    assert samples["rule[0]"] == [{"id": 0, "g": 0}]
    assert all(len(v) == 5 for k, v in samples.items() if k in ("rule[1]", "rule[2]"))
    assert all(s["g"] == 3 for s in samples["rule[1]"])
    assert all(s["id"] >= 150 for s in samples["rule[2]"])


# ---------------------------------------------------------------- data-quality validators
@pytest.fixture
def people(spark):
    return spark.createDataFrame(
        [
            (1, "a@x.io", "DE", 30),
            (2, "bad-mail", "FR", 40),
            (2, "c@x.io", "XX", None),
            (4, None, "DE", 50),
        ],
        "id long, email string, country string, age int",
    )


def test_unique_flags_every_row_of_a_duplicated_key(people, ctx):
    c = ctx()
    with pytest.raises(ValidationFailed, match=r"unique\(id\): 2 of 4 rows violate"):
        rows.validate_unique(people, cfg(rows.ValidateUnique, columns=["id"]), c)
    out = rows.validate_unique(people, cfg(rows.ValidateUnique, columns=["id", "country"]), ctx())
    assert out.count() == 4


def test_accepted_values_and_regex_ignore_nulls(people, ctx):
    c = ctx()
    rows.validate_accepted_values(
        people,
        cfg(rows.ValidateAcceptedValues, column="country", values=["DE", "FR"], onFailure="warn"),
        c,
    )
    assert c.metadata["violations"] == {"accepted_values(country)": 1}
    c = ctx()
    rows.validate_regex(
        people, cfg(rows.ValidateRegex, column="email", pattern=r"[^@]+@[^@]+", onFailure="warn"), c
    )
    assert c.metadata["violations"] == {"regex(email)": 1}
    assert c.results[0].samples == [{"id": 2, "email": "bad-mail", "country": "FR", "age": 40}]


def test_row_count_and_freshness(spark, people, ctx):
    dataset.validate_row_count(people, cfg(dataset.ValidateRowCount, min=1, max=4), ctx())
    with pytest.raises(
        ValidationFailed,
        match=r"row_count: `rows >= 5` does not hold "
        r"\(4 rows, fewer than 5\)",
    ):
        dataset.validate_row_count(people, cfg(dataset.ValidateRowCount, min=5), ctx())
    import datetime as dt

    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    ts = spark.createDataFrame(
        [(now - dt.timedelta(hours=30),), (now - dt.timedelta(hours=2),)], "t timestamp"
    )
    dataset.validate_freshness(
        ts, cfg(dataset.ValidateFreshness, column="t", maxAge="3 hours"), ctx()
    )
    with pytest.raises(ValidationFailed, match=r"freshness\(t\)"):
        dataset.validate_freshness(
            ts, cfg(dataset.ValidateFreshness, column="t", maxAge="1 hour"), ctx()
        )


def test_dataset_validators_refuse_row_actions(tmp_path, registry):
    from pipeline_defs.common.errors import ConfigError
    from pipeline_defs.config.loader import load_pipeline
    from pipeline_defs_tests.conftest import write_json

    f = write_json(
        tmp_path / "p.json",
        {
            "name": "p",
            "steps": [
                {"type": "extract", "method": "fromFile", "config": {"path": "/x"}},
                {
                    "type": "validate",
                    "method": "validateRowCount",
                    "config": {"min": 1, "onFailure": "quarantine"},
                },
            ],
        },
    )
    with pytest.raises(
        ConfigError,
        match="'quarantine' needs row rules; this validator checks "
        "the whole dataset. Use fail or warn.",
    ):
        load_pipeline(f, registry)


def test_thresholds_turn_small_counts_into_a_pass(people, ctx):
    c = ctx()
    rows.validate_nulls(
        people, cfg(rows.ValidateNulls, notNullColumns=["email", "age"], maxViolations=2), c
    )
    assert c.metadata["passed"] is True
    with pytest.raises(ValidationFailed):
        rows.validate_nulls(
            people,
            cfg(rows.ValidateNulls, notNullColumns=["email", "age"], maxViolationFraction=0.25),
            ctx(),
        )
    c = ctx()
    rows.validate_nulls(
        people,
        cfg(rows.ValidateNulls, notNullColumns=["email", "age"], maxViolationFraction=0.5),
        c,
    )
    assert c.metadata["passed"] is True


def test_drop_removes_violating_rows(people, ctx):
    c = ctx()
    out = rows.validate_nulls(
        people, cfg(rows.ValidateNulls, notNullColumns=["email", "age"], onFailure="drop"), c
    )
    assert sorted(r.id for r in out.collect()) == [1, 2]
    assert c.metadata["violations"] == {"not_null(email)": 1, "not_null(age)": 1}


def test_quarantine_writes_each_bad_row_once_with_every_rule(spark, people, ctx, tmp_path):
    c = ctx()
    c.run_id = "run-123"
    q = str(tmp_path / "q")
    out = rows.validate_business_rules(
        people,
        cfg(
            rows.ValidateBusinessRules,
            rules=["age >= 35", "country IN ('DE', 'FR')"],
            onFailure="quarantine",
            quarantinePath=q,
        ),
        c,
    )
    assert sorted(r.id for r in out.collect()) == [2, 4]
    bad = {
        r.id: (r._dq_rules, r._dq_reason, r._dq_run_id)
        for r in spark.read.format("delta").load(q).collect()
    }
    assert bad == {
        1: (["rule[0]"], "broke: rule[0]", "run-123"),
        2: (["rule[0]", "rule[1]"], "broke: rule[0], rule[1]", "run-123"),
    }
    assert c.metadata["quarantine_location"] == q
    assert c.metadata["violations"] == {"rule[0]": 2, "rule[1]": 1}


def test_samples_mask_columns(people, ctx):
    c = ctx()
    c.mask_columns = ("email",)
    rows.validate_ranges(
        people, cfg(rows.ValidateRanges, ranges={"age": {"max": 35}}, onFailure="warn"), c
    )
    assert sorted(c.results[0].samples, key=lambda s: s["id"]) == [
        {"id": 2, "email": "***", "country": "FR", "age": 40},
        {"id": 4, "email": "***", "country": "DE", "age": 50},
    ]


def test_schema_modes(spark, ctx):
    df = spark.createDataFrame([(1, 2.0, "x")], "id int, amount float, extra string")
    exp = [
        {"name": "id", "type": "long"},
        {"name": "amount", "type": "double"},
        {"name": "new_col", "type": "string"},
    ]
    with pytest.raises(
        ValidationFailed,
        match="column 'id' is int, expected bigint; column "
        "'amount' is float, expected double; column "
        "'new_col' is missing; unexpected columns extra",
    ):
        rows.validate_schema(
            df, cfg(rows.ValidateSchema, expectedColumns=exp, mode="strict"), ctx()
        )
    lenient = exp[:1] + [{"name": "gone", "type": "int"}]
    c = ctx()  # id is int, not bigint: lenient still checks types; gone may be missing
    out = rows.validate_schema(df, cfg(rows.ValidateSchema, expectedColumns=lenient,
                                       allowMissingColumns=True, onFailure="warn"), c)
    assert out is df and c.metadata["passed"] is False
    assert c.results[0].detail == "column 'id' is int, expected bigint"
    c = ctx()
    rows.validate_schema(df, cfg(rows.ValidateSchema, onFailure="warn", expectedColumns=[
        {"name": "id", "type": "int"}, {"name": "gone", "type": "int"}],
        allowMissingColumns=True), c)
    assert c.metadata["passed"] is True and c.results == []
    c = ctx()
    out = rows.validate_schema(df, cfg(rows.ValidateSchema, expectedColumns=exp, mode="evolve"), c)
    assert [(f.name, f.dataType.simpleString()) for f in out.schema.fields] == [
        ("id", "bigint"),
        ("amount", "double"),
        ("extra", "string"),
        ("new_col", "string"),
    ]
    assert c.metadata["added_columns"] == ["new_col"]
    assert c.metadata["widened_columns"] == ["id: int -> bigint", "amount: float -> double"]


def test_referential_integrity_allow_nulls_false(spark, tx, ctx):
    customers = spark.createDataFrame([(10,), (11,), (12,)], "id long")
    c = ctx({"customers": customers})
    with pytest.raises(ValidationFailed, match=r"references\(customer_id\): 1 of 4"):
        rows.validate_referential_integrity(
            tx,
            cfg(
                rows.ValidateReferentialIntegrity,
                foreignKey="customer_id",
                allowNulls=False,
                referencedDataFrame="customers",
                referencedColumn="id",
            ),
            c,
        )


def test_consecutive_validations_are_one_pass_and_see_earlier_drops(spark, ctx, counted_reads):
    """A group of validations (as the runner builds it for consecutive validate steps): one
    Spark pass for all; a rule only counts rows that earlier drop steps kept."""
    from pyspark.sql import functions as F

    counted, reads = counted_reads
    df = spark.range(100).select(counted("id").alias("id"), (F.col("id") % 10).alias("g"))
    first, second = ctx(), ctx()
    first.op_name, second.op_name = "a", "b"
    group = ValidationGroup(defer=True)  # what the runner gives the first of two
    first.validation = group
    mid = rows.validate_business_rules(
        df, cfg(rows.ValidateBusinessRules, rules=["g <> 0"], onFailure="drop"), first
    )
    assert reads.value == 0  # deferred: nothing ran yet
    second.validation = ValidationGroup(list(group.pending))
    out = rows.validate_ranges(
        mid, cfg(rows.ValidateRanges, ranges={"id": {"max": 49}}, onFailure="warn"), second
    )
    # one counting pass (100 rows), then the samples' query of limited parts, which stops
    # reading once each rule has SAMPLES rows: some rows, never a second full pass
    assert 100 < reads.value < 200, reads.value
    assert first.metadata["violations"] == {"a:rule[0]": 10}
    # ids 50..99 break the range, but 5 of them (g == 0) were already dropped
    assert second.metadata["violations"] == {"b:range(id)": 45}
    assert out.count() == 90

    # when every rule holds, the counting pass is the only one: no samples' query
    start = reads.value
    c = ctx()
    rows.validate_ranges(spark.range(100).select(counted("id").alias("id")),
                         cfg(rows.ValidateRanges, ranges={"id": {"max": 99}},
                             onFailure="warn"), c)
    assert c.metadata["violations"] == {"range(id)": 0}
    assert reads.value - start == 100


@pytest.fixture
def readings(spark):
    values = [10.0, 11.0, 9.0, 10.5, 9.5, 10.0, 11.0, 9.0, 10.0, 100.0]
    return spark.createDataFrame([(i, v) for i, v in enumerate(values)], "id int, v double")


def test_anomalies_zscore_flag_and_drop(readings, ctx):
    c = ctx()
    out = dataset.detect_anomalies(
        readings, cfg(dataset.DetectAnomalies, column="v", threshold=2.5), c
    )
    assert [r.id for r in out.filter("v_is_anomaly").collect()] == [9]
    assert c.metadata["violations"] == {"anomaly(v)": 1} and c.metadata["action"] == "flag"
    dropped = dataset.detect_anomalies(
        readings, cfg(dataset.DetectAnomalies, column="v", threshold=2.5, onFailure="drop"), ctx()
    )
    assert dropped.count() == 9 and "v_is_anomaly" not in dropped.columns


def test_anomalies_iqr_fail(readings, ctx):
    with pytest.raises(ValidationFailed, match=r"anomaly\(v\): 1 of 10 rows violate"):
        dataset.detect_anomalies(
            readings,
            cfg(dataset.DetectAnomalies, column="v", method="iqr", onFailure="fail"),
            ctx(),
        )
    c = ctx()
    dataset.detect_anomalies(
        readings,
        cfg(dataset.DetectAnomalies, column="v", method="iqr", threshold=100, onFailure="fail"),
        c,
    )
    assert c.metadata["passed"] is True


def test_metrics_history_flags_a_jump_and_survives_restarts(spark, ctx, tmp_path):
    path = str(tmp_path / "history")

    def run(n_rows, nulls, run_id):
        df = spark.range(n_rows).selectExpr(
            "id", f"CASE WHEN id < {nulls} THEN NULL ELSE id END AS x"
        )
        c = ctx()
        c.run_id, c.op_name = run_id, "history"
        history.validate_metrics_history(
            df, cfg(history.ValidateMetricsHistory, historyPath=path, columns=["x"], threshold=3), c
        )
        return c

    for i, (n, nulls) in enumerate([(100, 10), (104, 10), (98, 10), (101, 10)]):
        c = run(n, nulls, f"r{i}")
        assert c.metadata["passed"] is True
    # a later process (nothing kept in memory) still sees the history
    with pytest.raises(
        ValidationFailed,
        match=r"row_count: `row count within 3 sd of "
        r"history` does not hold \(row_count = 500 vs "
        r"mean 100.75 of 4 runs",
    ):
        run(500, 50, "r4")
    saved = spark.read.format("delta").load(path)
    assert saved.filter("run_id = 'r4' AND NOT passed").count() == 2
    c = run(102, 10, "r5")  # the failed run is not part of the baseline
    assert c.metadata["passed"] is True


def test_expected_schema_as_ddl_and_as_sparks_json_form(spark, ctx):
    """validateSchema's expectedSchema (the improvement plan): DDL, Spark's JSON form as an
    object and as a string, nested types, aliases, allowExtraColumns / allowMissingColumns."""
    df = spark.createDataFrame(
        [(1, Decimal("2.50"), ["a"], (1, "x"))],
        "id bigint, amount decimal(10,2), tags array<string>, s struct<Longitude:bigint,t:string>")
    ddl = ("id LONG NOT NULL, amount DECIMAL(10, 2), tags ARRAY<STRING>, "
           "`s` STRUCT<Longitude: BIGINT, t: STRING> COMMENT 'nested, with a comma'")
    json_form = df.schema.jsonValue()
    for schema in (ddl, json_form, df.schema.json()):  # strict: raises on any difference
        rows.validate_schema(df, cfg(rows.ValidateSchema, expectedSchema=schema,
                                     mode="strict"), ctx())
    with pytest.raises(ValidationFailed, match="column 'amount' is decimal\\(10,2\\), expected "
                       "double; column 'tags' is array<string>, expected array<int>"):
        rows.validate_schema(df, cfg(rows.ValidateSchema, mode="strict", expectedSchema=(
            "id BIGINT, amount DOUBLE, tags ARRAY<INT>, s STRUCT<Longitude: BIGINT, t: STRING>"
        )), ctx())
    narrower = "id BIGINT, amount DECIMAL(10,2), gone INT"
    with pytest.raises(ValidationFailed, match="column 'gone' is missing; unexpected columns "
                       "tags, s"):
        rows.validate_schema(df, cfg(rows.ValidateSchema, expectedSchema=narrower,
                                     allowExtraColumns=False), ctx())
    with pytest.raises(ValidationFailed, match="problems: column 'gone' is missing[.]$"):
        rows.validate_schema(df, cfg(rows.ValidateSchema, expectedSchema=narrower), ctx())
    rows.validate_schema(df, cfg(rows.ValidateSchema, expectedSchema=narrower,
                                 allowMissingColumns=True), ctx())  # extra allowed by default
    # evolve adds a missing nullable column of the DDL's type, not a NOT NULL one
    out = rows.validate_schema(df, cfg(rows.ValidateSchema, mode="evolve", expectedSchema=(
        "id BIGINT, added DATE")), ctx())
    assert out.schema["added"].dataType.simpleString() == "date"
    with pytest.raises(ValidationFailed, match="column 'required' is missing"):
        rows.validate_schema(df, cfg(rows.ValidateSchema, mode="evolve", expectedSchema=(
            "id BIGINT, required DATE NOT NULL")), ctx())
