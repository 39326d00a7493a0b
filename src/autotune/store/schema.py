"""The numbered migrations that build autotune's database; append new ones, never edit old ones."""

from __future__ import annotations

__all__ = ["MIGRATIONS"]

#: (version, name, SQL script), applied in order; ``PRAGMA user_version`` records the last.
MIGRATIONS: list[tuple[int, str, str]] = [
    (
        1,
        "conversations",
        """
        CREATE TABLE conversations (
            id          TEXT PRIMARY KEY,
            title       TEXT,
            model       TEXT,
            profile     TEXT,
            system      TEXT,
            source      TEXT NOT NULL DEFAULT 'autotune',
            created_at  REAL NOT NULL,
            updated_at  REAL NOT NULL
        );
        CREATE TABLE messages (
            id              INTEGER PRIMARY KEY,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            seq             INTEGER NOT NULL,
            role            TEXT NOT NULL,
            content         TEXT NOT NULL DEFAULT '',
            extra           TEXT,            -- JSON: tool_calls, name, tool_call_id
            tokens          INTEGER,
            created_at      REAL NOT NULL,
            UNIQUE (conversation_id, seq)
        );
        CREATE INDEX messages_by_conversation ON messages (conversation_id, seq);
        CREATE INDEX conversations_by_update ON conversations (updated_at DESC);
        """,
    ),
]
