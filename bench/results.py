"""Shared by the benchmarks: whole-process timing, and bench/RESULTS.md, where each benchmark
owns one `## ` section and replaces only that one."""
from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

PATH = Path(__file__).resolve().parent / "RESULTS.md"
ROOT = PATH.parent.parent


def write_section(section: str, body: str) -> None:
    text = PATH.read_text() if PATH.exists() else "# Benchmark results\n\n"
    if section in text:
        start = text.index(section)
        nxt = text.find("\n## ", start + len(section))
        text = text[:start] + body.rstrip("\n") + "\n" + \
            ("\n" + text[nxt + 1:] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    PATH.write_text(text)


def timed(cmd: list[str], env: dict) -> float:
    """Wall time until the process ends (what the person at the terminal waits for). Output
    goes to a file, not a pipe: Spark's JVM inherits the pipe and finishes its shutdown after
    the Python process has ended, for either command alike."""
    with tempfile.TemporaryFile("w+") as out:
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        elapsed = time.perf_counter() - t
        if r.returncode != 0:
            out.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed:\n{out.read()[-3000:]}")
    return elapsed


def alternate(cmds: dict[str, tuple[list[str], dict]], env: dict, runs: int,
              digits: int = 1) -> dict[str, list[float]]:
    """Runs each (command, extra environment) `runs` times, in rounds where each command
    goes first in turn; returns the wall times by name."""
    times: dict[str, list[float]] = {k: [] for k in cmds}
    names = list(cmds)
    for i in range(runs):
        for name in names[i % len(names):] + names[:i % len(names)]:
            cmd, extra = cmds[name]
            times[name].append(timed(cmd, {**env, **extra}))
            print(f"run {i + 1} {name:<13} {times[name][-1]:6.{digits}f}s", flush=True)
    return times
