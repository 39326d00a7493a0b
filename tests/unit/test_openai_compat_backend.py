"""OpenAICompatBackend against fake llama-server, LM Studio, vLLM, SGLang and mlx_lm servers.

None of these engines can run here (no GPU for vLLM/SGLang, no LM Studio, no Apple Silicon for
mlx_lm; the embedded llama.cpp engine is tested elsewhere), so ``tests/fakes/openai_compat.py``
answers over real HTTP on 127.0.0.1 with the shapes documented in ggml-org/llama.cpp
tools/server/README.md (``/props``, ``/v1/models`` meta, ``/tokenize``, ``timings``, error
bodies), the LM Studio REST API docs (``/api/v0/models``, ``/api/v1/models``, flat
``/api/v1/models/load``, ``/api/v1/models/unload``), the vLLM metrics docs (``vllm:`` metric
names) and its 404 error body, and SGLang's ``/get_model_info`` and ``sglang:`` metrics.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from autotune.backends.openai_compat import (
    OpenAICompatBackend,
    capabilities_for,
    engine_stats_from_chunk,
)
from autotune.ground.errors import EngineUnavailable, ModelNotFound, NotSupported, UpstreamError
from autotune.ground.types import ChatRequest, Chunk, LoadSettings
from fakes.helpers import collect, has_null
from fakes.openai_compat import LLAMACPP_TIMINGS, FakeOpenAI
from fakes.server import Swappable, closed_port_url, serve

MODEL = "qwen2.5-0.5b-instruct"
HELLO = [{"role": "user", "content": "Hello"}]


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[Swappable, str]]:
    board = Swappable()
    with serve(board) as url:
        yield board, url


@pytest.fixture
def make_fake(server: tuple[Swappable, str]) -> Any:
    """Put a fresh fake of the given flavour on the module's HTTP server."""

    def make(flavour: str, **kwargs: Any) -> FakeOpenAI:
        board, url = server
        engine = FakeOpenAI(flavour, model=MODEL, **kwargs)
        board.app = engine.app
        engine.url = url
        return engine

    return make


@asynccontextmanager
async def backend_at(url: str, **kwargs: Any) -> AsyncIterator[OpenAICompatBackend]:
    backend = OpenAICompatBackend(url, **kwargs)
    try:
        yield backend
    finally:
        await backend.aclose()


# --------------------------------------------------------------------------- probe


@pytest.mark.parametrize(
    ("flavour", "options", "kind"),
    [
        ("llamacpp", {"metrics": False}, "llamacpp"),
        ("llamacpp", {"metrics": True}, "llamacpp"),
        ("lmstudio", {}, "lmstudio"),
        ("vllm", {}, "vllm"),
        ("sglang", {"metrics": True}, "sglang"),
        ("sglang", {"metrics": False}, "sglang"),
        ("mlx", {}, "openai"),
    ],
)
async def test_probe_finds_the_kind_and_sets_capabilities_from_it(
    make_fake: Any, flavour: str, options: dict[str, Any], kind: str
) -> None:
    fake = make_fake(flavour, **options)
    async with backend_at(fake.url) as backend:
        assert await backend.probe() == kind
        assert backend.kind == kind
        assert backend.capabilities == capabilities_for(kind)
        assert backend.start_hint


async def test_probed_capabilities_match_each_engine() -> None:
    llama = capabilities_for("llamacpp")
    assert llama.tokenize and llama.reports_cached_tokens and llama.prefix_cache
    assert llama.context_change_reloads and not llama.load_control
    lms = capabilities_for("lmstudio")
    assert lms.load_control and lms.running_models and lms.keep_alive and lms.flash_attention
    assert not lms.tokenize
    for kind in ("vllm", "sglang"):
        caps = capabilities_for(kind)
        assert caps.prefix_cache and caps.reports_cached_tokens and not caps.load_control
    generic = capabilities_for("openai")
    assert not (generic.tokenize or generic.load_control or generic.running_models)


async def test_the_probe_runs_once(make_fake: Any) -> None:
    fake = make_fake("vllm")
    async with backend_at(fake.url) as backend:
        await backend.probe()
        seen = len(fake.requests)
        await backend.probe()
        await collect(backend, ChatRequest(model=MODEL, messages=HELLO))
    assert len(fake.requests) == seen + 1
    assert fake.paths()[-1] == "/v1/chat/completions"


