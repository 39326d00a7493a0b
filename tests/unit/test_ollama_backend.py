"""OllamaBackend against a fake Ollama over real HTTP on 127.0.0.1.

No Ollama binary can be installed here, so the engine is the fake in ``tests/fakes/ollama.py``,
built from the responses documented in ollama/ollama docs/api.md (chat stream and final
statistics, /api/tags, /api/ps, /api/show model_info, /api/pull, /api/embed, unload by
``keep_alive: 0``) and the ``{"error": "model 'x' not found"}`` 404. The fake records every
request, so the tests check what was sent as well as what came back.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import pytest

from autotune.backends.ollama import RELOAD_THRESHOLD_MS, OllamaBackend, ollama_chat_body
from autotune.ground.errors import (
    EngineUnavailable,
    ModelNotFound,
    UnsupportedOption,
    UpstreamError,
)
from autotune.ground.types import ChatRequest, LoadSettings
from fakes.helpers import collect, has_null
from fakes.ollama import CHAT_FINAL, HYBRID, MODEL, TOOL_CALL_LINES, FakeOllama, chat_lines
from fakes.server import Swappable, closed_port_url, serve

HELLO = [{"role": "user", "content": "why is the sky blue?"}]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Swappable, str]]:
    board = Swappable()
    with serve(board) as url:
        yield board, url


@pytest.fixture
def fake(server: tuple[Swappable, str]) -> FakeOllama:
    """A fresh fake Ollama (state and request log) on the module's HTTP server."""
    board, url = server
    engine = FakeOllama()
    board.app = engine.app
    engine.url = url
    return engine


@asynccontextmanager
async def ollama_at(url: str) -> AsyncIterator[OllamaBackend]:
    backend = OllamaBackend(url)
    try:
        yield backend
    finally:
        await backend.aclose()


# --------------------------------------------------------------------------- chat streaming


