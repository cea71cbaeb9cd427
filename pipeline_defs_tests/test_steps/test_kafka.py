"""fromKafka / toKafka in batch against the real KRaft broker (scripts/kafka.sh)."""

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
