"""Measured load-time settings per (engine, model, profile), as ``autotune tune`` stored them."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

from autotune.ground.tuned import SpecChoice, Trial, TunedSettings
from autotune.store.db import Database

__all__ = ["TuningStore"]


class TuningStore:
    """Reads and writes the ``tuning`` table; lookups are cached for the planner's hot path."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._cache: dict[tuple[str, str, str], TunedSettings | None] = {}

    def save(
        self,
        backend: str,
        model: str,
        profile: str,
        trial: Trial,
        baseline: Trial,
        *,
        defaults_best: bool,
        trials: int,
        speculation: SpecChoice | None = None,
    ) -> None:
        """Store one profile's winner; ``speculation`` is the measured speculative choice
        (None: not measured, and the planner leaves speculation as it is today)."""
        c = trial.candidate
        settings = {
            "n_threads": c.n_threads,
            "n_batch": c.n_batch or 2048,
            "n_ubatch": c.n_ubatch or 512,
            "flash_attn": c.flash_attn,
        }
        self.db.execute(
            "INSERT OR REPLACE INTO tuning (backend, model, profile, settings, prefill_tps,"
            " decode_tps, rss_bytes, baseline_prefill_tps, baseline_decode_tps, defaults_best,"
            " trials, measured_at, speculation) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                backend,
                model,
                profile,
                json.dumps(settings),
                trial.prefill_tps,
                trial.decode_tps,
                trial.rss_bytes,
                baseline.prefill_tps,
                baseline.decode_tps,
                int(defaults_best),
                trials,
                time.time(),
                None if speculation is None else json.dumps(dataclasses.asdict(speculation)),
            ),
        )
        self._cache.pop((backend, model, profile), None)

    def rows(self) -> list[dict[str, Any]]:
        out = []
        for r in self.db.query("SELECT * FROM tuning ORDER BY model, profile"):
            item = dict(r)
            item["settings"] = json.loads(item["settings"])
            item["defaults_best"] = bool(item["defaults_best"])
            item["speculation"] = json.loads(item["speculation"] or "null")
            out.append(item)
        return out

    def lookup(self, backend: str, model: str, profile: str) -> TunedSettings | None:
        """What the planner should use for this engine, model and profile (None: nothing stored)."""
        key = (backend, model, profile)
        if key not in self._cache:
            rows = self.db.query(
                "SELECT settings, measured_at, speculation FROM tuning WHERE backend = ? AND"
                " model = ? AND"
                " profile = ?",
                key,
            )
            if not rows:
                self._cache[key] = None
            else:
                s = json.loads(rows[0]["settings"])
                day = time.strftime("%Y-%m-%d", time.localtime(rows[0]["measured_at"]))
                self._cache[key] = TunedSettings(
                    n_batch=s.get("n_batch"),
                    n_ubatch=s.get("n_ubatch"),
                    n_threads=s.get("n_threads"),
                    flash_attn=s.get("flash_attn"),
                    source=f"autotune tune, {day}",
                    **_speculation(rows[0]["speculation"]),
                )
        return self._cache[key]


def _speculation(stored: str | None) -> dict[str, Any]:
    """TunedSettings fields from the stored choice; a draft model no longer on disk is
    dropped (no speculation rather than a load that fails)."""
    if not stored:
        return {}
    choice = json.loads(stored)
    mode, draft_path = choice.get("mode"), choice.get("draft_path")
    if mode == "draft" and not (draft_path and os.path.isfile(draft_path)):
        return {}
    return {
        "speculative": mode,
        "draft_path": draft_path if mode == "draft" else None,
        "spec_copy_gain": choice.get("copy_gain"),
        "spec_chat_gain": choice.get("chat_gain"),
    }