async def test_a_forced_kind_skips_the_probe(make_fake: Any) -> None:
    fake = make_fake("llamacpp")
    async with backend_at(fake.url, kind="lmstudio", name="lmstudio") as backend:
        assert await backend.probe() == "lmstudio"
        assert backend.capabilities.load_control
        assert "lms server start" in backend.start_hint
    assert fake.requests == []


def test_an_unknown_forced_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown server kind"):
        OpenAICompatBackend("http://127.0.0.1:1", kind="tgi")


# --------------------------------------------------------------------------- chat


async def test_llamacpp_stream_passes_chunks_through_and_reads_timings(make_fake: Any) -> None:
    fake = make_fake("llamacpp")
    params = {"temperature": 0.7, "max_tokens": 32, "cache_prompt": True, "n_keep": 4}
    request = ChatRequest(model=MODEL, messages=HELLO, params=params, keep_alive=300)
    async with backend_at(fake.url) as backend:
        chunks = await collect(backend, request)

    assert [c.data for c in chunks] == fake.sent  # unchanged, engine fields included
    assert all(c.stats is None for c in chunks[:-1])
    stats = chunks[-1].stats
    assert stats is not None
    assert stats.cached_tokens == 3
    assert stats.prompt_tokens == 13
    assert stats.prompt_ms == pytest.approx(LLAMACPP_TIMINGS["prompt_ms"])
    assert stats.decode_ms == pytest.approx(LLAMACPP_TIMINGS["predicted_ms"])
    assert stats.completion_tokens == 3
    assert stats.raw["timings"]["cache_n"] == 3

    (sent,) = fake.bodies("/v1/chat/completions")
    assert sent == {
        "model": MODEL,
        "messages": HELLO,
        **params,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    assert not has_null(sent)
    assert "ttl" not in sent  # keep_alive means nothing to a llama-server


async def test_vllm_cached_tokens_come_from_usage_details(make_fake: Any) -> None:
    fake = make_fake("vllm")
    async with backend_at(fake.url) as backend:
        chunks = await collect(backend, ChatRequest(model=MODEL, messages=HELLO))
    stats = chunks[-1].stats
    assert stats is not None
    assert stats.cached_tokens == 3
    assert stats.prompt_tokens == 13
    assert stats.prompt_ms is None  # vLLM has no per-request timings
    assert chunks[-1].data["choices"] == []


async def test_tool_call_chunks_pass_through_unchanged(make_fake: Any) -> None:
    fake = make_fake("vllm")
    call = {
        "index": 0,
        "id": "chatcmpl-tool-1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    fake.chat_chunks = [
        fake._chunk({"role": "assistant", "content": None, "tool_calls": [call]}),
        fake._chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]}),
    ]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]
    request = ChatRequest(
        model=MODEL, messages=HELLO, params={"tools": tools, "tool_choice": "auto"}
    )
    async with backend_at(fake.url) as backend:
        chunks = await collect(backend, request)
    assert [c.data for c in chunks] == fake.sent
    (sent,) = fake.bodies("/v1/chat/completions")
    assert sent["tools"] == tools
    assert sent["tool_choice"] == "auto"


async def test_lmstudio_loads_with_the_requested_settings_once(make_fake: Any) -> None:
    fake = make_fake("lmstudio")
    load = LoadSettings(n_ctx=8192, n_batch=512, flash_attn=True, cache_type_k="q8_0")
    request = ChatRequest(model=MODEL, messages=HELLO, load=load, keep_alive=90.5)
    bigger = ChatRequest(model=MODEL, messages=HELLO, load=LoadSettings(n_ctx=16384))
    async with backend_at(fake.url) as backend:
        replies = [
            await collect(backend, request),
            await collect(backend, request),  # same settings: already loaded, no second load
            await collect(backend, bigger),
        ]
        running = await backend.running_models()

    loads = fake.bodies("/api/v1/models/load")
    assert loads == [
        {"model": MODEL, "context_length": 8192, "eval_batch_size": 512, "flash_attention": True},
        {"model": MODEL, "context_length": 16384},
    ]
    assert fake.bodies("/api/v1/models/unload") == [{"instance_id": MODEL}]
    paths = fake.paths()
    assert paths.index("/api/v1/models/load") < paths.index("/v1/chat/completions")
    chats = fake.bodies("/v1/chat/completions")
    assert chats[0]["ttl"] == 91
    assert "ttl" not in chats[2]
    (only,) = running
    assert only.name == MODEL
    assert only.context_length == 16384
    first, second, third = (reply[-1].stats for reply in replies)
    assert first is not None and first.reloaded is True
    assert first.load_ms == pytest.approx(1200.0)  # the load reply's load_time_seconds
    assert second is not None and second.reloaded is False
    assert third is not None and third.reloaded is True


