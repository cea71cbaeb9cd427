"""Where the project's files are: the repository (its .cache/) and the connector jars."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def default_jars_dir() -> Path:
    return Path(os.environ.get("PIPELINE_JARS_DIR", REPO_ROOT / ".cache" / "jars"))
