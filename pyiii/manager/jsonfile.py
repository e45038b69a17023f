"""Small JSON state files under ``.iii/`` (run records, engine.json, local-worker state).

Each is written whole and renamed into place, so a reader (another command, the next engine)
sees the old or the new document, never half of one; a missing or damaged file reads as empty,
because every such file only records what can be recomputed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ``{}`` when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_json(path: Path, document: Any) -> None:
    """Write ``document`` (indented, final newline) beside ``path`` and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, path)
