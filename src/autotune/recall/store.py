"""The recall tables in SQLite: an FTS5 index over messages kept in step by triggers, and vectors.

The full-text index is an *external-content* FTS5 table over ``messages.content``: triggers
on INSERT, DELETE and UPDATE keep it in step inside the writer's own transaction, so a turn
that committed is searchable and a crash cannot leave the two apart. Vectors are float32
BLOBs keyed by (message id, embedder name) and searched with numpy, because this Python's
sqlite3 cannot load extensions.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from autotune.store.db import Database
from autotune.store.schema import MIGRATIONS

__all__ = [
    "RECALL_MIGRATION",
    "SEARCHABLE_ROLES",
    "RecallStore",
    "VectorIndex",
    "fts_query",
]

#: Roles whose messages are searched and embedded (tool output and system prompts are not).
SEARCHABLE_ROLES: tuple[str, ...] = ("user", "assistant")

#: Migration 3, listed in :mod:`autotune.store.schema` (the one place migrations live).
RECALL_MIGRATION: tuple[int, str, str] = next(m for m in MIGRATIONS if m[0] == 3)


# --------------------------------------------------------------------------- FTS queries

# What FTS5's unicode61 tokenizer keeps as token characters: letters, digits (and marks).
_TOKEN = re.compile(r"[^\W_]+", re.UNICODE)
_STOPWORD_TEXT = """
    a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves get got im ive id dont doesnt cant wont whats thats s t don doesn isn aren"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_MAX_TERMS = 32


def fts_query(text: str) -> str | None:
    """Turn any user text into a safe FTS5 query: an OR of quoted terms, or None if none.

    Words are cut where FTS5's own tokenizer would cut them, so ``C++``, ``"unterminated``,
    ``AND(``, ``NEAR``, ``*`` or a lone ``-`` are just text: each term is wrapped in double
    quotes, which makes FTS5 read it as a string and never as an operator. Common English
    words are dropped unless nothing else is left; at most 32 distinct terms are kept. OR
    (not AND) lets BM25 rank a message that shares only some of the words.
    """
    tokens = [t.lower() for t in _TOKEN.findall(text)]
    terms = [t for t in tokens if t not in _STOPWORDS] or tokens
    unique = list(dict.fromkeys(terms))[:_MAX_TERMS]
    if not unique:
        return None
    return " OR ".join(f'"{term}"' for term in unique)


# --------------------------------------------------------------------------- vectors


