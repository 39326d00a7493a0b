"""Recall over stored conversations: hybrid search, memories for a new session, indexing, import.

Search is hybrid: FTS5's BM25 ranking and cosine similarity over the stored vectors are
fused by weighted reciprocal rank fusion, one hit per conversation: a conversation ranked
``r`` in a list gains ``weight / (k + r)``. Without an embedder everything falls back to
full-text search, and :meth:`RecallManager.memories_for` (which needs a calibrated
similarity) returns nothing.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autotune.recall.embed import Embedder
from autotune.recall.store import SEARCHABLE_ROLES, RecallStore, fts_query
from autotune.store.conversations import content_text, message_extra, title_from
from autotune.store.db import Database

__all__ = [
    "FTS_WEIGHT",
    "MEMORY_THRESHOLD",
    "RRF_K",
    "BadLine",
    "ConversationSummary",
    "Hit",
    "ImportReport",
    "RecallManager",
]

#: Cosine similarity (all-MiniLM-L6-v2) from which a past conversation is recalled as a
#: memory. It maximises F1 (P 0.91, R 1.00, F1 0.955; 0.38 gave 0.944, 0.41 gave 0.929) on
#: the labelled questions in ``tests/fixtures/recall``, which re-checks it
#: (``tests/unit/test_recall_quality.py``); another embedder needs its own value.
MEMORY_THRESHOLD = 0.39
#: Reciprocal rank fusion constant and the weight of the full-text list (vectors weigh 1).
#: The textbook k = 60 with equal weights let conversations that merely share one common
#: word outvote the vector ranking (92.9 % top-3 on the labelled paraphrases); a small k,
#: which rewards a top rank in either list, and half weight for BM25 gave 100 % on
#: paraphrases and keyword look-ups alike. Chosen on half of the queries, such settings
#: scored 100 % on the other half, where k = 60 scored 93-96 %.
RRF_K = 5
FTS_WEIGHT = 0.5

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


@dataclass
class Hit:
    """One conversation found by a search, represented by its best-matching message."""

    conversation_id: str
    message_id: int
    seq: int
    role: str
    #: Higher is better: RRF score (hybrid), negated BM25 (full text) or cosine (vectors).
    score: float
    snippet: str
    title: str | None
    created_at: float
    model: str | None
    #: Cosine similarity to the query when an embedder is in use and the message has a vector.
    similarity: float | None = None
    #: BM25 relevance (higher is better) when the message matched the full-text query.
    bm25: float | None = None
    #: Which ranking found it: ``hybrid``, ``fts`` or ``vector``.
    source: str = "hybrid"


@dataclass
class ConversationSummary:
    """A past conversation in brief: when, with which model, and how it began."""

    id: str
    title: str | None
    model: str | None
    created_at: float
    updated_at: float
    message_count: int
    snippet: str


@dataclass
class BadLine:
    """A JSONL line that was not imported, and why."""

    line: int
    reason: str


@dataclass
class ImportReport:
    """What an import did: counts, and every line it skipped with the reason."""

    path: str
    lines: int = 0
    imported: int = 0
    updated: int = 0
    unchanged: int = 0
    messages: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad_lines


class _BadRecord(ValueError):
    pass


# --------------------------------------------------------------------------- helpers

_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def _snippet(text: str, query: str, width: int = 200) -> str:
    """About ``width`` characters of ``text`` around the first query term found in it."""
    flat = " ".join(text.split())
    if len(flat) <= width:
        return flat
    lower = flat.lower()
    positions = [
        lower.find(term)
        for term in (w.lower() for w in _WORD.findall(query))
        if len(term) > 2 and lower.find(term) >= 0
    ]
    centre = min(positions) if positions else 0
    start = max(0, min(centre - width // 3, len(flat) - width))
    end = start + width
    return ("…" if start > 0 else "") + flat[start:end].strip() + ("…" if end < len(flat) else "")


def _timestamp(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise _BadRecord("created_at must be unix seconds or an ISO 8601 date")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            parsed = _dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _BadRecord(f"created_at {value!r} is not an ISO 8601 date") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=_dt.timezone.utc)
        return parsed.timestamp()
    raise _BadRecord("created_at must be unix seconds or an ISO 8601 date")


def _parse_record(raw: bytes) -> dict[str, Any]:
    """Validate one JSONL line into {id, title, model, created_at, messages}."""
    record = _json_object(raw)
    return {
        "id": _conversation_id(record.get("id")),
        "title": _optional_text(record, "title"),
        "model": _optional_text(record, "model"),
        "created_at": _timestamp(record.get("created_at")),
        "messages": _messages(record.get("messages")),
    }


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadRecord(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _BadRecord(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(record, dict):
        raise _BadRecord(f"expected a JSON object, got {type(record).__name__}")
    return record


def _conversation_id(value: Any) -> str:
    """The record's id: a non-empty string (a whole number is taken as its digits)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise _BadRecord('missing "id" (a non-empty string)')
    return value


