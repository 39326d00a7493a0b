"""The requests running now (pipeline/running.py): stopped by their time limit, the operator or
a shutdown, on the real pipeline over the scripted engine (tests/fakes/backend.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from autotune.ground.errors import RequestStopped
from autotune.ground.types import Chunk
from autotune.pipeline import ChatInput, Pipeline
from autotune.pipeline.running import RunningRequests

HI = [{"role": "user", "content": "hi"}]


async def _drain(run: Any) -> None:
    async for _ in run:
        pass


async def test_a_stop_before_the_first_read_ends_the_run_and_stores_nothing(
    fake_pipeline: Pipeline,
) -> None:
    entry = fake_pipeline.running.open("/v1/chat/completions", "m")
    run = await fake_pipeline.start(ChatInput(messages=HI, conversation_id="kept-out"))
    entry.attach(run)
    assert [e.as_dict()["state"] for e in fake_pipeline.running] == ["answering"]
    entry.stop(RequestStopped.cancelled(entry.id))
    with pytest.raises(RequestStopped) as info:
        await _drain(run)
    assert info.value.status == 499 and info.value.code == "request_cancelled"
    assert len(fake_pipeline.running) == 0  # closed when the run finished
    assert run.record.status == "error"
    assert fake_pipeline.store is not None
    assert fake_pipeline.store.get("kept-out") is None  # a stopped turn is not stored


async def test_a_stop_while_the_engine_is_silent_cancels_the_wait(
    fake_pipeline: Pipeline,
) -> None:
    """The engine takes its time (a long prefill, a slow token): the stop does not wait."""
    released = asyncio.Event()

    async def silent() -> AsyncIterator[Chunk]:
        await asyncio.Event().wait()  # never answers
        yield Chunk({})

    async def closing() -> AsyncIterator[Chunk]:
        try:
            async for chunk in silent():
                yield chunk
        finally:
            released.set()  # the engine's stream was closed: its generation stops

    entry = fake_pipeline.running.open("/api/chat", "m")
    run = await fake_pipeline.start(ChatInput(messages=HI))
    run._stream = closing()
    entry.attach(run)
    reading = asyncio.ensure_future(_drain(run))
    while run._reader is None:  # the run waits for the engine's next chunk
        await asyncio.sleep(0)
    entry.stop(RequestStopped.shutting_down())
    with pytest.raises(RequestStopped) as info:
        await reading
    assert info.value.status == 503 and released.is_set()
    assert not reading.cancelled()  # the task itself goes on: its face sends the error event


async def test_the_time_limit_stops_a_request_and_a_finished_one_is_not_listed() -> None:
    running = RunningRequests(max_seconds=0.01)
    entry = running.open("/v1/messages", "m")
    await asyncio.wait_for(_stopped(entry), 30)
    assert entry.stopped is not None and entry.stopped.status == 504
    assert "AUTOTUNE_MAX_REQUEST_SECONDS" in entry.stopped.message
    done = running.open("/v1/messages", "m")
    done.close()
    assert [e.id for e in running] == [entry.id] and running.get(done.id) is None
    assert running.stop_all(RequestStopped.shutting_down()) == 1
    assert entry.stopped.status == 504  # the first reason stays


async def _stopped(entry: Any) -> None:
    while entry.stopped is None:
        await asyncio.sleep(0.005)