@dataclass(frozen=True)
class VectorIndex:
    """Every stored vector of one embedder: message ids and a (n, dim) float32 matrix."""

    model: str
    ids: np.ndarray
    matrix: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def nearest(self, query: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """The ``limit`` message ids with the highest cosine similarity to ``query``."""
        if len(self) == 0 or limit <= 0:
            return []
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self.matrix.shape[1]:
            raise ValueError(
                f"query has {q.shape[0]} dimensions but {self.model} vectors have "
                f"{self.matrix.shape[1]}"
            )
        norm = float(np.linalg.norm(q))
        if norm == 0.0:
            return []
        sims = self.matrix @ (q / norm)
        k = min(limit, sims.shape[0])
        top = np.argpartition(-sims, k - 1)[:k]
        top = top[np.argsort(-sims[top], kind="stable")]
        return [(int(self.ids[i]), float(sims[i])) for i in top]


def _normalised(vectors: np.ndarray) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {matrix.shape}")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return (matrix / norms).astype("<f4", copy=False)


# --------------------------------------------------------------------------- the store


class RecallStore:
    """Reads and writes of the recall tables; opening one makes sure migration 3 is applied."""

    def __init__(self, db: Database) -> None:
        db.migrate()
        self.db = db
        self._cache: dict[str, tuple[tuple[int, int], VectorIndex]] = {}
        self._cache_lock = threading.Lock()

    # ---- full text

    def search_fts(
        self, query: str, *, limit: int = 50, roles: Sequence[str] = SEARCHABLE_ROLES
    ) -> list[tuple[int, float]]:
        """(message id, BM25 score) best first; BM25 here is "higher is better" (negated)."""
        match = fts_query(query)
        if match is None or limit <= 0:
            return []
        marks = ",".join("?" for _ in roles)
        rows = self.db.query(
            "SELECT f.rowid AS id, bm25(messages_fts) AS rank FROM messages_fts f"
            " JOIN messages m ON m.id = f.rowid"
            f" WHERE messages_fts MATCH ? AND m.role IN ({marks})"
            " ORDER BY rank LIMIT ?",
            (match, *roles, limit),
        )
        return [(int(r["id"]), -float(r["rank"])) for r in rows]

    def integrity_check(self) -> None:
        """Raise ``sqlite3.DatabaseError`` if the FTS index disagrees with the messages table."""
        # rank = 1 also compares the index with the external content table (the messages).
        self.db.execute(
            "INSERT INTO messages_fts (messages_fts, rank) VALUES ('integrity-check', 1)"
        )

    # ---- vectors

    def pending(
        self, model: str, *, limit: int = 64, roles: Sequence[str] = SEARCHABLE_ROLES
    ) -> list[tuple[int, str]]:
        """Up to ``limit`` (message id, text) lacking a vector from ``model``, oldest first."""
        marks = ",".join("?" for _ in roles)
        rows = self.db.query(
            "SELECT m.id, m.content FROM messages m"
            f" WHERE m.role IN ({marks}) AND trim(m.content) != ''"
            " AND NOT EXISTS (SELECT 1 FROM message_vectors v"
            "                 WHERE v.message_id = m.id AND v.model = ?)"
            " ORDER BY m.id LIMIT ?",
            (*roles, model, limit),
        )
        return [(int(r["id"]), str(r["content"])) for r in rows]

    def count_pending(self, model: str, *, roles: Sequence[str] = SEARCHABLE_ROLES) -> int:
        marks = ",".join("?" for _ in roles)
        rows = self.db.query(
            "SELECT COUNT(*) FROM messages m"
            f" WHERE m.role IN ({marks}) AND trim(m.content) != ''"
            " AND NOT EXISTS (SELECT 1 FROM message_vectors v"
            "                 WHERE v.message_id = m.id AND v.model = ?)",
            (*roles, model),
        )
        return int(rows[0][0])

    def has_vectors(self, model: str, *, exclude: Sequence[str] = ()) -> bool:
        """Whether any message outside the ``exclude`` conversations has a vector of ``model``."""
        outside = f" AND m.conversation_id NOT IN ({','.join('?' for _ in exclude)})"
        rows = self.db.query(
            "SELECT 1 FROM message_vectors v JOIN messages m ON m.id = v.message_id"
            f" WHERE v.model = ?{outside if exclude else ''} LIMIT 1",
            (model, *exclude),
        )
        return bool(rows)

    def put_vectors(self, model: str, ids: Sequence[int], vectors: np.ndarray) -> int:
        """Store (or replace) one L2-normalised float32 vector per message id; returns how many."""
        matrix = _normalised(vectors)
        if matrix.shape[0] != len(ids):
            raise ValueError(f"{len(ids)} message ids but {matrix.shape[0]} vectors")
        now = time.time()
        dim = int(matrix.shape[1])
        rows: Iterable[tuple[Any, ...]] = (
            (int(i), model, dim, matrix[n].tobytes(), now) for n, i in enumerate(ids)
        )
        with self.db.transaction() as conn:
            # A message deleted since it was read is skipped rather than failing the batch.
            conn.executemany(
                "INSERT OR REPLACE INTO message_vectors (message_id, model, dim, vector,"
                " created_at) SELECT ?, ?, ?, ?, ? WHERE EXISTS"
                " (SELECT 1 FROM messages WHERE id = ?1)",
                rows,
            )
        return len(ids)

    def vectors(self, model: str) -> VectorIndex:
        """Every vector of ``model`` as one matrix, cached; new rows are appended, not re-read."""
        stamp_row = self.db.query(
            "SELECT COUNT(*), COALESCE(MAX(id), 0) FROM message_vectors WHERE model = ?", (model,)
        )[0]
        stamp = (int(stamp_row[0]), int(stamp_row[1]))
        with self._cache_lock:
            cached = self._cache.get(model)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if cached is not None and stamp[1] > cached[0][1]:
            # Only inserts since (row ids only grow): read the new rows and append them.
            ids, matrix = self._read_vectors(model, after=cached[0][1])
            if cached[0][0] + len(ids) == stamp[0] and (
                len(cached[1]) == 0 or matrix.shape[1] == cached[1].matrix.shape[1]
            ):
                old = cached[1]
                index = VectorIndex(
                    model,
                    np.concatenate([old.ids, ids]),
                    np.concatenate([old.matrix, matrix]) if len(old) else matrix,
                )
                with self._cache_lock:
                    self._cache[model] = (stamp, index)
                return index
        ids, matrix = self._read_vectors(model)
        index = VectorIndex(model, ids, matrix)
        with self._cache_lock:
            self._cache[model] = (stamp, index)
        return index

    def _read_vectors(self, model: str, *, after: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rows = self.db.query(
            "SELECT message_id, dim, vector FROM message_vectors WHERE model = ? AND id > ?"
            " ORDER BY id",
            (model, after),
        )
        dims = {int(r["dim"]) for r in rows}
        if len(dims) > 1:
            raise ValueError(f"vectors of {model} have mixed dimensions {sorted(dims)}")
        dim = dims.pop() if dims else 0
        ids = np.fromiter((int(r["message_id"]) for r in rows), dtype=np.int64, count=len(rows))
        blob = b"".join(r["vector"] for r in rows)
        matrix = np.frombuffer(blob, dtype="<f4").reshape(len(rows), dim).astype(np.float32)
        return ids, matrix

    # ---- rows for hits

    def messages(self, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
        """Message rows joined with their conversation, by message id."""
        wanted = list(dict.fromkeys(int(i) for i in ids))
        found: dict[int, dict[str, Any]] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ",".join("?" for _ in chunk)
            rows = self.db.query(
                "SELECT m.id, m.conversation_id, m.seq, m.role, m.content, m.created_at,"
                " c.title, c.model FROM messages m JOIN conversations c"
                f" ON c.id = m.conversation_id WHERE m.id IN ({marks})",
                tuple(chunk),
            )
            found.update({int(r["id"]): dict(r) for r in rows})
        return found