async def test_stream_yields_openai_chunks_and_the_engines_timings(fake: FakeOllama) -> None:
    async with ollama_at(fake.url) as backend:
        chunks = await collect(backend, ChatRequest(model=MODEL, messages=HELLO))

    deltas = [c.data["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": "Hello"}
    assert "".join(d.get("content", "") for d in deltas) == "Hello world!"
    assert all(c.data["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c.data["id"] for c in chunks}) == 1
    assert [c.data["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert all(c.stats is None for c in chunks[:-1])

    final = chunks[-1]
    assert final.data["usage"] == {
        "prompt_tokens": 26,
        "completion_tokens": 282,
        "total_tokens": 308,
    }
    stats = final.stats
    assert stats is not None
    assert stats.prompt_tokens == 26
    assert stats.completion_tokens == 282
    assert stats.prompt_ms == pytest.approx(342.546)
    assert stats.decode_ms == pytest.approx(4535.599)
    assert stats.load_ms == pytest.approx(1.334875)
    assert stats.total_ms == pytest.approx(4883.583458)
    assert stats.reloaded is False
    assert stats.cached_tokens is None  # Ollama does not report it
    assert stats.raw["prompt_eval_duration"] == 342546000

    (sent,) = fake.bodies("/api/chat")
    assert sent == {"model": MODEL, "messages": HELLO, "stream": True}


async def test_a_long_load_duration_marks_a_reload(fake: FakeOllama) -> None:
    fake.chat_script = chat_lines("Hi", load_duration=6338219291)
    async with ollama_at(fake.url) as backend:
        chunks = await collect(backend, ChatRequest(model=MODEL, messages=HELLO))
    stats = chunks[-1].stats
    assert stats is not None
    assert stats.load_ms == pytest.approx(6338.219291)
    assert stats.load_ms > RELOAD_THRESHOLD_MS
    assert stats.reloaded is True


async def test_done_reason_length_becomes_finish_reason_length(fake: FakeOllama) -> None:
    fake.chat_script = chat_lines("Once upon", done_reason="length", eval_count=2)
    async with ollama_at(fake.url) as backend:
        chunks = await collect(backend, ChatRequest(model=MODEL, messages=HELLO))
    assert chunks[-1].data["choices"][0]["finish_reason"] == "length"
    assert chunks[-1].data["usage"]["completion_tokens"] == 2


async def test_an_empty_reply_still_opens_with_the_role(fake: FakeOllama) -> None:
    fake.chat_script = [CHAT_FINAL]
    async with ollama_at(fake.url) as backend:
        chunks = await collect(backend, ChatRequest(model=MODEL, messages=HELLO))
    assert len(chunks) == 1
    assert chunks[0].data["choices"][0] == {
        "index": 0,
        "delta": {"role": "assistant"},
        "finish_reason": "stop",
    }


async def test_load_settings_become_options_but_flash_attention_and_kv_type_never_do(
    fake: FakeOllama,
) -> None:
    load = LoadSettings(
        n_ctx=8192,
        n_batch=256,
        n_ubatch=128,
        flash_attn=True,
        cache_type_k="q8_0",
        cache_type_v="q8_0",
        n_threads=4,
        n_parallel=2,
    )
    request = ChatRequest(model=MODEL, messages=HELLO, load=load, keep_alive=-1)
    async with ollama_at(fake.url) as backend:
        await collect(backend, request)

    (sent,) = fake.bodies("/api/chat")
    assert sent["options"] == {"num_ctx": 8192, "num_batch": 256, "num_thread": 4}
    assert sent["keep_alive"] == -1
    text = json.dumps(sent)
    for never in ("flash", "cache_type", "kv", "ubatch", "parallel"):
        assert never not in text
    assert not has_null(sent)


async def test_openai_params_are_translated_to_ollama_terms(fake: FakeOllama) -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    params = {
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 42,
        "stop": "\n\n",
        "frequency_penalty": 0.5,
        "presence_penalty": 1.5,
        "max_tokens": 64,
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
        "top_k": 20,
        "stream": True,
        "stream_options": {"include_usage": True},
        "n": 1,
        "tool_choice": "auto",
    }
    request = ChatRequest(model=MODEL, messages=HELLO, params=params, keep_alive=300)
    async with ollama_at(fake.url) as backend:
        await collect(backend, request)

    (sent,) = fake.bodies("/api/chat")
    assert sent["options"] == {
        "temperature": 0.2,
        "top_p": 0.9,
        "seed": 42,
        "stop": ["\n\n"],
        "frequency_penalty": 0.5,
        "presence_penalty": 1.5,
        "num_predict": 64,
        "top_k": 20,
    }
    assert sent["format"] == schema
    assert sent["keep_alive"] == 300
    assert set(sent) == {"model", "messages", "stream", "options", "format", "keep_alive"}


def test_developer_messages_become_system_messages() -> None:
    messages = [{"role": "developer", "content": "Be brief."}, *HELLO]
    body = ollama_chat_body(ChatRequest(model=MODEL, messages=messages))
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}


def test_json_object_mode_and_max_completion_tokens() -> None:
    params = {
        "response_format": {"type": "json_object"},
        "max_tokens": 10,
        "max_completion_tokens": 99,
    }
    body = ollama_chat_body(ChatRequest(model=MODEL, messages=HELLO, params=params))
    assert body["format"] == "json"
    assert body["options"] == {"num_predict": 99}


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("tool_choice", "required"),
        ("tool_choice", {"type": "function", "function": {"name": "f"}}),
        ("logprobs", True),
        ("top_logprobs", 3),
        ("n", 2),
        ("logit_bias", {"50256": -100}),
        ("parallel_tool_calls", False),
        ("response_format", {"type": "xml"}),
        ("store", True),
    ],
)
async def test_unsupported_options_fail_before_the_engine_is_contacted(
    fake: FakeOllama, param: str, value: object
) -> None:
    request = ChatRequest(model=MODEL, messages=HELLO, params={param: value})
    async with ollama_at(fake.url) as backend:
        with pytest.raises(UnsupportedOption) as caught:
            await collect(backend, request)
    assert caught.value.param == param
    assert caught.value.status == 400
    assert "Ollama" in str(caught.value)
    assert fake.requests == []


async def test_an_image_by_http_url_is_refused_and_a_data_url_is_sent(fake: FakeOllama) -> None:
    remote = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "what?"}, remote]}]
    async with ollama_at(fake.url) as backend:
        with pytest.raises(UnsupportedOption):
            await collect(backend, ChatRequest(model=MODEL, messages=messages))
        assert fake.requests == []

        inline = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
        messages = [{"role": "user", "content": [{"type": "text", "text": "what?"}, inline]}]
        await collect(backend, ChatRequest(model=MODEL, messages=messages))
    (sent,) = fake.bodies("/api/chat")
    assert sent["messages"] == [{"role": "user", "content": "what?", "images": ["iVBORw0KGgo="]}]


