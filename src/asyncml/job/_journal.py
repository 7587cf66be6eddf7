"""The job's journal: a SQLite database (WAL) of what the job is and what it has committed.

One row per commit records which part files hold its output and dead letters, how many rows
of the input are done (always a prefix of the input) and where reading resumes. A commit
is one transaction, so after a crash the journal says exactly which parts count.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS commits (
    seq INTEGER PRIMARY KEY,
    next_row INTEGER NOT NULL,
    position INTEGER NOT NULL,
    ok INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    part TEXT,
    dead_part TEXT
);
"""


@dataclass(frozen=True, slots=True)
class Commit:
    """One committed step of a job; counts are totals since the job began.

    Attributes:
        seq: 1 for the first commit, then 2, 3, ...
        next_row: rows ``0 .. next_row - 1`` are done (written or dead-lettered).
        position: where reading the input resumes (a byte offset, or a row for Parquet).
        ok: rows written to the output so far.
        failed: rows dead-lettered so far.
        part: file name of this commit's output part, if it wrote rows.
        dead_part: file name of this commit's dead letters, if any.
    """

    seq: int
    next_row: int
    position: int
    ok: int
    failed: int
    part: str | None
    dead_part: str | None


class Journal:
    """A job's journal file. Its methods block: call them from a thread."""

    def __init__(self, path: Path):
        self.path = path
        # Used from one thread at a time, though not always the same one.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # a commit survives power loss
            self._db.executescript(_SCHEMA)
        except BaseException:
            self._db.close()
            raise

    def get(self, key: str) -> Any:
        """A value stored with :meth:`begin` or :meth:`set`, or ``None``."""
        row = self._db.execute("SELECT value FROM job WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set(self, key: str, value: Any) -> None:
        """Stores ``value`` (JSON) under ``key``, durably."""
        self._db.execute(
            "INSERT OR REPLACE INTO job (key, value) VALUES (?, ?)", (key, json.dumps(value))
        )

    def begin(self, facts: dict[str, Any]) -> None:
        """Forgets any earlier job and records this one's ``facts``, in one transaction."""
        with self._transaction():
            self._db.execute("DELETE FROM commits")
            self._db.execute("DELETE FROM job")
            for key, value in facts.items():
                self.set(key, value)

    def record(self, commit: Commit) -> None:
        """Adds ``commit``, durably, in one transaction."""
        with self._transaction():
            self._db.execute(
                "INSERT INTO commits VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    commit.seq,
                    commit.next_row,
                    commit.position,
                    commit.ok,
                    commit.failed,
                    commit.part,
                    commit.dead_part,
                ),
            )

    def commits(self) -> list[Commit]:
        """Every commit, in order."""
        rows = self._db.execute("SELECT * FROM commits ORDER BY seq").fetchall()
        return [Commit(*row) for row in rows]

    def last(self) -> Commit | None:
        """The latest commit, if any."""
        row = self._db.execute("SELECT * FROM commits ORDER BY seq DESC LIMIT 1").fetchone()
        return None if row is None else Commit(*row)

    def close(self) -> None:
        """Closes the database (its WAL is checkpointed into the file)."""
        self._db.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def remove_journal(path: Path) -> None:
    """Deletes a closed journal and its WAL side files."""
    for suffix in ("-wal", "-shm", ""):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
