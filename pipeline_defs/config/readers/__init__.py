"""Pipeline files by format: each reader turns one file into a `Document` (the pipeline in
the one shape every format compiles to, the JSON format's, plus the line each step starts
at), or a `Problem` saying why it cannot. The loader validates every Document into the same
PipelineConfig, so nothing after this package knows which format a pipeline came from.

Adding a format is one module here and one line in READERS (its file suffix and its read
function); `pipeline_files` then finds its files in a directory like the JSON ones."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from pipeline_defs.common.errors import Problem
from pipeline_defs.config.readers import json_file, sql_file
from pipeline_defs.config.readers.document import Document

Reader = Callable[[Path], "Document | Problem | list[Problem]"]

# suffix -> reader
READERS: dict[str, Reader] = {
    ".json": json_file.read,
    ".sql": sql_file.read,
}

# files in a pipeline directory that are not pipelines (the JSON Schema `pipeline schema`
# writes beside them)
NOT_PIPELINES = (".schema.json",)


DEFAULT = ".json"  # a file named on the command line with another suffix is read as JSON


def read(path: Path) -> Document | Problem | list[Problem]:
    """The file read by the reader of its suffix."""
    return READERS.get(path.suffix.lower(), READERS[DEFAULT])(path)


def pipeline_files(paths: Iterable[str | Path]) -> list[Path]:
    """Directories expanded to the pipeline files in them (every format READERS knows), in
    name order; files given by name are kept whatever their suffix (read() then says)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(f for f in sorted(p.iterdir())
                       if f.is_file() and f.suffix.lower() in READERS
                       and not f.name.endswith(NOT_PIPELINES))
        else:
            out.append(p)
    return out