# --------------------------------------------------------------------------- tools


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_current_weather",
        "description": "Get the current weather for a location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "City, country"},
                "format": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "when": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
                "units": {"type": "object", "properties": {"wind": {"type": "string"}}},
            },
            "required": ["location", "format"],
            "additionalProperties": False,
        },
    },
}


async def test_tool_calls_are_translated_both_ways(fake: FakeOllama) -> None:
    fake.chat_script = TOOL_CALL_LINES
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {
                        "name": "get_current_weather",
                        "arguments": '{"location": "Oslo"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"},
        {"role": "user", "content": "And Paris?"},
    ]
    request = ChatRequest(model=MODEL, messages=messages, params={"tools": [WEATHER_TOOL]})
    async with ollama_at(fake.url) as backend:
        chunks = await collect(backend, request)

    (sent,) = fake.bodies("/api/chat")
    assert sent["tools"] == [WEATHER_TOOL]  # the whole JSON schema, nothing dropped
    assistant, tool = sent["messages"][1], sent["messages"][2]
    assert assistant["content"] == ""
    assert assistant["tool_calls"][0]["function"] == {
        "name": "get_current_weather",
        "arguments": {"location": "Oslo"},
    }
    assert tool["tool_name"] == "get_current_weather"

    calls = [c for chunk in chunks for c in chunk.data["choices"][0]["delta"].get("tool_calls", [])]
    assert len(calls) == 1
    call = calls[0]
    assert call["index"] == 0
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"]["name"] == "get_current_weather"
    assert json.loads(call["function"]["arguments"]) == {
        "format": "celsius",
        "location": "Paris, FR",
    }
    assert chunks[-1].data["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1].data["usage"]["prompt_tokens"] == 122


def test_tool_call_arguments_that_are_not_json_are_refused() -> None:
    bad = {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
    messages = [{"role": "assistant", "content": None, "tool_calls": [bad]}]
    with pytest.raises(UnsupportedOption):
        ollama_chat_body(ChatRequest(model=MODEL, messages=messages))


# --------------------------------------------------------------------------- errors


async def test_unknown_model_is_model_not_found(fake: FakeOllama) -> None:
    async with ollama_at(fake.url) as backend:
        with pytest.raises(ModelNotFound) as caught:
            await collect(backend, ChatRequest(model="nope:7b", messages=HELLO))
        assert caught.value.model == "nope:7b"
        with pytest.raises(ModelNotFound):
            await backend.model_meta("nope:7b")


async def test_an_engine_4xx_passes_its_status_and_message_on(fake: FakeOllama) -> None:
    fake.chat_error = (
        400,
        {"error": "registry.ollama.ai/library/llama2:latest does not support tools"},
    )
    async with ollama_at(fake.url) as backend:
        with pytest.raises(UpstreamError) as caught:
            await collect(backend, ChatRequest(model=MODEL, messages=HELLO))
    assert caught.value.status == 400
    assert "does not support tools" in str(caught.value)
    assert caught.value.error_type == "invalid_request_error"


async def test_an_error_line_in_the_stream_is_an_upstream_error(fake: FakeOllama) -> None:
    fake.chat_script = [{"error": "model runner has unexpectedly stopped"}]
    async with ollama_at(fake.url) as backend:
        with pytest.raises(UpstreamError, match="unexpectedly stopped"):
            await collect(backend, ChatRequest(model=MODEL, messages=HELLO))


async def test_connection_refused_is_engine_unavailable_naming_url_and_start_hint() -> None:
    url = closed_port_url()
    async with ollama_at(url) as backend:
        with pytest.raises(EngineUnavailable) as caught:
            await collect(backend, ChatRequest(model=MODEL, messages=HELLO))
        with pytest.raises(EngineUnavailable):
            await backend.list_models()
        assert await backend.health() is False
    error = caught.value
    assert error.status == 503
    assert url in str(error)
    assert "ollama serve" in str(error)


# --------------------------------------------------------------------------- model endpoints


async def test_running_models_from_api_ps(fake: FakeOllama) -> None:
    async with ollama_at(fake.url) as backend:
        (running,) = await backend.running_models()
    assert running.name == "mistral:latest"
    assert running.backend == "ollama"
    assert running.size_bytes == 5137025024
    assert running.vram_bytes == 5137025024
    assert running.context_length == 8192
    assert running.quantization == "Q4_0"
    expected = datetime.fromisoformat("2024-06-04T14:38:31.837530-07:00").timestamp()
    assert running.expires_at == pytest.approx(expected)


async def test_model_meta_from_api_show(fake: FakeOllama) -> None:
    async with ollama_at(fake.url) as backend:
        meta = await backend.model_meta(MODEL)
    assert meta.architecture == "llama"
    assert meta.block_count == 32
    assert meta.head_count == 32
    assert meta.head_count_kv == 8
    assert meta.embedding_length == 4096
    assert meta.context_length == 8192
    assert meta.vocab_size == 128256
    assert meta.parameter_count == 8030261248
    assert meta.quantization == "Q4_0"
    assert meta.key_length is None  # not in model_info: defaults to embedding / heads later
    (sent,) = fake.bodies("/api/show")
    assert sent == {"model": MODEL}


async def test_model_meta_keeps_a_per_layer_head_count_kv_array(fake: FakeOllama) -> None:
    async with ollama_at(fake.url) as backend:
        meta = await backend.model_meta(HYBRID)
    assert meta.architecture == "jamba"
    assert meta.head_count_kv == [0, 0, 0, 0, 8, 0, 0, 0]
    assert meta.block_count == 8
    assert meta.key_length == 128
    assert meta.value_length == 128
    assert meta.context_length == 262144


async def test_list_models_from_api_tags(fake: FakeOllama) -> None:
    async with ollama_at(fake.url) as backend:
        models = await backend.list_models()
    assert [m.name for m in models] == ["codellama:13b", MODEL]
    assert models[0].size_bytes == 7365960935
    assert models[0].parameter_size == "13B"
    assert models[0].quantization == "Q4_0"
    assert models[0].family == "llama"


async def test_pull_streams_progress(fake: FakeOllama) -> None:
    async with ollama_at(fake.url) as backend:
        steps = [step async for step in backend.pull("llama3.2")]
    assert steps[0].status == "pulling manifest"
    assert steps[2].completed == 241970
    assert steps[2].total == 2142590208
    assert steps[-1].status == "success"
    (sent,) = fake.bodies("/api/pull")
    assert sent["model"] == "llama3.2"
    assert sent["stream"] is True


async def test_unload_sends_keep_alive_zero(fake: FakeOllama) -> None:
    async with ollama_at(fake.url) as backend:
        await backend.unload(MODEL)
        with pytest.raises(ModelNotFound):
            await backend.unload("nope:1b")
    first = fake.bodies("/api/generate")[0]
    assert first["model"] == MODEL
    assert first["keep_alive"] == 0
    assert "prompt" not in first  # an empty generate with keep_alive 0 is Ollama's unload


async def test_embed_and_health_and_version(fake: FakeOllama) -> None:
    async with ollama_at(fake.url) as backend:
        vectors = await backend.embed(MODEL, ["a", "bcd"])
        assert await backend.health() is True
        assert await backend.version() == "0.12.6"
    assert [v[2] for v in vectors] == [1.0, 3.0]
    assert fake.bodies("/api/embed")[0]["input"] == ["a", "bcd"]


def test_capabilities_say_what_ollama_allows() -> None:
    caps = OllamaBackend.capabilities
    assert caps.per_request_context and caps.context_change_reloads and caps.env_load_settings
    assert not (caps.load_control or caps.kv_cache_type or caps.flash_attention)
    assert not caps.reports_cached_tokens and not caps.tokenize
    assert caps.keep_alive and caps.pull and caps.unload and caps.embeddings


async def test_a_router_upstreams_api_key_is_sent_on_every_request(
    server: tuple[Swappable, str], fake: FakeOllama
) -> None:
    """An Ollama behind an authenticating proxy: the router config's key goes in the
    Authorization header of each call (the fake's app is wrapped to read the headers)."""
    from autotune.backends.router import make_upstream_backend
    from autotune.backends.router_config import UpstreamConfig

    board, _ = server
    seen: list[bytes | None] = []
    inner = fake.app

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            seen.append(dict(scope["headers"]).get(b"authorization"))
        await inner(scope, receive, send)

    board.app = app
    config = UpstreamConfig(url=fake.url, kind="ollama", api_key="sk-test")
    backend = make_upstream_backend(config)
    try:
        assert [m.name for m in await backend.list_models()]
        await collect(backend, ChatRequest(model=MODEL, messages=HELLO))
    finally:
        await backend.aclose()
    assert len(seen) >= 2 and set(seen) == {b"Bearer sk-test"}
