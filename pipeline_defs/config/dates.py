"""A run's logical time, and Java/Spark date-time patterns (`DateTimeFormatter` letters) to
format it with, in Python, giving the text Java gives (English names, as `Locale.US`).

The logical time is a local date-time in the timezone of what set it (a partition's, a
schedule's), without an offset: `2024-01-03T05:00:00`. A date alone is its midnight."""
from __future__ import annotations

import datetime as dt
import re


class BadDate(ValueError):
    """A ${DATE...} placeholder, a date pattern or a date value that cannot be read."""


_FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M",
            "%Y-%m-%d %H:%M:%S", "%Y-%m-%d-%H:%M")  # the last: Dagster's hourly keys


def parse_time(value: str) -> dt.datetime:
    """A logical time from `2024-01-03`, `2024-01-03T05:00[:00]` (an offset, if written, is
    dropped: the time is read as local), `2024-01-03 05:00` or an hourly partition key
    `2024-01-03-05:00`."""
    text = value.strip()
    for f in _FORMATS:
        try:
            return dt.datetime.strptime(text, f)
        except ValueError:
            continue
    try:
        return dt.datetime.fromisoformat(text).replace(tzinfo=None)
    except ValueError:
        raise BadDate(f"'{value}' is not a date (yyyy-MM-dd) or a date and time "
                      "(yyyy-MM-ddTHH:mm)") from None


def iso(t: dt.datetime) -> str:
    """The logical time as the `DATE` parameter holds it: `2024-01-03T05:00:00`."""
    return t.replace(tzinfo=None, microsecond=0).isoformat()


_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_QUARTERS = ["1st quarter", "2nd quarter", "3rd quarter", "4th quarter"]
LETTERS = "yMdDEHhmsawQ"


def _week_of_year(t: dt.datetime) -> int:
    """Java's `w` for Locale.US: weeks start on Sunday, week 1 holds January 1st (minimal
    days 1), and the days of December after the last Sunday are in week 1 of next year."""
    def week1_start(year: int) -> dt.date:
        jan1 = dt.date(year, 1, 1)
        return jan1 - dt.timedelta(days=(jan1.weekday() + 1) % 7)
    day = t.date()
    nxt = week1_start(day.year + 1)
    start = nxt if day >= nxt else week1_start(day.year)
    return (day - start).days // 7 + 1


def _text(names: list[str], i: int, n: int) -> str:
    """Java's text styles: 1-3 letters short, 4 full, 5 narrow."""
    name = names[i]
    return name[:3] if n <= 3 else name if n == 4 else name[0]


def _field(letter: str, n: int, t: dt.datetime) -> str:
    if letter == "y":
        return f"{t.year % 100:02d}" if n == 2 else f"{t.year:0{n}d}"
    if letter == "M":
        return f"{t.month:0{n}d}" if n <= 2 else _text(_MONTHS, t.month - 1, n)
    if letter == "Q":
        q = (t.month - 1) // 3 + 1
        return f"{q:0{n}d}" if n <= 2 else f"Q{q}" if n == 3 else \
            _QUARTERS[q - 1] if n == 4 else str(q)
    if letter == "E":
        return _text(_DAYS, t.weekday(), n)
    if letter == "a":
        return "AM" if t.hour < 12 else "PM"
    value = {"d": t.day, "D": t.timetuple().tm_yday, "H": t.hour, "h": (t.hour % 12) or 12,
             "m": t.minute, "s": t.second, "w": _week_of_year(t)}[letter]
    return f"{value:0{n}d}"


_MAX = {"d": 2, "D": 3, "H": 2, "h": 2, "m": 2, "s": 2, "w": 2, "M": 5, "Q": 5, "E": 5,
        "a": 1}


def java_format(t: dt.datetime, pattern: str) -> str:
    """`t` formatted as Java's DateTimeFormatter.ofPattern(pattern, Locale.US) formats it,
    for the letters y M d D E H h m s a w Q, 'quoted text' and '' (a quote)."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "'":
            if pattern.startswith("''", i):
                out.append("'")
                i += 2
                continue
            end = i + 1
            text = []
            while True:
                j = pattern.find("'", end)
                if j < 0:
                    raise BadDate(f"unclosed quote in date pattern '{pattern}'")
                text.append(pattern[end:j])
                if pattern.startswith("''", j):  # a quote inside quoted text
                    text.append("'")
                    end = j + 2
                    continue
                break
            out.append("".join(text))
            i = j + 1
            continue
        if ch.isascii() and ch.isalpha():
            n = len(re.match(f"{re.escape(ch)}+", pattern[i:]).group())
            if ch not in LETTERS:
                hint = " (a week-based year: did you mean 'yyyy'?)" if ch == "Y" else ""
                raise BadDate(f"'{ch * n}' in date pattern '{pattern}' is not supported{hint}; "
                              f"use the letters {', '.join(LETTERS)} and 'quoted text'")
            if n > _MAX.get(ch, 9):
                raise BadDate(f"'{ch * n}' in date pattern '{pattern}' has too many letters "
                              f"(at most {_MAX[ch]} for {ch})")
            out.append(_field(ch, n, t))
            i += n
            continue
        if ch in "[]{}#":
            raise BadDate(f"'{ch}' in date pattern '{pattern}' is reserved by Java's "
                          "patterns; put it in quotes ('{ch}') to write it")
        out.append(ch)
        i += 1
    return "".join(out)
