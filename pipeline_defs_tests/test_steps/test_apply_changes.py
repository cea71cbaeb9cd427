"""applyChanges against a reference computed in Python from all events sorted by sequence: a
generated feed (inserts, updates, deletes, re-inserts, identical repeats), shuffled, cut into
batches applied in turn with one batch applied twice, equals the feed applied at once, for
SCD1 and SCD2; an old change arriving after a delete is ignored; a late change splits a
version; duplicate sequences are a data error naming key and sequence."""
from __future__ import annotations

import random

import pytest

from pipeline_defs.steps.cdc import END, START, ApplyChanges, apply
from pipeline_defs.steps.errors import StepDataError
from pipeline_defs_tests.test_steps.test_delta_stream_sink import commits

SCHEMA = "id INT, seq INT, op STRING, name STRING, tier STRING"


def feed(n_keys: int = 60, seed: int = 7) -> list[tuple]:
    rnd = random.Random(seed)
    out, seq = [], 0
    for k in range(n_keys):
        for _ in range(rnd.randint(1, 7)):
            seq += rnd.randint(1, 3)
            op = rnd.choice("UUUUD")
            out.append((k, seq, op, None if op == "D" else f"n{rnd.randint(0, 3)}",
                        None if op == "D" else rnd.choice("ab")))
    return out


def scd1(events: list[tuple]) -> list[tuple]:
    last: dict = {}
    for e in sorted(events, key=lambda e: (e[0], e[1])):
        last[e[0]] = e
    return sorted((k, e[3], e[4]) for k, e in last.items() if e[2] != "D")


def scd2(events: list[tuple]) -> list[tuple]:
    out = []
    by_key: dict = {}
    for e in sorted(set(events), key=lambda e: (e[0], e[1])):
        by_key.setdefault(e[0], []).append(e)
    for k, evs in by_key.items():
        versions, prev = [], None  # [start, name, tier, end]
        for e in evs:
            if e[2] == "D":
                if versions and versions[-1][3] is None:
                    versions[-1][3] = e[1]
                prev = None
                continue
            if prev is not None and (e[3], e[4]) == (prev[3], prev[4]):
                prev = e
                continue  # nothing changed: no new version
            if versions and versions[-1][3] is None:
                versions[-1][3] = e[1]
            versions.append([e[1], e[3], e[4], None])
            prev = e
        out += [(k, n, t, s, end) for s, n, t, end in versions]
    return sorted(out, key=lambda r: (r[0], r[3]))


def table(spark, path) -> list[dict]:
    return [r.asDict() for r in spark.read.format("delta").load(str(path)).collect()]


def cfg(tmp_path, name: str, stored_as: str, **kw) -> ApplyChanges:
    return ApplyChanges(path=str(tmp_path / name), keys=["id"], sequenceBy="seq",
                        applyAsDeletes="op = 'D'", exceptColumnList=["op", "seq"],
                        storedAs=stored_as, **kw)


@pytest.mark.parametrize("stored_as", ["scd1", "scd2"])
def test_batches_in_any_order_and_a_replay_equal_all_at_once(spark, tmp_path, stored_as):
    events = feed(2000)  # thousands of keys, ~8,000 changes
    shuffled = events[:]
    random.Random(3).shuffle(shuffled)
    batches = [shuffled[i::3] for i in range(3)]
    c = cfg(tmp_path, "t", stored_as)
    for i, b in enumerate(batches + [batches[1]]):  # batch 2 once more: a replay
        meta = apply(spark.createDataFrame(b, SCHEMA), c, spark, None)
        assert meta["applied"] == (i < 3), meta
    if stored_as == "scd1":
        expected = scd1(events)  # all the events at once, sorted by sequence
        got = sorted((r["id"], r["name"], r["tier"]) for r in table(spark, c.path))
        assert got == expected and len(expected) > 1000
    else:
        expected = scd2(events)
        row = lambda r: (r["id"], r["name"], r["tier"], r[START], r[END])  # noqa: E731
        got = sorted(map(row, table(spark, c.path)), key=lambda r: (r[0], r[3]))
        assert got == expected and len(expected) > len(scd1(events))
    # every change is in the log once
    log = spark.read.format("delta").load(c.log_path)
    assert log.count() == len(set((e[0], e[1]) for e in events))