def _optional_text(record: dict[str, Any], key: str) -> str | None:
    value = record.get(key)
    if value is not None and not isinstance(value, str):
        raise _BadRecord(f'"{key}" must be a string')
    return value


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list) or not messages:
        raise _BadRecord('"messages" must be a non-empty list')
    for n, message in enumerate(messages, 1):
        _check_message(n, message)
    return messages


def _check_message(n: int, message: Any) -> None:
    if not isinstance(message, dict):
        raise _BadRecord(f"message {n} is not an object")
    role = message.get("role")
    if role not in _ROLES:
        raise _BadRecord(f"message {n} has an unknown role {role!r}")
    content = message.get("content")
    if content is not None and not isinstance(content, (str, list)):
        raise _BadRecord(f"message {n} content must be a string or a list of parts")


def _insert_messages(
    conn: sqlite3.Connection,
    conv_id: str,
    messages: list[dict[str, Any]],
    texts: list[tuple[str, str]],
    after: int,
    created: float,
) -> None:
    """Store the messages past the first ``after`` (those already stored) as turns."""
    for seq, (message, (role, text)) in enumerate(zip(messages, texts, strict=True), 1):
        if seq <= after:
            continue
        extra = message_extra(message)
        conn.execute(
            "INSERT INTO messages (conversation_id, seq, role, content, extra,"
            " created_at) VALUES (?, ?, ?, ?, ?, ?)",
            (conv_id, seq, role, text, json.dumps(extra) if extra else None, created),
        )


# --------------------------------------------------------------------------- the manager


