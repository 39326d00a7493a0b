"""Responses answered on ``/v1/responses``, by id: which stored conversation each one ends.

``previous_response_id`` resumes a conversation from this table: the conversation's
history comes from the conversation store, so a client sends only its new input. A
response that is no longer the newest of its conversation (the client branches from an
earlier turn) starts a copy of the conversation up to that response.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from autotune.store.conversations import ConversationStore, new_conversation_id
from autotune.store.db import Database

__all__ = ["ResponseStore", "StoredResponse"]


@dataclass(frozen=True)
class StoredResponse:
    id: str
    conversation_id: str
    #: How many messages the conversation held once this response was stored.
    turn_end: int
    model: str | None
    body: dict[str, Any]
    created_at: float


class ResponseStore:
    """Reads and writes the ``responses`` table (migration 7)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.conversations = ConversationStore(db)

    def put(self, response_id: str, conversation_id: str, model: str, body: dict[str, Any]) -> int:
        """Record a response that ends ``conversation_id`` as it is now; returns its turn end."""
        with self.db.transaction() as conn:
            turn_end = int(
                conn.execute(
                    "SELECT COUNT(*) FROM messages WHERE conversation_id = ?", (conversation_id,)
                ).fetchone()[0]
            )
            conn.execute(
                "INSERT OR REPLACE INTO responses (id, conversation_id, turn_end, model, body,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (response_id, conversation_id, turn_end, model, json.dumps(body), time.time()),
            )
        return turn_end

    def get(self, response_id: str) -> StoredResponse | None:
        rows = self.db.query("SELECT * FROM responses WHERE id = ?", (response_id,))
        if not rows:
            return None
        r = rows[0]
        return StoredResponse(
            r["id"],
            r["conversation_id"],
            r["turn_end"],
            r["model"],
            json.loads(r["body"]),
            r["created_at"],
        )

    def resume(self, response_id: str) -> str | None:
        """The conversation to continue after ``response_id``: its own while the response is
        its newest turn, else a new copy of it up to the response. None when unknown."""
        stored = self.get(response_id)
        if stored is None:
            return None
        conv = self.conversations.get(stored.conversation_id, with_messages=True)
        if conv is None:
            return None
        if conv.message_count <= stored.turn_end:
            return conv.id
        copy = self.conversations.create(
            id=new_conversation_id(),
            title=conv.title,
            model=conv.model,
            profile=conv.profile,
            system=conv.system,
            source=conv.source,
        )
        kept = [
            {**m.as_openai(), "tokens": m.tokens} for m in (conv.messages or [])[: stored.turn_end]
        ]
        if kept:
            self.conversations.append(copy.id, kept)
        return copy.id
