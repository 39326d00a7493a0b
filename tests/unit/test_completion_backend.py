"""Text completions and fill-in-the-middle on OpenAI-compatible engines, against the fake
llama-server / vLLM of ``tests/fakes/openai_compat.py`` (built from llama.cpp's documented
``/v1/completions`` and ``/infill``; no such engine with a FIM model can run here — the real
embedded engine's /infill is tested in tests/integration/test_faces.py on a GGUF variant)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from autotune.backends.openai_compat import OpenAICompatBackend
from autotune.ground.errors import InvalidRequest
from autotune.ground.types import Chunk, CompletionRequest
from fakes.openai_compat import LLAMACPP_TIMINGS, FakeOpenAI
from fakes.server import Swappable, serve

MODEL = "qwen2.5-coder-0.5b"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Swappable, str]]:
    board = Swappable()
    with serve(board) as url:
        yield board, url


@pytest.fixture
def make_fake(server: tuple[Swappable, str]) -> Any:
    def make(flavour: str, **kwargs: Any) -> FakeOpenAI:
        board, url = server
        engine = FakeOpenAI(flavour, model=MODEL, **kwargs)
        board.app = engine.app
        engine.url = url
        return engine

    return make


async def complete(url: str, kind: str, request: CompletionRequest) -> list[Chunk]:
    backend = OpenAICompatBackend(url, kind=kind)
    try:
        return [c async for c in backend.stream_completion(request)]
    finally:
        await backend.aclose()


async def test_a_prompt_goes_to_v1_completions_with_usage_and_timings(make_fake: Any) -> None:
    fake = make_fake("llamacpp")
    request = CompletionRequest(MODEL, "def add(a, b):", params={"max_tokens": 8, "stop": ["\n\n"]})
    chunks = await complete(fake.url, "llamacpp", request)
    (sent,) = fake.bodies("/v1/completions")
    assert sent["prompt"] == "def add(a, b):" and sent["max_tokens"] == 8
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    text = "".join(c.data["choices"][0]["text"] for c in chunks if c.data.get("choices"))
    assert text == "\n    return a + b"
    stats = chunks[-1].stats
    assert stats is not None and stats.prompt_ms == LLAMACPP_TIMINGS["prompt_ms"]
    assert stats.completion_tokens == 4


async def test_a_suffix_on_llamacpp_goes_to_infill_in_its_own_terms(make_fake: Any) -> None:
    fake = make_fake("llamacpp", fim=True)
    request = CompletionRequest(
        MODEL, "def add(a, b):\n    return ", "\n", params={"max_tokens": 16, "logprobs": 2}
    )
    chunks = await complete(fake.url, "llamacpp", request)
    (sent,) = fake.bodies("/infill")
    assert sent["input_prefix"] == "def add(a, b):\n    return " and sent["input_suffix"] == "\n"
    assert sent["n_predict"] == 16 and sent["n_probs"] == 2 and "max_tokens" not in sent
    assert [c.data["object"] for c in chunks] == ["text_completion", "text_completion"]
    assert chunks[0].data["choices"][0]["text"] == "a + b"
    assert chunks[-1].data["choices"][0]["finish_reason"] == "stop"
    stats = chunks[-1].stats
    assert stats is not None and stats.prompt_tokens == 12 and stats.cached_tokens == 4
    assert stats.completion_tokens == 3


async def test_a_model_without_fim_tokens_is_a_400_naming_suffix(make_fake: Any) -> None:
    fake = make_fake("llamacpp", fim=False)
    with pytest.raises(InvalidRequest) as info:
        await complete(fake.url, "llamacpp", CompletionRequest(MODEL, "def f(", "\n"))
    assert info.value.status == 400 and info.value.param == "suffix"
    assert "fill-in-the-middle" in str(info.value) and "prefix token is missing" in str(info.value)


async def test_other_engines_get_the_suffix_on_v1_completions(make_fake: Any) -> None:
    fake = make_fake("vllm")
    await complete(fake.url, "vllm", CompletionRequest(MODEL, "def f(", "\n"))
    (sent,) = fake.bodies("/v1/completions")
    assert sent["suffix"] == "\n" and fake.bodies("/infill") == []