def test_an_old_insert_after_a_delete_is_ignored_and_a_late_change_splits_a_version(
        spark, tmp_path):
    one, two = cfg(tmp_path, "one", "scd1"), cfg(tmp_path, "two", "scd2")
    for c in (one, two):
        apply(spark.createDataFrame([(1, 10, "U", "x", "a"), (1, 30, "D", None, None),
                                     (2, 10, "U", "y", "a")], SCHEMA), c, spark, None)
        apply(spark.createDataFrame([(1, 20, "U", "old", "a"),  # before the delete: stays out
                                     (2, 15, "U", "late", "b")], SCHEMA), c, spark, None)
    assert sorted((r["id"], r["name"]) for r in table(spark, one.path)) == [(2, "late")]
    assert sorted(((r["id"], r["name"], r[START], r[END]) for r in table(spark, two.path)),
                  key=lambda r: (r[0], r[2])) == [
        (1, "x", 10, 20), (1, "old", 20, 30), (2, "y", 10, 15), (2, "late", 15, None)]


def test_track_history_on_some_columns_and_ignore_null_updates(spark, tmp_path):
    c = cfg(tmp_path, "t", "scd2", trackHistoryColumnList=["tier"], ignoreNullUpdates=True)
    apply(spark.createDataFrame([(1, 1, "U", "a", "gold"), (1, 2, "U", "b", "gold"),
                                 (1, 3, "U", None, "silver"), (1, 4, "U", "c", None)], SCHEMA),
          c, spark, None)
    # name changes update the version in place; tier opens one; nulls keep the stored value
    assert sorted(((r["name"], r["tier"], r[START], r[END]) for r in table(spark, c.path)),
                  key=lambda r: r[2]) == [
        ("b", "gold", 1, 3), ("c", "silver", 3, None)]


def test_two_different_changes_with_one_sequence_are_a_data_error(spark, tmp_path):
    c = cfg(tmp_path, "t", "scd1")
    with pytest.raises(StepDataError) as e:
        apply(spark.createDataFrame([(7, 5, "U", "a", "x"), (7, 5, "U", "b", "x")], SCHEMA),
              c, spark, None)
    assert "id=7" in str(e.value) and "sequence 5" in str(e.value)
    assert not (tmp_path / "t").exists()


def test_a_crash_between_the_target_and_the_log_is_completed_by_the_same_batch(
        spark, tmp_path, monkeypatch):
    from pyspark.sql import DataFrameWriter
    c = cfg(tmp_path, "t", "scd2")
    events = feed(50, seed=11)
    apply(spark.createDataFrame(events[:100], SCHEMA), c, spark, None)
    target_versions = len(commits(tmp_path / "t"))
    save = DataFrameWriter.save

    def dies_at_the_log(self, path=None, *args, **kw):
        if path == c.log_path:
            raise SystemExit("killed")  # the process dies after the target's commit
        return save(self, path, *args, **kw)
    monkeypatch.setattr(DataFrameWriter, "save", dies_at_the_log)
    with pytest.raises(SystemExit):
        apply(spark.createDataFrame(events[100:], SCHEMA), c, spark, None)
    monkeypatch.undo()
    assert len(commits(tmp_path / "t")) == target_versions + 1  # the target has it
    meta = apply(spark.createDataFrame(events[100:], SCHEMA), c, spark, None)
    assert meta["applied"]
    got = sorted(((r["id"], r["name"], r["tier"], r[START], r[END])
                  for r in table(spark, c.path)), key=lambda r: (r[0], r[3]))
    assert got == scd2(events)
    assert spark.read.format("delta").load(c.log_path).count() == len(events)


def snapshot_events(days: dict[str, list[tuple]]) -> list[tuple]:
    """Successive snapshots (day -> rows (id, name, tier)) as changes, in day order: a row
    that differs from the key's last state is an update, a key gone is a delete."""
    out, state = [], {}
    for day in sorted(days):
        rows = {r[0]: r for r in days[day]}
        for k, r in rows.items():
            if state.get(k) != r:
                out.append((k, day, "U", r[1], r[2]))
        out += [(k, day, "D", None, None) for k in state if k not in rows]
        state = rows
    return out


def test_snapshots_in_any_order_and_a_replay_equal_the_days_in_order(spark, tmp_path):
    rnd = random.Random(5)
    days, rows = {}, {k: (k, f"n{k}", "a") for k in range(40)}
    for d in ("2024-01-01", "2024-01-02", "2024-01-03"):
        days[d] = sorted(rows.values())
        rows = {k: (k, f"n{rnd.randint(0, 2)}", r[2]) if rnd.random() < 0.3 else r
                for k, r in rows.items() if rnd.random() > 0.15}  # some change, some go
        for k in range(100 + len(days) * 5, 100 + len(days) * 5 + 5):
            rows[k] = (k, "new", "b")  # some come
    reference = snapshot_events(days)

    def load(name, order):
        metas = []
        for d in order:
            c = ApplyChanges(path=str(tmp_path / name), keys=["id"], sequenceBy=f"'{d}'",
                             source="snapshot", storedAs="scd2")
            metas.append(apply(spark.createDataFrame(days[d], "id INT, name STRING, "
                                                     "tier STRING"), c, spark, None))
        return metas
    shuffled = load("shuffled", ["2024-01-03", "2024-01-01", "2024-01-02", "2024-01-01"])
    assert not shuffled[-1]["applied"]  # the replay
    # equal to the days applied in order, one after the other (the reference)
    got = sorted(((r["id"], r["name"], r["tier"], r[START], r[END])
                  for r in table(spark, tmp_path / "shuffled")), key=lambda r: (r[0], r[3]))
    assert got == scd2(reference)
    # the current versions are the last snapshot
    assert sorted(r[:3] for r in got if r[4] is None) == days["2024-01-03"]
    # the log holds changes, not the snapshots
    log = spark.read.format("delta").load(str(tmp_path / "shuffled_changes"))
    assert log.count() < sum(map(len, days.values()))


