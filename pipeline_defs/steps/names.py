"""Column names put into Spark SQL text: always as quoted identifiers, so a name holding a
backtick, a space or a dot stays one name."""
from __future__ import annotations


def quoted(name: str) -> str:
    """`name` as a Spark SQL identifier: `a``b` for a`b."""
    return "`" + name.replace("`", "``") + "`"