async def test_lmstudio_without_the_v1_api_has_no_load_control(make_fake: Any) -> None:
    fake = make_fake("lmstudio", lmstudio_v1=False)
    async with backend_at(fake.url) as backend:
        assert await backend.probe() == "lmstudio"
        assert not backend.capabilities.load_control
        assert backend.capabilities.running_models
        await collect(backend, ChatRequest(model=MODEL, messages=HELLO, load=LoadSettings(8192)))
        with pytest.raises(NotSupported):
            await backend.load(MODEL, LoadSettings(8192))
        assert await backend.running_models() == []  # /api/v0 says nothing is loaded
    assert "/api/v1/models/load" not in fake.paths()


async def test_lmstudio_keep_alive_forever_sends_no_ttl(make_fake: Any) -> None:
    fake = make_fake("lmstudio")
    async with backend_at(fake.url) as backend:
        await collect(backend, ChatRequest(model=MODEL, messages=HELLO, keep_alive=-1))
    (sent,) = fake.bodies("/v1/chat/completions")
    assert "ttl" not in sent


async def test_a_forced_lmstudio_kind_on_an_old_lm_studio_still_chats(make_fake: Any) -> None:
    fake = make_fake("lmstudio", lmstudio_v1=False)
    request = ChatRequest(model=MODEL, messages=HELLO, load=LoadSettings(8192))
    async with backend_at(fake.url, kind="lmstudio") as backend:
        assert backend.capabilities.load_control  # assumed until the server says otherwise
        chunks = await collect(backend, request)
        assert not backend.capabilities.load_control
    assert chunks[-1].stats is not None and chunks[-1].stats.reloaded is None
    assert fake.paths() == ["/v1/chat/completions"]  # /api/v1/models answered 404, unrecorded


async def test_load_is_not_supported_where_the_server_owns_it(make_fake: Any) -> None:
    fake = make_fake("llamacpp")
    async with backend_at(fake.url) as backend:
        with pytest.raises(NotSupported):
            await backend.load(MODEL, LoadSettings(n_ctx=4096))
        # A plan's load settings are not an error on a chat: the server keeps its launch flags.
        await collect(backend, ChatRequest(model=MODEL, messages=HELLO, load=LoadSettings(4096)))
    assert "/api/v1/models/load" not in fake.paths()


# --------------------------------------------------------------------------- errors


async def test_a_4xx_passes_the_engines_message_on(make_fake: Any) -> None:
    fake = make_fake("llamacpp")
    fake.error = (
        400,
        {
            "error": {
                "code": 400,
                "message": "the request exceeds the available context size, try increasing it",
                "type": "exceed_context_size_error",
            }
        },
    )
    async with backend_at(fake.url) as backend:
        with pytest.raises(UpstreamError) as caught:
            await collect(backend, ChatRequest(model=MODEL, messages=HELLO))
    assert caught.value.status == 400
    assert "exceeds the available context size" in str(caught.value)
    assert "llama.cpp" in str(caught.value)


async def test_an_unknown_model_on_vllm_is_model_not_found(make_fake: Any) -> None:
    fake = make_fake("vllm")
    async with backend_at(fake.url) as backend:
        with pytest.raises(ModelNotFound) as caught:
            await collect(backend, ChatRequest(model="llama-9000", messages=HELLO))
    assert caught.value.model == "llama-9000"
    assert caught.value.status == 404


async def test_a_5xx_is_an_upstream_error(make_fake: Any) -> None:
    fake = make_fake("sglang")
    fake.error = (500, {"object": "error", "message": "CUDA out of memory", "code": 500})
    async with backend_at(fake.url) as backend:
        with pytest.raises(UpstreamError) as caught:
            await collect(backend, ChatRequest(model=MODEL, messages=HELLO))
    assert caught.value.status == 500
    assert "CUDA out of memory" in str(caught.value)


@pytest.mark.parametrize(
    ("kind", "hint"),
    [
        ("lmstudio", "lms server start"),
        ("llamacpp", "llama-server -m MODEL.gguf --port 8080"),
        ("vllm", "vllm serve MODEL"),
        (None, "check the URL"),
    ],
)
async def test_connection_refused_is_engine_unavailable(kind: str | None, hint: str) -> None:
    url = closed_port_url()
    async with backend_at(url, kind=kind) as backend:
        with pytest.raises(EngineUnavailable) as caught:
            await collect(backend, ChatRequest(model=MODEL, messages=HELLO))
        assert await backend.health() is False
    assert caught.value.status == 503
    assert url in str(caught.value)
    assert hint in str(caught.value)