def test_truncates_delete_every_key_also_keys_whose_changes_come_late(spark, tmp_path):
    c = ApplyChanges(path=str(tmp_path / "t"), keys=["id"], sequenceBy="seq",
                     applyAsDeletes="op = 'D'", applyAsTruncates="op = 'T'",
                     exceptColumnList=["op", "seq"])
    apply(spark.createDataFrame([(1, 1, "U", "a", "x"), (2, 2, "U", "b", "x"),
                                 (3, 3, "U", "c", "x")], SCHEMA), c, spark, None)
    meta = apply(spark.createDataFrame([(None, 5, "T", None, None), (1, 6, "U", "a2", "x")],
                                       SCHEMA), c, spark, None)
    assert meta["truncates"] == 1 and meta["rows_deleted"] == 2, meta
    # late: key 2 changed and key 4 came before the truncate; key 3 after it
    meta = apply(spark.createDataFrame([(2, 4, "U", "b2", "x"), (4, 3, "U", "d", "x"),
                                        (3, 7, "U", "c2", "x")], SCHEMA), c, spark, None)
    assert meta["late_changes"] == 2, meta  # both older than the truncate the table applied
    assert sorted((r["id"], r["name"]) for r in table(spark, c.path)) == [(1, "a2"), (3, "c2")]
    assert apply(spark.createDataFrame([(None, 5, "T", None, None)], SCHEMA), c, spark,
                 None)["applied"] is False


def test_tombstones_leave_the_log_after_their_retention_and_columns_can_be_added(
        spark, tmp_path):
    c = cfg(tmp_path, "t", "scd1", tombstoneRetention="0 seconds")
    apply(spark.createDataFrame([(1, 10, "U", "a", "x"), (2, 10, "U", "b", "x")], SCHEMA),
          c, spark, None)
    meta = apply(spark.createDataFrame([(1, 20, "D", None, None)], SCHEMA), c, spark, None)
    assert meta["tombstones_dropped"] == 1
    assert spark.read.format("delta").load(c.log_path).where("id = 1").count() == 0
    # an old change of key 1 now: once its tombstone is gone it is applied (while it is kept,
    # it is ignored: test_an_old_insert_after_a_delete_is_ignored...); and the feed gained a
    # column: the table gains it, null in the rows written before
    apply(spark.createDataFrame([(1, 15, "U", "late", "x", "l@x")], SCHEMA + ", email STRING"),
          c, spark, None)
    assert sorted((r["id"], r["name"], r["email"]) for r in table(spark, c.path)) == [
        (1, "late", "l@x"), (2, "b", None)]


def test_the_history_check_finds_overlaps_and_an_unorderable_sequence_is_refused(
        spark, tmp_path):
    from pipeline_defs.steps.cdc import check_history
    c = cfg(tmp_path, "t", "scd2")
    apply(spark.createDataFrame([(1, 1, "U", "a", "x"), (1, 5, "U", "b", "x"),
                                 (2, 1, "U", "c", "x")], SCHEMA), c, spark, None)
    ok = check_history(spark, c)
    assert ok.passed and ok.metadata["versions"] == 3 and ok.metadata["current_versions"] == 2
    # a second current version of key 1, and a version of key 2 overlapping its current one
    spark.createDataFrame([(1, "z", "x", 7, None), (2, "y", "x", 0, 3)],
                          f"id INT, name STRING, tier STRING, {START} INT, {END} INT") \
        .write.format("delta").mode("append").save(c.path)
    bad = check_history(spark, c)
    assert not bad.passed
    assert bad.metadata["keys_with_a_current_version_before_another"] == 1
    assert bad.metadata["overlapping_versions"] == 1
    with pytest.raises(StepDataError, match="sequenceBy map.*no order"):
        apply(spark.createDataFrame([(1, 1, "U", "a", "x")], SCHEMA),
              cfg(tmp_path, "m", "scd1").model_copy(update={"sequence_by": "map('s', seq)"}),
              spark, None)
