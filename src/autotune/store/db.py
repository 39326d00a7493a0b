"""The SQLite database: one file under the autotune home, WAL mode, numbered migrations.

WAL with ``synchronous=NORMAL`` keeps every committed transaction when the process is
killed (only a power cut can lose the last ones), while writers never block readers.
Migrations are numbered SQL scripts applied in order inside one transaction each; the
version lives in ``PRAGMA user_version``. The scripts are in :mod:`autotune.store.schema`.

A file that exists is checked before it is used (:func:`check_database`): an empty file, a
file that is not SQLite, or a damaged one is refused with :class:`DatabaseUnusable`, and
never replaced, since it may hold the only copy of someone's conversations.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from autotune.ground.errors import BackendError
from autotune.store.schema import MIGRATIONS

__all__ = ["Database", "DatabaseUnusable", "check_database"]

_SQLITE_HEADER = b"SQLite format 3\x00"


class DatabaseUnusable(BackendError):
    """The database file exists but cannot be used; the message names it and the way out.

    A :class:`BackendError` so that every command (and the API) reports it in one line.
    """

    status = 500
    code = "database_unusable"

    def __init__(self, path: Path, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"The database {path} {problem}; autotune will not touch it. Move it aside "
            f"(mv '{path}' '{path}.broken', and any -wal and -shm files beside it) and "
            "autotune starts with a new, empty one."
        )


def check_database(path: Path | str) -> str | None:
    """What is wrong with the database file at ``path``, or None when it is usable or absent.

    Cheap for a healthy file: a header read, then SQLite's ``quick_check`` (it reads every
    page once, without the index cross-checks of ``integrity_check``).
    """
    path = Path(path)
    if not path.exists():
        return None
    if not path.is_file():
        return "is not a file"
    wal = path.with_name(path.name + "-wal")
    if path.stat().st_size == 0:
        if not (wal.exists() and wal.stat().st_size > 0):
            return "is empty (0 bytes), so it is not an autotune database"
    else:
        with path.open("rb") as file:
            if file.read(len(_SQLITE_HEADER)) != _SQLITE_HEADER:
                return "is not an SQLite database"
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=30)
        try:
            verdict = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return f"cannot be read ({exc})"
    if verdict != "ok":
        said = " ".join(str(verdict).split())[:200]
        return f"is damaged (SQLite's quick_check says: {said})"
    return None


class Database:
    """A thread-safe connection to the autotune database (one writer at a time)."""

    def __init__(self, path: Path | str) -> None:
        """Open (or create) the database; raises :class:`DatabaseUnusable` for a file that
        exists but is empty, not SQLite, or damaged."""
        self.path = Path(path)
        if str(path) != ":memory:":
            problem = check_database(self.path)
            if problem is not None:
                raise DatabaseUnusable(self.path, problem)
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=30
        )
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA busy_timeout=30000")
        self.migrate()

    @property
    def version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> int:
        """Apply every migration newer than the file's version; returns the new version."""
        with self._lock:
            current = self.version
            for version, _name, sql in sorted(MIGRATIONS):
                if version <= current:
                    continue
                self._conn.execute("BEGIN IMMEDIATE")
                current = self.version  # another process may have migrated meanwhile
                if version <= current:
                    self._conn.execute("COMMIT")
                    continue
                try:
                    for statement in _split_sql(sql):
                        self._conn.execute(statement)
                    self._conn.execute(f"PRAGMA user_version = {int(version)}")
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                current = version
            return current

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``with db.transaction() as conn:`` commits on success, rolls back on error."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> int:
        """Run one statement in its own transaction; returns lastrowid."""
        with self._lock:
            return int(self._conn.execute(sql, params).lastrowid or 0)

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _split_sql(script: str) -> list[str]:
    """Split a migration script into statements, keeping trigger bodies whole."""
    statements, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements
