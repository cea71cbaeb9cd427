"""`${DATE:pattern}` takes the letters of Java's DateTimeFormatter that make sense for a
date-time, and gives the text Java gives: checked against java.time itself (the test
session's JVM, Locale.US) on times spread over many years, every hour of a day and the
ends of years, where week numbers turn over."""
from __future__ import annotations

import datetime as dt
import random
import re

import pytest

from pipeline_defs.config.dates import BadDate, java_format, parse_time

PATTERNS = ["yyyy-MM-dd", "yyyyMMdd", "yy/M/d", "y", "yyy", "MMM", "MMMM", "MMMMM", "M",
            "d", "D", "DD", "DDD", "E", "EE", "EEE", "EEEE", "EEEEE", "H", "HH", "h", "hh",
            "m", "mm", "s", "ss", "a", "hh:mm a", "w", "ww", "Q", "QQ", "QQQ", "QQQQ",
            "QQQQQ", "yyyy-MM-dd'T'HH:mm:ss", "'week' w 'of' yyyy", "'it''s' H 'o''clock'",
            "''", "dd.MM.yyyy HH:mm", "EEE, d MMM yyyy"]


def _times() -> list[dt.datetime]:
    rnd = random.Random(7)
    out = [dt.datetime(2024, 1, 3, h, 7, 9) for h in range(24)]
    for year in (1999, 2000, 2015, 2020, 2021, 2024, 2026, 2027):  # week 1 edges
        for month, day in ((12, 25), (12, 28), (12, 29), (12, 30), (12, 31), (1, 1), (1, 2),
                           (1, 7)):
            out.append(dt.datetime(year, month, day, 23, 59, 58))
    out += [dt.datetime(2000, 1, 1) + dt.timedelta(seconds=rnd.randrange(10 ** 9))
            for _ in range(200)]
    return out


def test_patterns_format_as_java_formats_them(spark):
    jvm = spark._jvm
    us = jvm.java.util.Locale.US
    formatters = {p: jvm.java.time.format.DateTimeFormatter.ofPattern(p, us) for p in PATTERNS}
    checked = 0
    for t in _times():
        jt = jvm.java.time.LocalDateTime.of(t.year, t.month, t.day, t.hour, t.minute, t.second)
        for p, f in formatters.items():
            assert java_format(t, p) == f.format(jt), (t, p)
            checked += 1
    assert checked == len(_times()) * len(PATTERNS)


@pytest.mark.parametrize("pattern, message", [
    ("YYYY", "'YYYY' in date pattern 'YYYY' is not supported (a week-based year: did you "
             "mean 'yyyy'?)"),
    ("yyyyGG", "'GG' in date pattern 'yyyyGG' is not supported"),
    ("EEEEEE", "has too many letters (at most 5 for E)"),
    ("aa", "has too many letters (at most 1 for a)"),
    ("yyyy'", "unclosed quote"),
    ("yyyy[MM]", "'[' in date pattern 'yyyy[MM]' is reserved"),
])
def test_other_letters_are_refused_saying_why(pattern, message, spark):
    with pytest.raises(BadDate, match=re.escape(message)):
        java_format(dt.datetime(2024, 1, 3), pattern)


@pytest.mark.parametrize("text, want", [
    ("2024-01-03", dt.datetime(2024, 1, 3)),
    ("2024-01-03T05:00", dt.datetime(2024, 1, 3, 5)),
    ("2024-01-03T05:06:07", dt.datetime(2024, 1, 3, 5, 6, 7)),
    ("2024-01-03 05:06", dt.datetime(2024, 1, 3, 5, 6)),
    ("2024-01-03-05:00", dt.datetime(2024, 1, 3, 5)),  # an hourly partition key
    ("2024-01-03T05:00:00-05:00", dt.datetime(2024, 1, 3, 5)),  # local: offset dropped
])
def test_logical_times(text, want):
    assert parse_time(text) == want


def test_a_bad_time_says_how_to_write_one():
    with pytest.raises(BadDate, match="'2024-13-01' is not a date"):
        parse_time("2024-13-01")
