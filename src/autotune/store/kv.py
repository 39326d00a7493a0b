"""The KV files on disk and their index: which saved slot holds which tokens, checked by a checksum.

Files live in one folder, readable by the user alone (the engine writes them there: it is
each worker's ``slot_save_path``), under names that say nothing of their content. The
``kv_files`` table records each file's identity (model file, KV types, slots), the tokens it
holds and how many of them were its prompt, its size, its checksum (computed after the save,
off the request's path: a file without one is not restored yet), when it was last used, the
conversation it was saved from when the client named one, and a short preview of its prompt.
``kv_blocks`` holds each file's token chain, so the files that start like a prompt are one
indexed query away. The disk budget deletes the least recently used files first.
"""

from __future__ import annotations

import mmap
import os
import secrets
import struct
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import xxhash

from autotune.ground.kv import KvFile, Match, TokenChain
from autotune.store.db import Database

__all__ = ["KvStore", "file_checksum", "saved_tokens"]

#: llama.cpp's slot files start with this magic (``LLAMA_STATE_SEQ_MAGIC``, "ggsq").
_MAGIC = 0x67677371


def file_checksum(path: Path) -> str:
    """xxh3-64 of a file, as 16 hex digits (~10 GB/s: ~15 ms for a 6,000-token slot, where
    CRC-32 took ~150 ms)."""
    with path.open("rb") as file:
        if os.fstat(file.fileno()).st_size == 0:
            return xxhash.xxh3_64(b"").hexdigest()
        with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return xxhash.xxh3_64(data).hexdigest()


def saved_tokens(path: Path) -> list[int] | None:
    """The tokens a llama.cpp slot file holds, read from its header (None: not a slot file
    of a format this reads).

    The header (llama.cpp ``state_seq_save_file``): magic, version, a count of 32-bit words,
    then the words. From version 4 the words are the server's token list: -1, 1, the token
    count, the tokens, then a 0; before it, the words were the tokens themselves.
    """
    try:
        with path.open("rb") as file:
            head = file.read(12)
            if len(head) < 12:
                return None
            magic, version, words = struct.unpack("<III", head)
            if magic != _MAGIC or words > 1 << 26:
                return None
            raw = file.read(4 * words)
    except OSError:
        return None
    if len(raw) < 4 * words:
        return None
    values = list(struct.unpack(f"<{words}i", raw))
    if version < 4:
        return values
    if len(values) >= 3 and values[0] == -1 and values[1] == 1 and 3 + values[2] <= len(values):
        return values[3 : 3 + values[2]]
    return None


class KvStore:
    """The index of saved slots and the files behind it."""

    def __init__(self, db: Database, directory: Path) -> None:
        self.db = db
        self.directory = directory

    def prepare(self) -> int:
        """Make the folder the user's alone (0700) and remove the files the index does not
        know (saved before the index, or by a save whose record was lost); how many."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        known = {r["filename"] for r in self.db.query("SELECT filename FROM kv_files")}
        removed = 0
        for path in self.directory.glob("*.bin"):
            if path.name not in known:
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    @staticmethod
    def new_filename(identity: str) -> str:
        """A fresh name for a save: the identity, then random digits (nothing of the content)."""
        return f"{identity}-{secrets.token_hex(8)}.bin"

    def path(self, filename: str) -> Path:
        return self.directory / filename

    def record(self, file: KvFile, chain: TokenChain, model: str, preview: str = "") -> KvFile:
        """Index a file the engine has just written (its checksum comes later)."""
        path = self.path(file.filename)
        path.chmod(0o600)
        now = time.time()
        with self.db.transaction() as conn:
            conn.execute(
                "INSERT INTO kv_files (filename, identity, model, tokens, prompt_tokens, bytes,"
                " checksum, conversation_id, preview, created_at, last_used)"
                " VALUES (?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?)",
                (
                    file.filename,
                    file.identity,
                    model,
                    file.tokens,
                    file.prompt_tokens,
                    file.size,
                    file.conversation,
                    preview,
                    now,
                    now,
                ),
            )
            conn.executemany(
                "INSERT INTO kv_blocks (identity, hash, depth, filename) VALUES (?, ?, ?, ?)",
                [(file.identity, h, d + 1, file.filename) for d, h in enumerate(chain.hashes)],
            )
        return replace(file, last_used=now)

    def match(self, identity: str, chain: TokenChain) -> list[Match]:
        """The files of ``identity`` that start like ``chain``, each with the blocks shared."""
        if not chain.hashes:
            return []
        depth_of = {h: d + 1 for d, h in enumerate(chain.hashes)}
        marks = ",".join("?" * len(depth_of))
        rows = self.db.query(
            f"SELECT filename, hash, depth FROM kv_blocks WHERE identity = ? AND hash IN ({marks})",
            (identity, *depth_of),
        )
        shared: dict[str, int] = {}
        for r in rows:
            if depth_of.get(r["hash"]) == r["depth"]:  # the same prefix, not a collision
                shared[r["filename"]] = max(shared.get(r["filename"], 0), int(r["depth"]))
        if not shared:
            return []
        files = self._files("WHERE filename IN (" + ",".join("?" * len(shared)) + ")", shared)
        return [Match(f, shared[f.filename]) for f in files]

    def tokens_at(self, filename: str) -> list[int] | None:
        """The tokens a file holds, from its header (None: unreadable)."""
        return saved_tokens(self.path(filename))

    def size_of(self, filename: str) -> int | None:
        """A file's size (None: the engine wrote nothing)."""
        try:
            return self.path(filename).stat().st_size
        except OSError:
            return None

    def discard(self, filename: str) -> None:
        """Delete a file that was never indexed (its save could not be recorded)."""
        self.path(filename).unlink(missing_ok=True)

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
        if not rows or not path.is_file() or path.is_symlink():
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
        """Remove every file saved from a conversation's turns (it was deleted); how many."""
        files = self._files("WHERE conversation_id = ?", (conversation,))
        for f in files:
            self.remove(f)
        return len(files)

    def remove_all(self) -> int:
        """Remove every saved file; how many."""
        files = self.files()
        for f in files:
            self.remove(f)
        return len(files)

    def files(self) -> list[KvFile]:
        return self._files("", ())

    def rows(self) -> list[dict[str, Any]]:
        """Every file with its model, tokens, size, hits and preview, newest use first."""
        rows = self.db.query("SELECT * FROM kv_files ORDER BY last_used DESC, filename")
        return [dict(r) for r in rows]

    def _files(self, where: str, params: Any) -> list[KvFile]:
        rows = self.db.query(f"SELECT * FROM kv_files {where}", tuple(params))
        return [_file(r) for r in rows]


def _file(row: Any) -> KvFile:
    return KvFile(
        filename=row["filename"],
        identity=row["identity"],
        tokens=int(row["tokens"]),
        prompt_tokens=int(row["prompt_tokens"]),
        size=int(row["bytes"]),
        last_used=float(row["last_used"]),
        conversation=row["conversation_id"],
    )
