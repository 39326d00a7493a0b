"""A client's context floor (Ollama's ``num_ctx``) and keep-alive, through the real pipeline.

``ChatInput.min_context`` raises the planner's need, so the context is sized through the
same sticky buckets: asked once, the model loads that large; asked again at or below what is
loaded, nothing reloads; a plain request never shrinks it. ``ChatInput.keep_alive`` replaces
the setting for that request. Run against the in-process FakeBackend.
"""

from __future__ import annotations

import pytest

from autotune.pipeline import ChatInput, Pipeline
from fakes.backend import FakeBackend

pytestmark = pytest.mark.asyncio


async def ask(pipeline: Pipeline, **kw: object) -> None:
    run = await pipeline.start(ChatInput(messages=[{"role": "user", "content": "hi"}], **kw))  # type: ignore[arg-type]
    async for _ in run:
        pass


async def test_min_context_is_a_floor_through_the_sticky_buckets(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    await ask(fake_pipeline, min_context=5000)
    assert [s.n_ctx for _, s in fake_backend.loads if s] == [8192]  # the bucket holding 5,000
    await ask(fake_pipeline, min_context=3000)  # less than loaded: kept, no reload
    await ask(fake_pipeline)  # a plain request never shrinks it
    assert len(fake_backend.loads) == 1
    assert fake_backend.requests[-1].load is not None
    assert fake_backend.requests[-1].load.n_ctx == 8192


async def test_without_a_floor_a_short_chat_loads_the_smallest_bucket(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    await ask(fake_pipeline)
    assert fake_backend.loads[0][1] is not None and fake_backend.loads[0][1].n_ctx == 2048


async def test_min_context_stays_within_the_profile_cap(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    await ask(fake_pipeline, min_context=1_000_000, profile="fast")
    assert fake_backend.loads[0][1] is not None and fake_backend.loads[0][1].n_ctx == 2048


async def test_keep_alive_per_request_replaces_the_setting(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    await ask(fake_pipeline, keep_alive=0)
    assert fake_backend.requests[-1].keep_alive == 0
    await ask(fake_pipeline)
    assert fake_backend.requests[-1].keep_alive == fake_pipeline.settings.keep_alive
