"""Background work (not streamed, no token limit) never holds up a person's turn: on the real
pipeline over the scripted FakeBackend (tests/fakes/backend.py), a turn that arrives while a
background reply runs makes it stop and takes its place. The admission rules themselves are
in tests/unit/test_admission.py; the real engine in tests/integration/test_background_engine.py.
"""

from __future__ import annotations

import asyncio

from autotune.pipeline import ChatInput, Pipeline
from fakes.backend import MODEL, FakeBackend, FakeReply

TITLE = [{"role": "user", "content": "### Task:\nGenerate a title for the chat history."}]
TURN = [{"role": "user", "content": "And the ocean floor?"}]


async def test_a_turn_makes_the_running_background_reply_yield(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    fake_backend.queue(FakeReply(pieces=[f"word{i} " for i in range(200)]), FakeReply(("Deep.",)))
    task = await fake_pipeline.start(ChatInput(messages=TITLE, model=MODEL, streamed=False))
    assert "priority=background" in task.plan.summary()
    chunks = task.__aiter__()
    for _ in range(5):
        await chunks.__anext__()
    turn_started = asyncio.ensure_future(
        fake_pipeline.start(ChatInput(messages=TURN, model=MODEL, streamed=True))
    )
    await asyncio.sleep(0)
    assert not turn_started.done()  # it waits for the place the task holds ...
    async for _ in chunks:  # ... and the task, at its next chunk, stops and gives it up
        pass
    assert task.finish_reason == "length" and "priority=yielded" in task.plan.summary()
    assert 0 < len(task.text.split()) < 200
    turn = await turn_started
    async for _ in turn:
        pass
    assert turn.text == "Deep." and turn.finish_reason == "stop"
    assert "priority" not in turn.plan.summary()
    assert [r.status for r in fake_pipeline.recent] == ["ok", "ok"]
    assert fake_pipeline.queue.running == 0 and fake_pipeline.queue.yielded == 1


async def test_background_work_alone_runs_to_its_end(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    fake_backend.queue(FakeReply(pieces=[f"word{i} " for i in range(50)]))
    task = await fake_pipeline.start(ChatInput(messages=TITLE, model=MODEL, streamed=False))
    async for _ in task:
        pass
    assert task.finish_reason == "stop" and len(task.text.split()) == 50
    assert "priority=background" in task.plan.summary()
