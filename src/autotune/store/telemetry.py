"""Telemetry in SQLite: one record per request and the notable events, never prompt text."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from autotune.ground.records import RunRecord
from autotune.ground.types import EngineEvent
from autotune.store.db import Database

__all__ = ["EventRules", "TelemetryStore", "derive_events"]

_RUN_COLUMNS = (
    "id",
    "started_at",
    "model",
    "backend",
    "profile",
    "source",
    "status",
    "error",
    "conversation_id",
    "plan",
    "decisions",
    "queue_ms",
    "ttft_ms",
    "total_ms",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "prompt_ms",
    "decode_ms",
    "load_ms",
    "tokens_per_s",
    "reloaded",
    "n_ctx",
    "ram_before",
    "ram_after",
    "ram_peak_fraction",
    "swap_delta",
    "gpu_memory_peak",
    "engine_timings",
    "kv",
    "kv_bytes",
    "draft_tokens",
    "draft_accepted",
)


@dataclass(frozen=True)
class EventRules:
    """When a run is notable enough to become an event."""

    #: Swap use grew by this much during one request.
    swap_growth_bytes: int = 64 * 1024**2
    #: Decoding slower than this (tokens/s) for a reply of at least ``slow_min_tokens``.
    slow_tokens_per_s: float = 2.0
    slow_min_tokens: int = 16


def derive_events(
    record: RunRecord, rules: EventRules, *, engine_reports: bool
) -> list[EngineEvent]:
    """Events a finished run implies. ``engine_reports``: the engine emits its own load events,
    so a reload seen in the engine's counters is not reported twice."""
    events: list[EngineEvent] = []
    if record.swap_delta is not None and record.swap_delta >= rules.swap_growth_bytes:
        events.append(EngineEvent("swap_growth", record.model, {"swap_delta": record.swap_delta}))
    if (
        record.tokens_per_s is not None
        and record.completion_tokens is not None
        and record.completion_tokens >= rules.slow_min_tokens
        and record.tokens_per_s < rules.slow_tokens_per_s
    ):
        events.append(
            EngineEvent(
                "slow_tokens", record.model, {"tokens_per_s": round(record.tokens_per_s, 2)}
            )
        )
    if record.reloaded and not engine_reports:
        events.append(EngineEvent("reload", record.model, {"load_ms": record.load_ms}))
    return events


class TelemetryStore:
    """Writes and reads runs and events (each write its own short transaction).

    The tables are bounded while the process runs, not only at start-up: every
    ``prune_every`` writes, rows older than ``keep_days`` go, and beyond ``max_rows`` per
    table the oldest go (a burst of requests cannot grow the file without end).
    """

    def __init__(
        self,
        db: Database,
        rules: EventRules | None = None,
        *,
        keep_days: float = 30,
        max_rows: int = 100_000,
        prune_every: int = 1_000,
    ) -> None:
        self.db = db
        self.rules = rules or EventRules()
        self.keep_days = keep_days
        self.max_rows = max_rows
        self.prune_every = prune_every
        self._writes = 0
        self._lock = threading.Lock()

    def _wrote(self) -> None:
        with self._lock:
            self._writes += 1
            due = self._writes % self.prune_every == 0
        if due:
            self.prune()

    def record_run(self, record: RunRecord) -> None:
        data = record.as_dict()
        data["decisions"] = json.dumps(data["decisions"])
        data["engine_timings"] = json.dumps(data["engine_timings"])
        data["reloaded"] = None if record.reloaded is None else int(record.reloaded)
        placeholders = ", ".join("?" for _ in _RUN_COLUMNS)
        self.db.execute(
            f"INSERT OR REPLACE INTO runs ({', '.join(_RUN_COLUMNS)}) VALUES ({placeholders})",
            tuple(data.get(c) for c in _RUN_COLUMNS),
        )
        self._wrote()

    def record_event(self, event: EngineEvent, run_id: str | None = None) -> None:
        self.db.execute(
            "INSERT INTO events (at, kind, model, run_id, detail) VALUES (?, ?, ?, ?, ?)",
            (event.at, event.kind, event.model, run_id, json.dumps(event.detail, default=str)),
        )
        self._wrote()

    def runs(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT * FROM runs ORDER BY started_at DESC LIMIT ?", (limit,))
        out = []
        for r in rows:
            item = dict(r)
            item["decisions"] = json.loads(item["decisions"] or "[]")
            item["engine_timings"] = json.loads(item["engine_timings"] or "{}")
            item["reloaded"] = None if item["reloaded"] is None else bool(item["reloaded"])
            out.append(item)
        return out

    def events(self, limit: int = 50, since: float | None = None) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT at, kind, model, run_id, detail FROM events WHERE at >= ? "
            "ORDER BY at DESC, id DESC LIMIT ?",
            (since or 0.0, limit),
        )
        return [{**dict(r), "detail": json.loads(r["detail"] or "{}")} for r in rows]

    def prune(self, keep_days: float | None = None) -> int:
        """Delete runs and events older than ``keep_days`` (default: the store's), and the
        oldest beyond ``max_rows`` in each table; returns rows removed."""
        days = self.keep_days if keep_days is None else keep_days
        cutoff = time.time() - days * 86400
        keep = max(0, self.max_rows - 1)
        with self.db.transaction() as conn:
            n = conn.execute("DELETE FROM runs WHERE started_at < ?", (cutoff,)).rowcount
            n += conn.execute(
                "DELETE FROM runs WHERE started_at < "
                "(SELECT started_at FROM runs ORDER BY started_at DESC LIMIT 1 OFFSET ?)",
                (keep,),
            ).rowcount
            n += conn.execute("DELETE FROM events WHERE at < ?", (cutoff,)).rowcount
            n += conn.execute(
                "DELETE FROM events WHERE id < "
                "(SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (keep,),
            ).rowcount
        return n
