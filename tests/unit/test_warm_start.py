"""The warm start: the models an engine held when autotune stopped are loaded again at start,
with their settings, and those settings are the sticky ones a first request plans with."""

from __future__ import annotations

from pathlib import Path

from autotune.backends.registry import BackendSet
from autotune.ground.config import Settings
from autotune.ground.types import EngineEvent, LoadSettings
from autotune.pipeline import ChatInput
from autotune.runtime import open_runtime
from autotune.store.db import Database
from autotune.store.loads import LoadedModels
from fakes.backend import MODEL, FakeBackend


def test_loads_are_kept_until_an_unload(tmp_path: Path) -> None:
    db = Database(tmp_path / "a.db")
    loads = LoadedModels(db)
    loads.loaded("embedded", "a", LoadSettings(n_ctx=4096))
    loads.loaded("embedded", "b", LoadSettings(n_ctx=8192, cache_type_k="q8_0"))
    loads.loaded("embedded", "a", LoadSettings(n_ctx=2048))  # a reload: the newest settings
    assert [(m, s.n_ctx) for _, m, s in loads.last()] == [("a", 2048), ("b", 8192)]
    loads.unloaded("embedded", "a")
    assert [m for _, m, _ in loads.last()] == ["b"]
    db.close()


async def test_a_restart_loads_what_was_loaded_and_plans_with_it(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, backend="embedded", default_model=MODEL, recall=False)
    held = LoadSettings(n_ctx=8192, cache_type_k="f16", cache_type_v="f16")
    first = await open_runtime(settings, backends=BackendSet({"fake": FakeBackend()}, ["fake"]))
    first.on_engine_event("fake", EngineEvent("load", MODEL, {"settings": held.as_dict()}))
    first.on_engine_event("fake", EngineEvent("load", "gone", {"settings": held.as_dict()}))
    first.on_engine_event("fake", EngineEvent("unload", "gone", {"reason": "keep-alive"}))
    await first.aclose()  # a shutdown keeps what was loaded

    engine = FakeBackend()
    second = await open_runtime(settings, backends=BackendSet({"fake": engine}, ["fake"]))
    assert await second.warm_start() == [MODEL]
    assert engine.loads == [(MODEL, held)] and not second.warming
    run = await second.pipeline.start(ChatInput(messages=[{"role": "user", "content": "hi"}]))
    async for _ in run:
        pass
    assert engine.loads == [(MODEL, held)]  # the first request plans the same load: no reload
    await second.aclose()
