"""fromKafka / toKafka in batch against the real KRaft broker (the session's, servers.py)."""

from __future__ import annotations

import json

import pytest

from pipeline_defs.steps import kafka as kafka_steps
from pipeline_defs_tests.conftest import rows
from pipeline_defs_tests.servers import produce

EVENTS = [
    {"id": i, "event_type": ["view", "purchase"][i % 2], "amount": i * 10.5} for i in range(1, 101)
]


def cfg(model, **kw):
    return model.model_validate(kw)


@pytest.fixture
def kctx(kafka, vault, vault_resource, ctx):
    path = vault.put("secret", "kafka", {"bootstrap.servers": kafka})
    c = ctx(read_secret=vault_resource.read_secret, audit=vault_resource.audit)
    return path, c


def test_batch_read_decodes_json_keys_and_metadata(kafka, topic, kctx):
    path, c = kctx
    produce(kafka, topic.default, EVENTS, key="id")
    df = kafka_steps.from_kafka(
        None,
        cfg(
            kafka_steps.FromKafka,
            topic=topic.default,
            credentialPath=path,
            schema="id BIGINT, event_type STRING, amount DOUBLE",
            includeKey=True,
            includeMetadata=True,
        ),
        c,
    )
    assert df.columns == [
        "key",
        "kafka_topic",
        "kafka_partition",
        "kafka_offset",
        "kafka_timestamp",
        "id",
        "event_type",
        "amount",
    ]
    got = rows(df.select("id", "event_type", "amount"))
    assert got == sorted((e["id"], e["event_type"], e["amount"]) for e in EVENTS)
    assert all(r.key == str(r.id) for r in df.collect())
    # without a schema, the JSON values give one (inferred from a sample, with a warning)
    auto = kafka_steps.from_kafka(
        None, cfg(kafka_steps.FromKafka, topic=topic.default, credentialPath=path), c
    )
    assert sorted(auto.columns) == ["amount", "event_type", "id"]
    assert c.metadata["inferred_schema"] == "`amount` double, `event_type` string, `id` bigint"
    raw = kafka_steps.from_kafka(
        None,
        cfg(kafka_steps.FromKafka, topic=topic.default, credentialPath=path, valueFormat="string"),
        c,
    )
    assert sorted(json.loads(r.value)["id"] for r in raw.collect()) == list(range(1, 101))


def test_ending_offsets_bound_a_batch_read(kafka, topic, kctx):
    path, c = kctx
    t = topic(partitions=1)
    produce(kafka, t, EVENTS)
    df = kafka_steps.from_kafka(
        None,
        cfg(
            kafka_steps.FromKafka,
            topic=t,
            credentialPath=path,
            valueFormat="json",
            schema="id BIGINT",
            endingOffsets=json.dumps({t: {"0": 10}}),
        ),
        c,
    )
    assert [r.id for r in df.collect()] == list(range(1, 11))


def test_to_kafka_whole_rows_as_json_with_keys(kafka, topic, kctx, spark):
    path, c = kctx
    out = topic()
    df = spark.createDataFrame([(1, "a"), (2, "b")], "id long, name string")
    kafka_steps.to_kafka(
        df, cfg(kafka_steps.ToKafka, topic=out, keyColumn="id", credentialPath=path), c
    )
    back = kafka_steps.from_kafka(
        None, cfg(kafka_steps.FromKafka, topic=out, credentialPath=path, includeKey=True), c
    )
    assert rows(back.select("key", "id", "name")) == [("1", 1, "a"), ("2", 2, "b")]


def test_the_development_broker_creates_a_topic_on_first_use(kafka):
    """As a default Kafka does (issue 9.6): producing to a new topic just works, with
    PIPELINE_KAFKA_PARTITIONS partitions (1 unless set), instead of a 60 s metadata timeout."""
    import os
    import secrets

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    name = f"new_{secrets.token_hex(4)}"
    errors = []
    p = Producer({"bootstrap.servers": kafka, "message.timeout.ms": 15000})
    p.produce(name, b"hello", on_delivery=lambda err, msg: errors.append(err))
    assert p.flush(30) == 0
    assert errors == [None]
    meta = AdminClient({"bootstrap.servers": kafka}).list_topics(name, timeout=10)
    assert len(meta.topics[name].partitions) == int(
        os.environ.get("PIPELINE_KAFKA_PARTITIONS", "1")
    )