class RecallManager:
    """Search, memories and import over one database, with an optional embedder."""

    def __init__(
        self,
        db: Database,
        embedder: Embedder | None = None,
        *,
        rrf_k: float = RRF_K,
        fts_weight: float = FTS_WEIGHT,
        candidates: int = 50,
        roles: Sequence[str] = SEARCHABLE_ROLES,
    ) -> None:
        self.db = db
        self.store = RecallStore(db)
        self.embedder = embedder
        self.rrf_k = rrf_k
        self.fts_weight = fts_weight
        self.candidates = candidates
        self.roles = tuple(roles)

    # ---- indexing

    def pending_count(self) -> int:
        """Messages that still lack a vector from this embedder (0 without one)."""
        if self.embedder is None:
            return 0
        return self.store.count_pending(self.embedder.name, roles=self.roles)

    def index_pending(
        self, *, batch_size: int | None = None, progress: Callable[[int], None] | None = None
    ) -> int:
        """Embed every message lacking a vector, in batches; returns how many were embedded."""
        if self.embedder is None:
            return 0
        done = 0
        size = batch_size or self.embedder.batch_size
        while batch := self.store.pending(self.embedder.name, limit=size, roles=self.roles):
            ids = [i for i, _ in batch]
            vectors = self.embedder.embed([text for _, text in batch])
            done += self.store.put_vectors(self.embedder.name, ids, vectors)
            if progress is not None:
                progress(len(batch))
        return done

    async def aindex_pending(self, *, batch_size: int | None = None) -> int:
        """:meth:`index_pending` for async callers (the engine embedder awaits the engine)."""
        if self.embedder is None:
            return 0
        done = 0
        size = batch_size or self.embedder.batch_size
        while batch := self.store.pending(self.embedder.name, limit=size, roles=self.roles):
            vectors = await self.embedder.aembed([text for _, text in batch])
            done += self.store.put_vectors(self.embedder.name, [i for i, _ in batch], vectors)
        return done

    # ---- search

    def search_fts(self, query: str, *, limit: int = 10, relevant_only: bool = False) -> list[Hit]:
        """Full-text search alone (BM25), one hit per conversation.

        ``relevant_only``: only messages holding every word of the query (see :meth:`search`).
        """
        if relevant_only:
            ranked = self._every_word(query, max(self.candidates, limit))
        else:
            ranked = self.store.search_fts(
                query, limit=max(self.candidates, limit), roles=self.roles
            )
        return self._hits(query, ranked, "fts", limit, bm25=dict(ranked))

    def search_vectors(self, query: str, *, limit: int = 10) -> list[Hit]:
        """Vector search alone (cosine similarity), one hit per conversation; [] w/o embedder."""
        if self.embedder is None:
            return []
        return self._search_vectors(query, self._embed_query(query), limit)

    def search(self, query: str, *, limit: int = 10, relevant_only: bool = False) -> list[Hit]:
        """Hybrid search (BM25 + vectors, fused by RRF), or full text alone without embedder.

        ``relevant_only`` keeps only the conversations that match the query: one of their
        messages holds every word of it, or (with an embedder) has a cosine similarity of at
        least :data:`MEMORY_THRESHOLD`, the bar a memory must clear. Without it, every
        conversation sharing a word is ranked, however unrelated.
        """
        if self.embedder is None:
            return self.search_fts(query, limit=limit, relevant_only=relevant_only)
        return self._search_hybrid(
            query, self._embed_query(query), limit, relevant_only=relevant_only
        )

    async def asearch(self, query: str, *, limit: int = 10) -> list[Hit]:
        """:meth:`search` for async callers."""
        if self.embedder is None:
            return self.search_fts(query, limit=limit)
        return self._search_hybrid(query, await self._aembed_query(query), limit)

    def memories_for(
        self,
        text: str,
        *,
        threshold: float = MEMORY_THRESHOLD,
        limit: int = 3,
        exclude: Iterable[str] = (),
    ) -> list[Hit]:
        """Past conversations relevant enough to recall at the start of a session.

        One hit per conversation whose best message has cosine similarity ≥ ``threshold``
        to ``text``, best first; conversations in ``exclude`` (the current one) are skipped.
        Empty without an embedder: BM25 scores have no absolute scale to threshold on.
        """
        skip = tuple(exclude)
        if not self._anything_to_recall(text, skip):
            return []
        return self._memories(text, self._embed_query(text), threshold, limit, skip)

    async def amemories_for(
        self,
        text: str,
        *,
        threshold: float = MEMORY_THRESHOLD,
        limit: int = 3,
        exclude: Iterable[str] = (),
    ) -> list[Hit]:
        """:meth:`memories_for` for async callers."""
        skip = tuple(exclude)
        if not self._anything_to_recall(text, skip):
            return []
        return self._memories(text, await self._aembed_query(text), threshold, limit, skip)

    def _anything_to_recall(self, text: str, exclude: tuple[str, ...]) -> bool:
        """False when no other conversation has a vector yet: then the query is not embedded,
        so a first chat never waits for the embedding model to load (~5 s here, torch)."""
        if self.embedder is None or not text.strip():
            return False
        return self.store.has_vectors(self.embedder.name, exclude=exclude)

    def recent_conversations(self, limit: int = 10) -> list[ConversationSummary]:
        """The most recently updated conversations with how each began."""
        rows = self.db.query(
            "SELECT c.id, c.title, c.model, c.created_at, c.updated_at,"
            " (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) AS n,"
            " (SELECT m.content FROM messages m WHERE m.conversation_id = c.id"
            "    AND m.role = 'user' ORDER BY m.seq LIMIT 1) AS first"
            " FROM conversations c ORDER BY c.updated_at DESC LIMIT ?",
            (limit,),
        )
        return [
            ConversationSummary(
                r["id"],
                r["title"],
                r["model"],
                r["created_at"],
                r["updated_at"],
                int(r["n"]),
                _snippet(r["first"] or "", "", 120),
            )
            for r in rows
        ]

    # ---- import

    def import_jsonl(
        self, path: Path | str, *, progress: Callable[[int, int], None] | None = None
    ) -> ImportReport:
        """Import one conversation per line, keeping each given id; never aborts on a bad line.

        A conversation already stored is left alone when identical, extended when the file
        holds more turns of the same conversation, and reported as a bad line when its turns
        differ. ``progress(bytes_read, total_bytes)`` is called as lines are read. Raises
        ``OSError`` when the file cannot be read at all.
        """
        path = Path(path)
        total = path.stat().st_size
        report = ImportReport(str(path))
        done = 0
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, 1):
                done += len(raw)
                report.lines = number
                if raw.strip():
                    try:
                        self._import_record(_parse_record(raw.strip()), report)
                    except _BadRecord as exc:
                        report.bad_lines.append(BadLine(number, str(exc)))
                if progress is not None:
                    progress(done, total)
        return report

    def _import_record(self, record: dict[str, Any], report: ImportReport) -> None:
        conv_id: str = record["id"]
        now = time.time()
        created = record["created_at"] or now
        messages = record["messages"]
        incoming = [(str(m["role"]), content_text(m.get("content"))) for m in messages]
        with self.db.transaction() as conn:
            exists = conn.execute("SELECT 1 FROM conversations WHERE id = ?", (conv_id,)).fetchone()
            stored = [
                (r[0], r[1])
                for r in conn.execute(
                    "SELECT role, content FROM messages WHERE conversation_id = ? ORDER BY seq",
                    (conv_id,),
                )
            ]
            if exists and incoming[: len(stored)] != stored:
                raise _BadRecord(f"conversation {conv_id!r} is already stored with other turns")
            if exists and len(stored) == len(incoming):
                report.unchanged += 1
                return
            if exists:
                conn.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", (now, conv_id))
            else:
                title = record["title"] or title_from(messages)
                conn.execute(
                    "INSERT INTO conversations (id, title, model, source, created_at, updated_at)"
                    " VALUES (?, ?, ?, 'import', ?, ?)",
                    (conv_id, title, record["model"], created, created),
                )
            _insert_messages(conn, conv_id, messages, incoming, len(stored), created)
        report.messages += len(incoming) - len(stored)
        if exists:
            report.updated += 1
        else:
            report.imported += 1

    # ---- internals

    def _embed_query(self, text: str) -> np.ndarray:
        assert self.embedder is not None
        return np.asarray(self.embedder.embed([text]), dtype=np.float32)[0]

    async def _aembed_query(self, text: str) -> np.ndarray:
        assert self.embedder is not None
        return np.asarray(await self.embedder.aembed([text]), dtype=np.float32)[0]

    def _vector_ranking(self, qvec: np.ndarray, limit: int) -> list[tuple[int, float]]:
        assert self.embedder is not None
        return self.store.vectors(self.embedder.name).nearest(qvec, limit)

    def _search_vectors(self, query: str, qvec: np.ndarray, limit: int) -> list[Hit]:
        ranked = self._vector_ranking(qvec, max(self.candidates, limit))
        return self._hits(query, ranked, "vector", limit, similarity=dict(ranked))

    def _search_hybrid(
        self, query: str, qvec: np.ndarray, limit: int, *, relevant_only: bool = False
    ) -> list[Hit]:
        fts = self.store.search_fts(query, limit=self.candidates, roles=self.roles)
        vec = self._vector_ranking(qvec, self.candidates)
        rows = self.store.messages([i for i, _ in fts] + [i for i, _ in vec])
        # Rank conversations (by their best message) in each list, then fuse the ranks.
        fused: dict[str, float] = {}
        best: dict[str, tuple[int, float]] = {}  # conversation -> (message id, its RRF)
        for weight, ranking in ((self.fts_weight, fts), (1.0, vec)):
            seen: set[str] = set()
            for message_id, _ in ranking:
                row = rows.get(message_id)
                if row is None or row["conversation_id"] in seen:
                    continue
                conv = row["conversation_id"]
                seen.add(conv)
                contribution = weight / (self.rrf_k + len(seen))
                fused[conv] = fused.get(conv, 0.0) + contribution
                if conv not in best or contribution > best[conv][1]:
                    best[conv] = (message_id, contribution)
        order = sorted(fused, key=lambda c: -fused[c])
        if relevant_only:
            keep = self._relevant(query, vec, rows)
            order = [c for c in order if c in keep]
        order = order[:limit]
        bm25, similarity = dict(fts), dict(vec)
        hits = []
        for conv in order:
            message_id = best[conv][0]
            hit = self._hit(query, rows[message_id], fused[conv], "hybrid")
            hit.bm25 = bm25.get(message_id)
            hit.similarity = similarity.get(message_id)
            hits.append(hit)
        return hits

    def _relevant(
        self, query: str, vec: list[tuple[int, float]], rows: dict[int, dict[str, Any]]
    ) -> set[str]:
        """Conversations with a message as similar as a memory must be, or with every word.

        Measured on ``tests/fixtures/recall`` (MiniLM, limit 10): all 42 paraphrases and 14
        keyword look-ups keep their target in the top 3 (4 other conversations kept in all),
        and none of the 14 unrelated questions keeps anything, where the plain ranking lists
        10 unrelated conversations for each.
        """
        near = {
            rows[i]["conversation_id"]
            for i, score in vec
            if score >= MEMORY_THRESHOLD and i in rows
        }
        every = self.store.messages(i for i, _ in self._every_word(query, self.candidates))
        return near | {row["conversation_id"] for row in every.values()}

    def _every_word(self, query: str, limit: int) -> list[tuple[int, float]]:
        """(message id, BM25) of messages holding every word of the query, best first."""
        match = fts_query(query)
        if match is None:
            return []
        # fts_query gives quoted single-token terms joined by " OR ": the same terms, all required.
        every = match.replace(" OR ", " AND ")
        marks = ",".join("?" for _ in self.roles)
        found = self.db.query(
            "SELECT f.rowid AS id, bm25(messages_fts) AS rank FROM messages_fts f"
            " JOIN messages m ON m.id = f.rowid"
            f" WHERE messages_fts MATCH ? AND m.role IN ({marks})"
            " ORDER BY rank LIMIT ?",
            (every, *self.roles, limit),
        )
        return [(int(r["id"]), -float(r["rank"])) for r in found]

    def _memories(
        self, text: str, qvec: np.ndarray, threshold: float, limit: int, exclude: Iterable[str]
    ) -> list[Hit]:
        skip = set(exclude)
        hits = self._search_vectors(text, qvec, self.candidates)
        return [h for h in hits if h.score >= threshold and h.conversation_id not in skip][:limit]

    def _hits(
        self,
        query: str,
        ranked: list[tuple[int, float]],
        source: str,
        limit: int,
        *,
        bm25: dict[int, float] | None = None,
        similarity: dict[int, float] | None = None,
    ) -> list[Hit]:
        rows = self.store.messages(i for i, _ in ranked)
        hits: list[Hit] = []
        seen: set[str] = set()
        for message_id, score in ranked:
            row = rows.get(message_id)
            if row is None or row["conversation_id"] in seen:
                continue
            seen.add(row["conversation_id"])
            hit = self._hit(query, row, score, source)
            hit.bm25 = (bm25 or {}).get(message_id)
            hit.similarity = (similarity or {}).get(message_id)
            hits.append(hit)
            if len(hits) >= limit:
                break
        return hits

    @staticmethod
    def _hit(query: str, row: dict[str, Any], score: float, source: str) -> Hit:
        return Hit(
            conversation_id=row["conversation_id"],
            message_id=int(row["id"]),
            seq=int(row["seq"]),
            role=row["role"],
            score=float(score),
            snippet=_snippet(row["content"] or "", query),
            title=row["title"],
            created_at=float(row["created_at"]),
            model=row["model"],
            source=source,
        )
