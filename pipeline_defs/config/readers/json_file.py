"""The JSON format: the original application's files, read unchanged."""
from __future__ import annotations

import json
from pathlib import Path

from pipeline_defs.common.errors import Problem
from pipeline_defs.config.readers.document import Document


def read(path: Path) -> Document | Problem:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Problem(str(path), "file not found.", fix="Check the path.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return Problem(str(path), f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}.",
                       fix="Fix the JSON syntax (a trailing comma or a missing quote?).")
    if not isinstance(data, dict):
        return Problem(str(path), "the top level must be a JSON object with name and steps.")
    return Document(data, step_lines(text))


def step_lines(text: str) -> list[int]:
    """The line (1-based) where each element of the top-level "steps" array begins, read off
    the JSON text (for code references: "open in editor" at the step)."""
    lines, depth, i, line, in_steps, key = [], 0, 0, 1, False, None
    while i < len(text):
        c = text[i]
        if c == "\n":
            line += 1
        elif c == '"':
            j = i + 1
            while j < len(text) and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            if depth == 1:
                key = text[i + 1:j]
            line += text.count("\n", i, j)
            i = j
        elif c in "[{":
            if depth == 1 and c == "[" and key == "steps":
                in_steps = True
            elif depth == 2 and in_steps and c == "{":
                lines.append(line)
            depth += 1
        elif c in "]}":
            depth -= 1
            if depth == 1:
                in_steps = False
        i += 1
    return lines