def test_json_starting_offsets_start_each_partition_where_given(kafka, topic, kctx):
    path, c = kctx
    t = topic(partitions=2)
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": kafka})
    for i in range(20):  # ids 0..9 to partition 0, 10..19 to partition 1, in order
        p.produce(t, json.dumps({"id": i}).encode(), partition=i // 10)
    assert p.flush(60) == 0
    df = kafka_steps.from_kafka(None, cfg(
        kafka_steps.FromKafka, topic=t, credentialPath=path, schema="id BIGINT",
        startingOffsets=json.dumps({t: {"0": 7, "1": -2}})), c)  # -2: that partition's earliest
    assert sorted(r.id for r in df.collect()) == [7, 8, 9, *range(10, 20)]


def test_several_topics_are_read_together(kafka, topic, kctx):
    path, c = kctx
    a, b = topic(partitions=1), topic(partitions=1)
    produce(kafka, a, [{"id": 1}, {"id": 2}])
    produce(kafka, b, [{"id": 3}])
    df = kafka_steps.from_kafka(None, cfg(
        kafka_steps.FromKafka, topic=f"{a}, {b}", credentialPath=path, schema="id BIGINT",
        includeMetadata=True), c)
    assert rows(df.select("kafka_topic", "id")) == sorted([(a, 1), (a, 2), (b, 3)])


def test_raw_values_pass_through_byte_for_byte(kafka, topic, kctx):
    """valueFormat raw keeps the bytes (not UTF-8, not JSON); toKafka's valueColumn writes
    them as they are: what another client reads back is what was produced."""
    from confluent_kafka import Producer

    from pipeline_defs_tests.conftest import consume_records
    path, c = kctx
    src, dst = topic(partitions=1), topic(partitions=1)
    payloads = [b"\xff\x00\x80binary", b"\x89PNG\r\n\x1a\n", b"", "żółć".encode("utf-16")]
    p = Producer({"bootstrap.servers": kafka})
    for i, v in enumerate(payloads):
        p.produce(src, v, key=str(i).encode())
    assert p.flush(60) == 0
    df = kafka_steps.from_kafka(None, cfg(kafka_steps.FromKafka, topic=src, credentialPath=path,
                                          valueFormat="raw", includeKey=True), c)
    assert df.dtypes == [("key", "string"), ("value", "binary")]
    assert sorted((r.key, bytes(r.value)) for r in df.collect()) == \
        [(str(i), v) for i, v in enumerate(payloads)]
    kafka_steps.to_kafka(df, cfg(kafka_steps.ToKafka, topic=dst, credentialPath=path,
                                 keyColumn="key", valueColumn="value"), c)
    back = consume_records(kafka, dst, len(payloads))
    assert sorted(back) == [(str(i).encode(), v) for i, v in enumerate(payloads)]


def test_value_column_writes_one_column_as_the_value(kafka, topic, kctx, spark):
    from pipeline_defs_tests.conftest import consume_records
    path, c = kctx
    out = topic(partitions=1)
    df = spark.createDataFrame([(1, "first"), (2, "second")], "id long, note string")
    kafka_steps.to_kafka(df, cfg(kafka_steps.ToKafka, topic=out, credentialPath=path,
                                 valueColumn="upper(note)", keyColumn="id * 10"), c)
    assert sorted(consume_records(kafka, out, 2)) == [(b"10", b"FIRST"), (b"20", b"SECOND")]


SASL_JAAS = ('org.apache.kafka.common.security.plain.PlainLoginModule required '
             'username="{user}" password="{password}";')


def test_sasl_properties_from_vault_authenticate_and_stay_masked(kafka, topic, vault,
                                                                 vault_resource, ctx, spark):
    """Kafka client properties (SASL over the broker's SASL_PLAINTEXT listener) reach Spark's
    Kafka client: a write and a read authenticate as the secret's user; a wrong password
    fails, and neither password appears in the error or in the plan."""
    from pipeline_defs.common import secrets
    from pipeline_defs_tests.conftest import consume_records
    user, password = kafka.sasl_user
    path = vault.put("secret", "kafka-sasl", {
        "bootstrap.servers": kafka.sasl, "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN", "sasl.jaas.config": SASL_JAAS.format(user=user,
                                                                       password=password)})
    c = ctx(read_secret=vault_resource.read_secret, audit=vault_resource.audit)
    t = topic(partitions=1)
    df = spark.createDataFrame([(1, "a"), (2, "b")], "id long, v string")
    kafka_steps.to_kafka(df, cfg(kafka_steps.ToKafka, topic=t, credentialPath=path), c)
    assert len(consume_records(kafka, t, 2)) == 2  # it reached the broker
    back = kafka_steps.from_kafka(None, cfg(kafka_steps.FromKafka, topic=t, credentialPath=path,
                                            schema="id BIGINT, v STRING"), c)
    plan = back._jdf.queryExecution().toString()
    assert rows(back) == [(1, "a"), (2, "b")]
    assert password not in plan and password not in secrets.scrub(f"echo {password}")

    wrong = "wrong-" + password[::-1]
    bad = vault.put("secret", "kafka-bad", {
        "bootstrap.servers": kafka.sasl, "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN", "sasl.jaas.config": SASL_JAAS.format(user=user,
                                                                       password=wrong)})
    from py4j.protocol import Py4JJavaError

    from pipeline_defs.steps.errors import spark_error_summary
    with pytest.raises(Py4JJavaError) as e:
        kafka_steps.from_kafka(None, cfg(kafka_steps.FromKafka, topic=t, credentialPath=bad,
                                         schema="id BIGINT, v STRING"), c).collect()
    line = spark_error_summary(e.value)  # what a failed run's one line is made of
    assert "SaslAuthenticationException: Authentication failed: Invalid username or " \
           "password" in line, line
    assert wrong not in str(e.value) and wrong not in secrets.scrub(f"echo {wrong}")
