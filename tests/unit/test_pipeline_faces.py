"""The pipeline entry points the API faces use: completions, embeddings, token counts, a run
stopped at a stop sequence, and a system prompt sent again with each turn.

The real pipeline (admission, gather, decide, a real SQLite store) over the scripted
FakeBackend (tests/fakes/backend.py); the faces themselves are tested with the official
clients on the real engine in tests/integration/test_faces.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from autotune.ground.errors import ContextLengthExceeded, InvalidRequest, NotSupported
from autotune.ground.types import Chunk, CompletionRequest, EngineStats, ModelMeta
from autotune.pipeline import ChatInput, Pipeline
from autotune.pipeline.complete import CompletionInput, start_completion
from autotune.pipeline.conversation import read_conversation
from autotune.pipeline.count import count_tokens
from autotune.pipeline.embed import embed
from fakes.backend import MODEL, FakeBackend, FakeReply

pytestmark = pytest.mark.asyncio


class CompletingBackend(FakeBackend):
    """The fake engine with text completions and embeddings."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.completions: list[CompletionRequest] = []
        self.embedded: list[list[str]] = []

    async def stream_completion(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        self.completions.append(request)
        if request.load is not None:
            await self.load(request.model, request.load)
        base = {"object": "text_completion", "model": request.model}
        for piece in ("return", " a + b"):
            yield Chunk({**base, "choices": [{"index": 0, "text": piece}]})
        stats = EngineStats(prompt_tokens=5, cached_tokens=0, completion_tokens=2)
        yield Chunk({**base, "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}, stats)

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        self.embedded.append(texts)
        return [[float(len(t)), 1.0] for t in texts]


@pytest.fixture
def completing(fake_pipeline: Pipeline) -> CompletingBackend:
    backend = CompletingBackend(meta=ModelMeta(name=MODEL, context_length=2048))
    fake_pipeline.backends.backends["fake"] = backend
    return backend


async def test_a_completion_is_planned_like_a_chat_and_stores_nothing(
    fake_pipeline: Pipeline, completing: CompletingBackend
) -> None:
    run = await start_completion(
        fake_pipeline,
        CompletionInput("def add(a, b):\n    ", model=MODEL, suffix="\n", params={"max_tokens": 8}),
    )
    async for _ in run:
        pass
    (sent,) = completing.completions
    assert sent.prompt == "def add(a, b):\n    " and sent.suffix == "\n"
    assert sent.params["max_tokens"] == 8 and sent.load is not None  # planned: a load, a context
    assert run.reply.text == "return a + b" and run.finish_reason == "stop"
    assert run.record.source == "completions" and run.record.status == "ok"
    assert run.record.completion_tokens == 2 and run.conversation_id is None
    assert fake_pipeline.queue.running == 0


async def test_a_prompt_that_cannot_fit_is_refused_never_cut(
    fake_pipeline: Pipeline, completing: CompletingBackend
) -> None:
    huge = " ".join(f"w{i}" for i in range(6000))
    with pytest.raises(ContextLengthExceeded) as info:
        await start_completion(fake_pipeline, CompletionInput(huge, model=MODEL))
    assert info.value.param == "prompt" and info.value.status == 400
    assert completing.completions == []


async def test_an_engine_without_completions_is_a_400(fake_pipeline: Pipeline) -> None:
    with pytest.raises(InvalidRequest) as info:
        await start_completion(fake_pipeline, CompletionInput("x", model=MODEL))
    assert info.value.param == "model" and "/v1/chat/completions" in str(info.value)


async def test_embeddings_go_through_admission_and_telemetry(
    fake_pipeline: Pipeline, completing: CompletingBackend
) -> None:
    result = await embed(fake_pipeline, MODEL, ["ab", "abcd"])
    assert result.vectors == [[2.0, 1.0], [4.0, 1.0]] and result.prompt_tokens > 0
    record = fake_pipeline.recent[-1]
    assert record.source == "embeddings" and record.status == "ok" and record.model == MODEL
    assert fake_pipeline.queue.running == 0


async def test_an_engine_that_cannot_embed_is_a_400_that_names_models_that_can(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    async def no(model: str, texts: list[str]) -> list[list[float]]:
        raise NotSupported("fake has no embeddings endpoint.")

    fake_backend.embed = no  # type: ignore[method-assign]
    with pytest.raises(InvalidRequest) as info:
        await embed(fake_pipeline, MODEL, ["x"])
    assert info.value.param == "model" and "all-minilm" in str(info.value)
    assert fake_pipeline.recent[-1].status == "error" and fake_pipeline.queue.running == 0
    with pytest.raises(InvalidRequest):
        await embed(fake_pipeline, MODEL, [])


async def test_counts_are_exact_once_the_model_is_loaded(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    messages = [{"role": "user", "content": "one two three"}]
    before = await count_tokens(fake_pipeline, MODEL, messages)
    assert before.exact is False and before.tokens > 0
    await fake_backend.load(MODEL)
    after = await count_tokens(fake_pipeline, MODEL, messages)
    assert after.exact is True and after.tokens == 3 + 4  # three words, the template overhead


async def test_a_run_stopped_early_stores_the_reply_up_to_the_stop(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    fake_backend.queue(FakeReply(("one two", " STOP three", " four")))
    run = await fake_pipeline.start(
        ChatInput([{"role": "user", "content": "count"}], conversation_id="conv_stop")
    )
    chunks = run.__aiter__()
    async for _ in chunks:
        if "STOP" in run.text:
            await run.stop_early(len("one two "))
            break
    await chunks.aclose()  # type: ignore[attr-defined]
    assert run.record.status == "ok" and fake_pipeline.queue.running == 0
    assert fake_pipeline.store is not None
    stored = fake_pipeline.store.messages("conv_stop")
    assert [m.content for m in stored] == ["count", "one two "]


async def test_a_system_prompt_sent_with_each_turn_replaces_the_stored_one(
    fake_pipeline: Pipeline,
) -> None:
    store = fake_pipeline.store
    assert store is not None
    store.ensure("conv_sys")
    store.append(
        "conv_sys",
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ],
    )
    turn = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Again"}]
    view = await read_conversation(store, "conv_sys", turn)
    assert [m["role"] for m in view.messages] == ["system", "user", "assistant", "user"]
    assert view.new_messages == [{"role": "user", "content": "Again"}]
    resent = await read_conversation(
        store, "conv_sys", [*[m.as_openai() for m in store.messages("conv_sys")], turn[1]]
    )
    assert view.messages == resent.messages and resent.new_messages == view.new_messages
