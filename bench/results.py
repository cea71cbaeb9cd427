"""bench/RESULTS.md: each benchmark owns one `## ` section and replaces only that one."""
from __future__ import annotations

from pathlib import Path

PATH = Path(__file__).resolve().parent / "RESULTS.md"


def write_section(section: str, body: str) -> None:
    text = PATH.read_text() if PATH.exists() else "# Benchmark results\n\n"
    if section in text:
        start = text.index(section)
        nxt = text.find("\n## ", start + len(section))
        text = text[:start] + body + (text[nxt + 1:] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    PATH.write_text(text)
