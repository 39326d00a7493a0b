"""Conversations and their messages in SQLite: create, list, append turns atomically, export."""

from __future__ import annotations

import builtins
import json
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autotune.ground.ids import new_conversation_id
from autotune.store.db import Database

__all__ = [
    "Conversation",
    "ConversationStore",
    "Message",
    "content_text",
    "message_extra",
    "new_conversation_id",
    "title_from",
]

#: OpenAI message fields kept beside role and content.
_EXTRA_KEYS = ("name", "tool_calls", "tool_call_id")


@dataclass
class Message:
    """One stored message; ``extra`` keeps OpenAI fields beyond role and content."""

    role: str
    content: str
    seq: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    tokens: int | None = None
    created_at: float = 0.0

    def as_openai(self) -> dict[str, Any]:
        return {"role": self.role, "content": self.content, **self.extra}


@dataclass
class Conversation:
    id: str
    title: str | None
    model: str | None
    profile: str | None
    system: str | None
    source: str
    created_at: float
    updated_at: float
    messages: list[Message] = field(default_factory=list)
    message_count: int = 0

    def as_dict(self, *, with_messages: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "title": self.title,
            "model": self.model,
            "profile": self.profile,
            "system": self.system,
            "source": self.source,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "message_count": self.message_count,
        }
        if with_messages:
            data["messages"] = [m.as_openai() for m in self.messages]
        return data


def content_text(content: Any) -> str:
    """OpenAI content may be a string or a list of parts; store the text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def message_extra(message: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of an OpenAI message that are stored beside its role and content."""
    return {k: message[k] for k in _EXTRA_KEYS if message.get(k) is not None}


def title_from(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """A conversation's title: the first user message's first 60 characters."""
    for m in messages:
        if m.get("role") == "user":
            text = " ".join(content_text(m.get("content")).split())
            return text[:60] + ("…" if len(text) > 60 else "") if text else None
    return None


class ConversationStore:
    """All conversation reads and writes; each write is one transaction."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        *,
        id: str | None = None,
        title: str | None = None,
        model: str | None = None,
        profile: str | None = None,
        system: str | None = None,
        source: str = "autotune",
        created_at: float | None = None,
    ) -> Conversation:
        now = created_at or time.time()
        conv_id = id or new_conversation_id()
        self.db.execute(
            "INSERT INTO conversations (id, title, model, profile, system, source, created_at,"
            " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (conv_id, title, model, profile, system, source, now, now),
        )
        return Conversation(conv_id, title, model, profile, system, source, now, now)

    def ensure(self, id: str, **defaults: Any) -> Conversation:
        """The conversation with this id, created with ``defaults`` if it does not exist
        (safe when two requests start the same new conversation at once)."""
        existing = self.get(id, with_messages=False)
        if existing is not None:
            return existing
        try:
            return self.create(id=id, **defaults)
        except sqlite3.IntegrityError:  # created by a concurrent request a moment ago
            found = self.get(id, with_messages=False)
            assert found is not None
            return found

    def get(self, id: str, *, with_messages: bool = True) -> Conversation | None:
        rows = self.db.query(
            "SELECT c.*, (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) AS n"
            " FROM conversations c WHERE c.id = ?",
            (id,),
        )
        if not rows:
            return None
        conv = self._row(rows[0])
        if with_messages:
            conv.messages = self.messages(id)
        return conv

    def list(self, *, limit: int = 50, offset: int = 0) -> builtins.list[Conversation]:
        rows = self.db.query(
            "SELECT c.*, (SELECT COUNT(*) FROM messages m WHERE m.conversation_id = c.id) AS n"
            " FROM conversations c ORDER BY c.updated_at DESC LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [self._row(r) for r in rows]

    def delete(self, id: str) -> bool:
        with self.db.transaction() as conn:
            return conn.execute("DELETE FROM conversations WHERE id = ?", (id,)).rowcount > 0

    def messages(self, id: str) -> builtins.list[Message]:
        rows = self.db.query(
            "SELECT seq, role, content, extra, tokens, created_at FROM messages"
            " WHERE conversation_id = ? ORDER BY seq",
            (id,),
        )
        return [
            Message(
                r["role"],
                r["content"],
                r["seq"],
                json.loads(r["extra"]) if r["extra"] else {},
                r["tokens"],
                r["created_at"],
            )
            for r in rows
        ]

    def append(self, id: str, messages: builtins.list[dict[str, Any]]) -> builtins.list[Message]:
        """Append OpenAI-style messages in one transaction (all or none are stored)."""
        now = time.time()
        stored: builtins.list[Message] = []
        with self.db.transaction() as conn:
            row = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = ?", (id,)
            ).fetchone()
            seq = int(row[0])
            for m in messages:
                seq += 1
                extra = message_extra(m)
                msg = Message(
                    str(m.get("role", "user")),
                    content_text(m.get("content")),
                    seq,
                    extra,
                    m.get("tokens"),
                    now,
                )
                conn.execute(
                    "INSERT INTO messages (conversation_id, seq, role, content, extra, tokens,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        id,
                        seq,
                        msg.role,
                        msg.content,
                        json.dumps(extra) if extra else None,
                        msg.tokens,
                        now,
                    ),
                )
                stored.append(msg)
            title = title_from(messages)
            conn.execute(
                "UPDATE conversations SET updated_at = ?, title = COALESCE(title, ?) WHERE id = ?",
                (now, title, id),
            )
        return stored

    def update(self, id: str, **fields: Any) -> None:
        allowed = {k: v for k, v in fields.items() if k in ("title", "model", "profile", "system")}
        if not allowed:
            return
        sets = ", ".join(f"{k} = ?" for k in allowed)
        self.db.execute(
            f"UPDATE conversations SET {sets}, updated_at = ? WHERE id = ?",
            (*allowed.values(), time.time(), id),
        )

    def export_markdown(self, id: str) -> str | None:
        conv = self.get(id)
        if conv is None:
            return None
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(conv.created_at))
        lines = [
            f"# {conv.title or 'Conversation'}",
            "",
            f"- id: `{conv.id}`",
            f"- model: {conv.model or '—'}",
            f"- profile: {conv.profile or '—'}",
            f"- started: {stamp}",
            "",
        ]
        if conv.system:
            lines += ["## System", "", conv.system, ""]
        for m in conv.messages:
            lines += [f"## {m.role.capitalize()}", "", m.content or "", ""]
            if m.extra.get("tool_calls"):
                lines += ["```json", json.dumps(m.extra["tool_calls"], indent=2), "```", ""]
        return "\n".join(lines).rstrip() + "\n"

    @staticmethod
    def _row(r: Any) -> Conversation:
        return Conversation(
            r["id"],
            r["title"],
            r["model"],
            r["profile"],
            r["system"],
            r["source"],
            r["created_at"],
            r["updated_at"],
            message_count=r["n"],
        )
