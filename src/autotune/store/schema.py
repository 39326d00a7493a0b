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
    (
        2,
        "telemetry",
        """
        CREATE TABLE runs (
            id                TEXT PRIMARY KEY,
            started_at        REAL NOT NULL,
            model             TEXT,
            backend           TEXT,
            profile           TEXT,
            source            TEXT,
            status            TEXT,
            error             TEXT,
            conversation_id   TEXT,
            plan              TEXT,
            decisions         TEXT,  -- JSON list of {key, value, reason}
            queue_ms          REAL,
            ttft_ms           REAL,
            total_ms          REAL,
            prompt_tokens     INTEGER,
            cached_tokens     INTEGER,
            completion_tokens INTEGER,
            prompt_ms         REAL,
            decode_ms         REAL,
            load_ms           REAL,
            tokens_per_s      REAL,
            reloaded          INTEGER,
            n_ctx             INTEGER,
            ram_before        INTEGER,
            ram_after         INTEGER,
            ram_peak_fraction REAL,
            swap_delta        INTEGER,
            gpu_memory_peak   INTEGER,
            engine_timings    TEXT   -- JSON: the engine's own counters
        );
        CREATE INDEX runs_by_time ON runs (started_at DESC);
        CREATE TABLE events (
            id      INTEGER PRIMARY KEY,
            at      REAL NOT NULL,
            kind    TEXT NOT NULL,
            model   TEXT,
            run_id  TEXT,
            detail  TEXT   -- JSON
        );
        CREATE INDEX events_by_time ON events (at DESC);
        """,
    ),
    (
        3,
        "recall",
        """
    CREATE TABLE IF NOT EXISTS message_vectors (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id  INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
        model       TEXT NOT NULL,            -- the embedder's name, e.g. minilm:all-MiniLM-L6-v2
        dim         INTEGER NOT NULL,
        vector      BLOB NOT NULL,            -- dim little-endian float32, L2-normalised
        created_at  REAL NOT NULL,
        UNIQUE (message_id, model)
    );
    CREATE INDEX IF NOT EXISTS message_vectors_by_model ON message_vectors (model, message_id);
    CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(
        content,
        content='messages',
        content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
    END;
    CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content)
            VALUES ('delete', old.id, old.content);
    END;
    CREATE TRIGGER IF NOT EXISTS messages_fts_update AFTER UPDATE ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, content)
            VALUES ('delete', old.id, old.content);
        INSERT INTO messages_fts (rowid, content) VALUES (new.id, new.content);
        DELETE FROM message_vectors
            WHERE message_id = old.id AND (new.id != old.id OR new.content != old.content);
    END;
    INSERT INTO messages_fts (messages_fts) VALUES ('rebuild');
        """,
    ),
    (
        4,
        "tuning",
        """
        CREATE TABLE tuning (
            backend              TEXT NOT NULL,
            model                TEXT NOT NULL,
            profile              TEXT NOT NULL,
            settings             TEXT NOT NULL,  -- JSON: n_threads, n_batch, n_ubatch, flash_attn
            prefill_tps          REAL,
            decode_tps           REAL,
            rss_bytes            INTEGER,
            baseline_prefill_tps REAL,
            baseline_decode_tps  REAL,
            defaults_best        INTEGER NOT NULL,
            trials               INTEGER NOT NULL,
            measured_at          REAL NOT NULL,
            PRIMARY KEY (backend, model, profile)
        );
        """,
    ),
    (
        5,
        "speculation",
        """
        ALTER TABLE runs ADD COLUMN draft_tokens INTEGER;    -- llama.cpp timings.draft_n
        ALTER TABLE runs ADD COLUMN draft_accepted INTEGER;  -- timings.draft_n_accepted
        ALTER TABLE tuning ADD COLUMN speculation TEXT;      -- JSON: the measured choice
        """,
    ),
    (
        6,
        "kv files",
        """
        CREATE TABLE kv_files (
            conversation_id TEXT NOT NULL,
            identity        TEXT NOT NULL,     -- model file, KV cache types, slots (hashed)
            model           TEXT NOT NULL,     -- the model's name, for listings
            filename        TEXT NOT NULL UNIQUE,
            tokens          INTEGER NOT NULL,  -- tokens the saved slot holds
            bytes           INTEGER NOT NULL,
            checksum        TEXT,              -- CRC-32 of the file; NULL until computed
            created_at      REAL NOT NULL,
            last_used       REAL NOT NULL,
            hits            INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (conversation_id, identity)
        );
        ALTER TABLE runs ADD COLUMN kv TEXT;
        ALTER TABLE runs ADD COLUMN kv_bytes INTEGER;
        """,
    ),
    (
        7,
        "responses",
        """
        CREATE TABLE responses (
            id              TEXT PRIMARY KEY,          -- resp_…, as answered on /v1/responses
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            turn_end        INTEGER NOT NULL,          -- the conversation's messages after it
            model           TEXT,
            body            TEXT NOT NULL,             -- JSON: the response object answered
            created_at      REAL NOT NULL
        );
        CREATE INDEX responses_by_conversation ON responses (conversation_id);
        """,
    ),
    (
        8,
        "kv files by content",
        """
        -- Saved slots are found by the tokens they hold, no longer by a conversation id: the
        -- files of the old table are unindexed from here on (autotune removes them from the
        -- KV folder when it next opens it).
        DROP TABLE kv_files;
        CREATE TABLE kv_files (
            filename        TEXT PRIMARY KEY,
            identity        TEXT NOT NULL,     -- model file, KV cache types, slots (hashed)
            model           TEXT NOT NULL,     -- the model's name, for listings
            tokens          INTEGER NOT NULL,  -- tokens the file holds
            prompt_tokens   INTEGER NOT NULL,  -- of which the prompt it was saved after
            bytes           INTEGER NOT NULL,
            checksum        TEXT,              -- xxh3-64 of the file; NULL until computed
            conversation_id TEXT,              -- the conversation it was saved from, if named
            preview         TEXT NOT NULL DEFAULT '',  -- what its prompt starts with
            created_at      REAL NOT NULL,
            last_used       REAL NOT NULL,
            hits            INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX kv_files_by_conversation ON kv_files (conversation_id);
        -- A file's token chain: the hash of its first `depth` blocks of 64 tokens, per depth.
        CREATE TABLE kv_blocks (
            identity TEXT NOT NULL,
            hash     INTEGER NOT NULL,
            depth    INTEGER NOT NULL,
            filename TEXT NOT NULL REFERENCES kv_files (filename) ON DELETE CASCADE
        );
        CREATE INDEX kv_blocks_by_hash ON kv_blocks (identity, hash);
        CREATE INDEX kv_blocks_by_file ON kv_blocks (filename);
        """,
    ),
    (
        9,
        "loaded models",
        """
        -- The models an engine holds now (or held when autotune stopped), with the settings
        -- they were loaded with: `serve` loads them again when it starts (a warm start).
        CREATE TABLE loaded_models (
            engine    TEXT NOT NULL,
            model     TEXT NOT NULL,
            settings  TEXT NOT NULL,  -- JSON: the load-time settings
            loaded_at REAL NOT NULL,
            PRIMARY KEY (engine, model)
        );
        """,
    ),
]
