"""Operations that are not a chat (pull, unload, token counts) go through admission and
telemetry like a chat, over the real runtime (real SQLite, real pipeline and admission
queue) and the scripted in-process FakeBackend (``tests/fakes/backend.py``). The pull of an
engine that pulls its own models is scripted after Ollama's documented progress
(``pulling manifest`` … ``success``): no Ollama binary runs here."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from autotune.backends.registry import BackendSet
from autotune.ground.config import Settings
from autotune.ground.errors import NotSupported, QueueFull
from autotune.ground.types import PullProgress
from autotune.operations.engines import unload
from autotune.operations.pull import prepare_pull
from autotune.pipeline.count import count_tokens
from autotune.runtime import Runtime, open_runtime
from fakes.backend import LIKE_EMBEDDED, MODEL, FakeBackend


class _Pulling(FakeBackend):
    """An engine that pulls its own models (as Ollama does), one step at a time."""

    name = "ollama"

    def __init__(self) -> None:
        super().__init__(capabilities=dataclasses.replace(LIKE_EMBEDDED, pull=True))
        self.gate = asyncio.Event()
        self.running_seen: int | None = None

    async def pull(self, model: str) -> AsyncIterator[PullProgress]:
        yield PullProgress("pulling manifest")
        await self.gate.wait()
        self.models.append(model)
        yield PullProgress("pulling 1234", completed=10, total=10)
        yield PullProgress("success")


async def _runtime(tmp_path: Path, backend: FakeBackend, **settings: object) -> Runtime:
    values = {"home": tmp_path / "home", "backend": "embedded", "default_model": MODEL}
    return await open_runtime(
        Settings(**{**values, **settings}),  # type: ignore[arg-type]
        backends=BackendSet({backend.name: backend}, [backend.name]),
        start_sampler=False,
    )


async def test_a_pull_takes_its_turn_but_holds_no_place_and_is_recorded(tmp_path: Path) -> None:
    engine = _Pulling()
    runtime = await _runtime(tmp_path, engine, max_concurrent=1)
    try:
        job = await prepare_pull(runtime, "new-model:1b")
        assert job.engine == "ollama" and job.plan is None
        job.check()
        steps = job.steps()
        assert (await steps.__anext__()).status == "pulling manifest"
        # While bytes arrive, a chat is not held up: no running place is taken.
        assert runtime.pipeline.queue.running == 0
        engine.gate.set()
        rest = [step.status async for step in steps]
        assert rest[-1] == "success"
        # The model answers to its name at once (the engines' lists were refreshed).
        _, name = await runtime.backends.resolve("new-model:1b")
        assert name == "new-model:1b"
        (record,) = [r for r in runtime.pipeline.recent if r.source == "pull"]
        assert record.status == "ok" and record.backend == "ollama"
    finally:
        await runtime.aclose()


async def test_a_pull_waits_its_turn_and_a_full_line_refuses_it(tmp_path: Path) -> None:
    engine = _Pulling()
    runtime = await _runtime(tmp_path, engine, max_concurrent=1, max_queued=0)
    try:
        await runtime.pipeline.queue.acquire()  # a chat holds the only place
        job = await prepare_pull(runtime, "new-model:1b")
        with pytest.raises(QueueFull):
            await job.steps().__anext__()
        runtime.pipeline.queue.release()
    finally:
        await runtime.aclose()


async def test_no_engine_that_pulls_is_a_clear_refusal(tmp_path: Path) -> None:
    runtime = await _runtime(tmp_path, FakeBackend())
    try:
        with pytest.raises(NotSupported, match="can pull models"):
            await prepare_pull(runtime, "x:1b")
    finally:
        await runtime.aclose()


async def test_an_unload_waits_for_the_running_request_and_is_recorded(tmp_path: Path) -> None:
    engine = FakeBackend()
    runtime = await _runtime(tmp_path, engine, max_concurrent=1)
    try:
        await engine.load(MODEL)
        queue = runtime.pipeline.queue
        await queue.acquire()  # a reply is streaming on the only place
        unloading = asyncio.ensure_future(unload(runtime, MODEL))
        await asyncio.sleep(0.05)
        assert not unloading.done() and MODEL in [m.name for m in await engine.running_models()]
        queue.release()
        assert await unloading == MODEL
        assert not await engine.running_models()
        (record,) = [r for r in runtime.pipeline.recent if r.source == "unload"]
        assert record.status == "ok" and record.model == MODEL
    finally:
        await runtime.aclose()


async def test_an_unload_the_engine_cannot_do_is_refused(tmp_path: Path) -> None:
    engine = FakeBackend(capabilities=dataclasses.replace(LIKE_EMBEDDED, unload=False))
    runtime = await _runtime(tmp_path, engine)
    try:
        with pytest.raises(NotSupported, match="unload"):
            await unload(runtime, MODEL)
    finally:
        await runtime.aclose()


async def test_token_counts_are_recorded_and_ask_the_engine_under_admission(
    tmp_path: Path,
) -> None:
    engine = FakeBackend()
    runtime = await _runtime(tmp_path, engine, max_concurrent=1)
    messages = [{"role": "user", "content": "one two three"}]
    try:
        estimated = await count_tokens(runtime.pipeline, MODEL, messages)
        assert not estimated.exact  # not loaded: an estimate, no engine asked, no place taken
        await engine.load(MODEL)
        queue = runtime.pipeline.queue
        await queue.acquire()
        counting = asyncio.ensure_future(count_tokens(runtime.pipeline, MODEL, messages))
        await asyncio.sleep(0.05)
        assert not counting.done()  # asking the engine waits for a place, like a chat
        queue.release()
        assert (await counting).exact
        records = [r for r in runtime.pipeline.recent if r.source == "count"]
        assert len(records) == 2 and all(r.prompt_tokens for r in records)
    finally:
        await runtime.aclose()
