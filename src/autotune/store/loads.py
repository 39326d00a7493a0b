"""Which models each engine holds, with their load settings, so `serve` can load them again."""

from __future__ import annotations

import json
import time

from autotune.ground.types import LoadSettings
from autotune.store.db import Database

__all__ = ["LoadedModels"]


class LoadedModels:
    """The ``loaded_models`` table: a load adds a row, an unload removes it, a shutdown keeps
    them (they are what was loaded when autotune stopped)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def loaded(self, engine: str, model: str, settings: LoadSettings) -> None:
        self.db.execute(
            "INSERT INTO loaded_models (engine, model, settings, loaded_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (engine, model) DO UPDATE SET settings = excluded.settings,"
            " loaded_at = excluded.loaded_at",
            (engine, model, json.dumps(settings.as_dict()), time.time()),
        )

    def unloaded(self, engine: str, model: str) -> None:
        self.db.execute("DELETE FROM loaded_models WHERE engine = ? AND model = ?", (engine, model))

    def last(self) -> list[tuple[str, str, LoadSettings]]:
        """(engine, model, settings), the most recently loaded first."""
        rows = self.db.query("SELECT * FROM loaded_models ORDER BY loaded_at DESC, model")
        out = []
        for r in rows:
            try:
                settings = LoadSettings(**json.loads(r["settings"]))
            except (TypeError, ValueError):
                continue  # settings of an older autotune: not worth a guess
            out.append((r["engine"], r["model"], settings))
        return out
