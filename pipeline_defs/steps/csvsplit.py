"""Whether local CSV files can be read split (several tasks per file) without changing a row.

RFC 4180 lets a quoted field hold line breaks; Spark's CSV reader only reads such files right
with `multiLine`, which reads each file with one task (a 750 MB file then parses on one core
while the others wait: 2.3 s of an 11 s read on 2 cores at TPC-H scale 1). With `"` as quote
and escape (a quote inside a field is doubled), a line break is inside a quoted field exactly
when an odd number of quotes precede it, so one pass over the bytes answers the question:
~1.2 GB/s on 2 cores, in chunks scanned in parallel (numpy releases the GIL) and combined by
the parity of the quotes before each chunk.

Only plain local files are scanned (not s3a://, hdfs://, compressed files, other encodings
or quote characters): anything else keeps multiLine, which is always right.

`prescan` starts the scans of a pipeline's CSV inputs in the background (`pipeline run` calls
it while the JVM and Dagster start); a step then finds its answer ready. Answers are kept per
file, keyed by size and modification time, so a changed file is scanned again.
"""
from __future__ import annotations

import itertools
import mmap
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

CHUNK = 1 << 25
SCAN_LIMIT = 16 << 30  # beyond this much CSV, reading it split is not decided by a scan
COMPRESSED = (".gz", ".bz2", ".zst", ".zstd", ".lz4", ".snappy", ".deflate", ".xz", ".zip")
ASCII_ENCODINGS = {"utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin1"}


def local_files(path: str) -> list[Path] | None:
    """The data files a Spark read of `path` can see, or None when that is not a local path
    this module can list (another scheme, a Hadoop glob)."""
    if "://" in path and not path.startswith("file://"):
        return None
    path = path.removeprefix("file://")
    if any(c in path for c in "*?[{"):
        return None
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        return None
    return sorted(_walk(p))


def _walk(d: Path) -> Iterator[Path]:
    for entry in os.scandir(d):
        if entry.name.startswith(("_", ".")):  # Spark's hidden files (_SUCCESS, .crc)
            continue
        if entry.is_dir():
            yield from _walk(Path(entry.path))
        elif entry.is_file():
            yield Path(entry.path)


def splittable(path: str, options: dict[str, str], files: list[Path] | None = None) -> bool:
    """True when every file under `path` (`files`, when the caller listed them already) is
    plain CSV whose quoted fields hold no line break: reading it without multiLine gives the
    same rows, in parallel."""
    opts = {k.lower(): v for k, v in options.items()}
    if opts.get("quote", '"') != '"' or opts.get("escape", '"') != '"' or "linesep" in opts:
        return False
    if (opts.get("encoding") or opts.get("charset") or "utf-8").lower() not in ASCII_ENCODINGS:
        return False
    files = local_files(path) if files is None else files
    if not files or any(f.name.lower().endswith(COMPRESSED) for f in files):
        return False
    if sum(f.stat().st_size for f in files) > SCAN_LIMIT:
        return False
    return not any(quoted_line_break(f) for f in files)


_answers: dict[tuple[str, int, int], Future] = {}
_answers_lock = threading.Lock()


def quoted_line_break(path: Path) -> bool:
    """Whether a line break in the file lies inside a quoted field (scanned once per
    version of the file; a scan under way in the background is waited for)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _answers_lock:
        answer, mine = _answers.get(key), False
        if answer is None:
            answer, mine = _answers.setdefault(key, Future()), True
    if mine:
        try:
            answer.set_result(_quoted_line_break(path))
        except BaseException as e:  # noqa: BLE001 - whoever waits gets it too
            answer.set_exception(e)
            with _answers_lock:
                _answers.pop(key, None)
    return answer.result()


def prescan(inputs: Iterable[tuple[str, dict[str, str]]]) -> threading.Thread | None:
    """Answers `splittable` for these (path, reader options) in a background thread, so the
    steps reading them find the answer ready. Never raises: a step scans (or fails) itself."""
    todo = [(p, o) for p, o in inputs if local_files(p) is not None]
    if not todo:
        return None

    def run() -> None:
        for path, options in todo:
            try:
                splittable(path, options)
            except Exception:  # noqa: BLE001 - the step will meet the problem and report it
                pass
    t = threading.Thread(target=run, name="csv-prescan", daemon=True)
    t.start()
    return t


def _quoted_line_break(path: Path) -> bool:
    if path.stat().st_size == 0:
        return False
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if mm.find(b'"') < 0:
            return False
        cr = mm.find(b"\r") >= 0
        chunks = _scan(mm, cr)  # returns holding no view of the map, so it can close
    parity = 0
    for quotes_odd, inside_if_even, inside_if_odd in chunks:
        if inside_if_odd if parity else inside_if_even:
            return True
        parity ^= quotes_odd
    return False


def _scan(mm: mmap.mmap, cr: bool) -> list[tuple[int, bool, bool]]:
    data = np.frombuffer(mm, dtype=np.uint8)
    with ThreadPoolExecutor(min(8, os.cpu_count() or 2)) as pool:
        return list(pool.map(_chunk, (data[s:s + CHUNK] for s in range(0, len(data), CHUNK)),
                             itertools.repeat(cr)))


_buffers = threading.local()


def _chunk(a: np.ndarray, cr: bool) -> tuple[int, bool, bool]:
    """(odd number of quotes in the chunk, a line break inside quotes if the chunk starts
    outside a quoted field, the same if it starts inside one).

    One pass finds every quote and line break (into two masks kept per thread: a fresh
    32 MB array per comparison costs its page faults), then the parity of the quotes before
    each break is read off the short list of those bytes: 0.52 s of CPU for TPC-H's 766 MB
    lineitem, against 0.72 s with a position list per character (measured side by side)."""
    n = a.size
    masks = getattr(_buffers, "masks", None)
    if masks is None or masks[0].size < n:
        masks = _buffers.masks = (np.empty(max(n, CHUNK), bool), np.empty(max(n, CHUNK), bool))
    special, other = masks[0][:n], masks[1][:n]
    np.equal(a, 34, out=special)
    special |= np.equal(a, 10, out=other)
    if cr:
        special |= np.equal(a, 13, out=other)
    found = a[np.flatnonzero(special)]
    quote = found == 34
    before = np.cumsum(quote, dtype=np.int64) & 1  # odd quotes up to each special byte
    odd_at_break = before[~quote]  # (a break is no quote: "up to" = "before" there)
    return (int(before[-1]) if before.size else 0, bool(odd_at_break.any()),
            bool(odd_at_break.size and not odd_at_break.all()))
