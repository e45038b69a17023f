"""Opening a SQLite file the way every adapter needs it, and atomic read-modify-write.

WAL mode with a 5 s busy timeout lets several engines share a file; autocommit mode plus an
explicit ``BEGIN IMMEDIATE`` makes each read-modify-write one transaction that takes the write
lock up front, so two engines never interleave inside it.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable


def db_path(config: dict[str, Any], project_dir: Path, default_file: str) -> Path:
    """An adapter's ``file_path`` (else the worker's default), relative to the project."""
    path = Path(config.get("file_path") or default_file)
    return path if path.is_absolute() else project_dir / path


def open_db(path: Path, synchronous: str = "normal") -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, timeout=5.0, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    return db


def atomic(db: sqlite3.Connection, body: Callable[[], Any]) -> Any:
    db.execute("BEGIN IMMEDIATE")
    try:
        result = body()
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result
