"""A reply that runs away (the same text over and over) is stopped, and only such a reply.

The detector is checked on the project's own prose and code (never fires) and on loops; the
run on the real pipeline over the scripted FakeBackend (tests/fakes/backend.py). The real
engine's loop is shown in tests/integration/test_runaway_engine.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.pipeline import ChatInput, Pipeline
from autotune.pipeline.runaway import MIN_SPAN, RepetitionGuard, find_loop
from fakes.backend import MODEL, FakeBackend, FakeReply

ROOT = Path(__file__).parents[2]
#: What Gemma-3-270M wrote after a tool result, over and over (seen on the real engine).
BLOCK = "<tool_response>\nSunny, 21 degrees.\n</tool_response>場所に\n"


def _fires(text: str, piece: int = 7) -> int | None:
    """Where a guard fed ``text`` in pieces of ``piece`` characters fires, or None."""
    guard = RepetitionGuard()
    for at in range(0, len(text), piece):
        if guard.feed(text[at : at + piece]) is not None:
            return at + piece
    return None


@pytest.mark.parametrize(
    "path",
    ["README.md", "docs/ENGINES.md", "src/autotune/pipeline/pipeline.py", "Makefile"],
)
def test_prose_and_code_never_count_as_a_loop(path: str) -> None:
    assert _fires((ROOT / path).read_text(encoding="utf-8")) is None


def test_near_repetition_is_not_a_loop() -> None:
    numbered = "".join(f"{i}. Check the cable, then restart the router.\n" for i in range(400))
    table = "".join(f"| row | {i * i % 97} | ok |\n" for i in range(400))
    assert _fires(numbered) is None and _fires(table) is None
    assert _fires("Ha" * (MIN_SPAN // 4)) is None  # repetition, but shorter than the span


def test_a_loop_is_found_soon_after_its_span() -> None:
    text = "Here is the weather.\n" + BLOCK * 200
    at = _fires(text)
    assert at is not None and at <= len("Here is the weather.\n") + MIN_SPAN + 2 * len(BLOCK) + 256
    loop = find_loop(text[:at])
    assert loop is not None and loop.period == len(BLOCK) and loop.repeats >= 4
    assert _fires("\n" * 5000) is not None  # blank lines forever: period 1


async def test_a_runaway_reply_without_a_limit_is_stopped(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    fake_backend.queue(FakeReply(pieces=("Sure.\n", *[BLOCK] * 500)))
    run = await fake_pipeline.start(
        ChatInput(messages=[{"role": "user", "content": "Weather?"}], model=MODEL)
    )
    assert "runaway=watch" in run.plan.summary()  # said up front: this reply is watched
    async for _ in run:
        pass
    assert run.finish_reason == "length"
    assert "runaway=stopped" in run.plan.summary()
    assert run.record.status == "ok" and "runaway=stopped" in (run.record.plan or "")
    assert any(d["key"] == "runaway" and "repeated" in d["reason"] for d in run.record.decisions)
    assert len(run.text) < len(BLOCK) * 100  # stopped early, not at the engine's end
    assert fake_pipeline.queue.running == 0


async def test_a_reply_with_a_limit_is_left_to_its_limit(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    fake_backend.queue(FakeReply(pieces=[BLOCK] * 100))
    run = await fake_pipeline.start(
        ChatInput(
            messages=[{"role": "user", "content": "Weather?"}],
            model=MODEL,
            params={"max_tokens": 4000},
        )
    )
    async for _ in run:
        pass
    assert "runaway" not in run.plan.summary()
    assert run.finish_reason == "stop" and run.text == BLOCK * 100


async def test_the_guard_can_be_turned_off(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    fake_pipeline.settings = fake_pipeline.settings.model_copy(update={"runaway_chars": 0})
    fake_backend.queue(FakeReply(pieces=[BLOCK] * 100))
    run = await fake_pipeline.start(
        ChatInput(messages=[{"role": "user", "content": "Weather?"}], model=MODEL)
    )
    async for _ in run:
        pass
    assert "runaway" not in run.plan.summary() and run.text == BLOCK * 100