# --------------------------------------------------------------------------- other endpoints


async def test_llamacpp_running_model_tokenize_and_list(make_fake: Any) -> None:
    fake = make_fake("llamacpp")
    async with backend_at(fake.url) as backend:
        (running,) = await backend.running_models()
        tokens = await backend.tokenize(MODEL, "Hi!")
        (entry,) = await backend.list_models()
    assert running.name == MODEL
    assert running.context_length == 4096
    assert running.settings["n_parallel"] == 2
    assert tokens == [72, 105, 33]
    assert fake.bodies("/tokenize") == [{"content": "Hi!"}]
    assert entry.size_bytes == 397808192
    assert entry.meta is not None
    assert entry.meta.context_length == 32768
    assert entry.meta.parameter_count == 494032768


async def test_tokenize_and_running_models_are_not_supported_on_a_generic_server(
    make_fake: Any,
) -> None:
    fake = make_fake("mlx")
    async with backend_at(fake.url) as backend:
        with pytest.raises(NotSupported):
            await backend.tokenize(MODEL, "Hi")
        with pytest.raises(NotSupported):
            await backend.running_models()
    assert "/tokenize" not in fake.paths()


async def test_lmstudio_lists_models_with_their_context_and_unloads(make_fake: Any) -> None:
    fake = make_fake("lmstudio")
    fake.instances[MODEL] = [{"id": MODEL, "config": {"context_length": 4096}}]
    async with backend_at(fake.url) as backend:
        models = await backend.list_models()
        await backend.unload(MODEL)
        assert await backend.running_models() == []
    assert [m.name for m in models] == [MODEL, "text-embedding-nomic-embed-text-v1.5"]
    assert models[0].quantization == "Q4_K_M"
    assert models[0].meta is not None and models[0].meta.context_length == 32768
    assert fake.bodies("/api/v1/models/unload") == [{"instance_id": MODEL}]


async def test_vllm_running_models_come_from_v1_models(make_fake: Any) -> None:
    fake = make_fake("vllm")
    async with backend_at(fake.url) as backend:
        (running,) = await backend.running_models()
    assert running.name == MODEL
    assert running.context_length == 32768


async def test_embed_orders_vectors_by_index(make_fake: Any) -> None:
    fake = make_fake("vllm")
    async with backend_at(fake.url) as backend:
        vectors = await backend.embed(MODEL, ["a", "abc"])
    assert vectors == [[0.5, 1.0], [0.5, 3.0]]


@pytest.mark.parametrize("flavour", ["llamacpp", "lmstudio", "vllm", "mlx"])
async def test_health(make_fake: Any, flavour: str) -> None:
    fake = make_fake(flavour)
    async with backend_at(fake.url) as backend:
        assert await backend.health() is True


async def test_api_key_and_a_v1_suffix(make_fake: Any) -> None:
    fake = make_fake("vllm")
    async with backend_at(fake.url + "/v1/", api_key="sk-local", name="openai") as backend:
        assert backend.base_url == fake.url
        await collect(backend, ChatRequest(model=MODEL, messages=HELLO))
    assert {r["authorization"] for r in fake.requests} == {"Bearer sk-local"}


async def test_a_subclass_decides_the_url_later(make_fake: Any) -> None:
    fake = make_fake("llamacpp")

    class PerModel(OpenAICompatBackend):
        async def _url_for(self, model: str | None) -> str:
            return fake.url

    backend = PerModel("http://127.0.0.1:1", kind="llamacpp")
    try:
        chunks = await collect(backend, ChatRequest(model=MODEL, messages=HELLO))
        assert await backend.tokenize(MODEL, "a") == [97]
    finally:
        await backend.aclose()
    assert chunks[-1].stats is not None


# --------------------------------------------------------------------------- stats helper


def test_stats_helper_reads_a_recorded_llamacpp_reply() -> None:
    # A non-streamed llama-server reply as recorded in the wild (usage + timings, 3 cached).
    reply = {
        "choices": [{"finish_reason": "stop", "index": 0, "message": {"content": "..."}}],
        "usage": {"completion_tokens": 1275, "prompt_tokens": 13, "total_tokens": 1288},
        "timings": {
            "cache_n": 3,
            "prompt_n": 10,
            "prompt_ms": 46639.853,
            "predicted_n": 1275,
            "predicted_ms": 174107.674,
        },
    }
    stats = engine_stats_from_chunk(reply)
    assert stats is not None
    assert (stats.prompt_tokens, stats.cached_tokens, stats.completion_tokens) == (13, 3, 1275)
    assert stats.prompt_ms == pytest.approx(46639.853)
    assert stats.decode_tps == pytest.approx(1275 / 174.107674)
    assert engine_stats_from_chunk({"choices": [{"delta": {"content": "x"}}]}) is None


