"""The KV files on disk and their index: whose saved slot is where, checked by a checksum.

Files live in one folder (the engine writes them there: it is each worker's
``slot_save_path``), named ``<identity>-<conversation digest>.bin`` so that no conversation
id ever reaches a file name. The ``kv_files`` table records, per (conversation, identity),
the tokens a file holds, its size, its CRC-32 (computed after the save, off the request's
path: a file without one is not restored yet), and when it was last used. The disk budget
deletes the least recently used files first.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from pathlib import Path
from typing import Any

from autotune.ground.kv import KvFile
from autotune.store.db import Database

__all__ = ["KvStore", "file_checksum"]

_CHUNK = 1 << 20


def file_checksum(path: Path) -> str:
    """CRC-32 of a file, as 8 hex digits (about 1.5 GB/s: a few ms per conversation)."""
    crc = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


class KvStore:
    """The index of saved slots and the files behind it."""

    def __init__(self, db: Database, directory: Path) -> None:
        self.db = db
        self.directory = directory

    @staticmethod
    def filename(conversation: str, identity: str) -> str:
        digest = hashlib.sha256(conversation.encode("utf-8", "surrogatepass")).hexdigest()[:24]
        return f"{identity}-{digest}.bin"

    def path(self, filename: str) -> Path:
        return self.directory / filename

    def get(self, conversation: str, identity: str) -> KvFile | None:
        rows = self.db.query(
            "SELECT * FROM kv_files WHERE conversation_id = ? AND identity = ?",
            (conversation, identity),
        )
        return _file(rows[0]) if rows else None

    def saved(
        self, conversation: str, identity: str, model: str, filename: str, tokens: int
    ) -> KvFile:
        """Record a file the engine has just written (its checksum comes later)."""
        size = self.path(filename).stat().st_size
        now = time.time()
        self.db.execute(
            "INSERT INTO kv_files (conversation_id, identity, model, filename, tokens, bytes,"
            " checksum, created_at, last_used) VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?)"
            " ON CONFLICT (conversation_id, identity) DO UPDATE SET model = excluded.model,"
            " filename = excluded.filename, tokens = excluded.tokens, bytes = excluded.bytes,"
            " checksum = NULL, last_used = excluded.last_used",
            (conversation, identity, model, filename, tokens, size, now, now),
        )
        return KvFile(conversation, identity, filename, tokens, size, now)

    def seal(self, file: KvFile) -> None:
        """Compute and record the checksum of a file just saved (run it off the event loop)."""
        path = self.path(file.filename)
        if path.exists() and path.stat().st_size == file.size:
            self.db.execute(
                "UPDATE kv_files SET checksum = ? WHERE filename = ? AND bytes = ?",
                (file_checksum(path), file.filename, file.size),
            )

    def verify(self, file: KvFile) -> str | None:
        """Why this file must not be restored, or None when it is whole and unchanged."""
        rows = self.db.query("SELECT checksum FROM kv_files WHERE filename = ?", (file.filename,))
        path = self.path(file.filename)
        if not rows or not path.is_file():
            return "the file is missing"
        if path.stat().st_size != file.size:
            return f"the file is {path.stat().st_size} bytes, {file.size} were saved"
        expected = rows[0]["checksum"]
        if expected is None:
            return "its checksum is not computed yet"
        if file_checksum(path) != expected:
            return "its checksum does not match: the file changed after it was saved"
        return None

    def used(self, file: KvFile) -> None:
        self.db.execute(
            "UPDATE kv_files SET last_used = ?, hits = hits + 1 WHERE filename = ?",
            (time.time(), file.filename),
        )

    def remove(self, file: KvFile) -> None:
        self.db.execute("DELETE FROM kv_files WHERE filename = ?", (file.filename,))
        self.path(file.filename).unlink(missing_ok=True)

    def forget_conversation(self, conversation: str) -> int:
        """Remove every file of a conversation (it was deleted); returns how many."""
        files = [
            _file(r)
            for r in self.db.query(
                "SELECT * FROM kv_files WHERE conversation_id = ?", (conversation,)
            )
        ]
        for f in files:
            self.remove(f)
        return len(files)

    def files(self) -> list[KvFile]:
        return [_file(r) for r in self.db.query("SELECT * FROM kv_files")]

    def rows(self) -> list[dict[str, Any]]:
        """Every file with its conversation, model, size and hits, newest use first."""
        rows = self.db.query("SELECT * FROM kv_files ORDER BY last_used DESC")
        return [dict(r) for r in rows]


def _file(row: Any) -> KvFile:
    return KvFile(
        conversation=row["conversation_id"],
        identity=row["identity"],
        filename=row["filename"],
        tokens=int(row["tokens"]),
        size=int(row["bytes"]),
        last_used=float(row["last_used"]),
    )