def test_stats_helper_reads_timings_alone_and_lmstudio_stats() -> None:
    stats = engine_stats_from_chunk({"timings": {"prompt_n": 7, "cache_n": 5, "predicted_n": 2}})
    assert stats is not None
    assert (stats.prompt_tokens, stats.cached_tokens, stats.completion_tokens) == (12, 5, 2)
    lms = engine_stats_from_chunk(
        {"stats": {"tokens_per_second": 50.0, "time_to_first_token": 0.25, "generation_time": 2.0}}
    )
    assert lms is not None
    assert lms.prompt_ms == pytest.approx(250.0)
    assert lms.decode_ms == pytest.approx(2000.0)


async def test_an_error_event_mid_stream_is_an_upstream_error(make_fake: Any) -> None:
    fake = make_fake("llamacpp")
    fake.chat_chunks = [
        fake._chunk({"role": "assistant", "content": "Hel"}),
        {"error": {"code": 500, "message": "slot unavailable", "type": "server_error"}},
    ]
    async with backend_at(fake.url) as backend:
        seen: list[Chunk] = []
        with pytest.raises(UpstreamError, match="slot unavailable"):
            async for chunk in backend.stream_chat(ChatRequest(model=MODEL, messages=HELLO)):
                seen.append(chunk)
    assert [c.data["choices"][0]["delta"]["content"] for c in seen] == ["Hel"]


async def test_a_stale_kept_alive_connection_is_retried_once() -> None:
    """Seen on llama-server: a kept-alive connection closed after a streamed reply without
    notice, so the next request on it gets no response at all. This raw socket server does
    that deterministically: on each connection it answers one request, then reads the next
    and closes without a word. The backend must retry on a fresh connection."""
    import asyncio
    import contextlib

    from autotune.backends.openai_compat import OpenAICompatBackend
    from autotune.ground.types import ChatRequest

    sse = (
        b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"ok"}}]}\n\n'
        b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n'
        b"data: [DONE]\n\n"
    )
    answered = 0

    async def read_request(reader: asyncio.StreamReader) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
        await reader.readexactly(length)
        return True

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal answered
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Keep-Alive: timeout=5, max=100\r\n"
            + f"Content-Length: {len(sse)}\r\n\r\n".encode()
            + sse
        )
        await writer.drain()
        answered += 1
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await read_request(reader)  # the client reuses the connection …
        writer.close()  # … and gets nothing back

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = OpenAICompatBackend(f"http://127.0.0.1:{port}", kind="llamacpp")
    try:
        for _ in range(4):
            request = ChatRequest("m", [{"role": "user", "content": "hi"}], {"max_tokens": 1})
            chunks = [c async for c in backend.stream_chat(request)]
            assert chunks[-1].stats is not None and chunks[-1].stats.completion_tokens == 1
        assert answered == 4
    finally:
        await backend.aclose()
        server.close()
        await server.wait_closed()


async def test_only_a_stale_connection_is_tried_once_more() -> None:
    """The retry rule shared by the streaming and the non-streaming path: a stale connection
    is tried once more, a second failure and a refused connection are raised as they are."""
    import aiohttp

    from autotune.backends.openai_compat import once_more_if_stale

    stale = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
    refused = (aiohttp.ClientConnectorError,)
    failures: list[BaseException] = []

    async def send() -> str:
        if failures:
            raise failures.pop(0)
        return "answered"

    failures[:] = [aiohttp.ServerDisconnectedError()]
    assert await once_more_if_stale(send, stale, refused=refused) == "answered"

    failures[:] = [aiohttp.ClientOSError(), aiohttp.ServerDisconnectedError()]
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await once_more_if_stale(send, stale, refused=refused)

    # The connection key only names the host in the message; none is needed here.
    down = aiohttp.ClientConnectorError(None, OSError(111, "refused"))  # type: ignore[arg-type]
    failures[:] = [down]
    with pytest.raises(aiohttp.ClientConnectorError):
        await once_more_if_stale(send, stale, refused=refused)
    assert failures == []  # refused: not sent again
