"""Ollama's native API, spoken by the official ``ollama`` Python client, unchanged, pointed at a
real ``autotune serve`` on the real embedded llama.cpp engine over HTTP on 127.0.0.1."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest

from autotune.ground.config import Settings
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer

pytestmark = pytest.mark.engine

MODEL = "smollm2:135m"
SHORT = {"num_predict": 8, "temperature": 0, "seed": 7}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    home = tmp_path_factory.mktemp("ollama-api-home")
    app = create_app(Settings(home=home, backend="embedded", memory_budget=4 * 1024**3))
    with BackgroundServer(app) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: BackgroundServer) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


@pytest.fixture(scope="module")
def api(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as http:
        yield http


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_list_shows_every_model_with_ollamas_fields(client: ollama.Client) -> None:
    models = {m.model: m for m in client.list().models}
    assert {MODEL, "gemma3:270m"} <= set(models)
    smol = models[MODEL]
    assert smol.size and smol.size > 50_000_000 and smol.digest and len(smol.digest) == 64
    assert smol.details is not None and smol.details.format == "gguf"
    assert smol.details.family == "llama" and smol.details.quantization_level == "Q4_1"
    assert smol.details.parameter_size == "134.52M" and smol.modified_at is not None


def test_show_reads_the_gguf_and_its_template(client: ollama.Client) -> None:
    shown = client.show(MODEL)
    info = shown.modelinfo or {}
    assert info["general.architecture"] == "llama" and info["llama.block_count"] == 30
    assert info["llama.context_length"] == 8192 and info["llama.attention.head_count_kv"] == 3
    assert "<|im_start|>" in (shown.template or "")
    # llama.cpp's /props says the same of this template: supports_tools false
    assert shown.capabilities == ["completion"]
    with pytest.raises(ollama.ResponseError) as caught:
        client.show("no-such-model:1b")
    assert caught.value.status_code == 404 and "not found" in caught.value.error


def test_chat_without_streaming_carries_the_engines_timings(client: ollama.Client) -> None:
    reply = client.chat(model=MODEL, messages=ask("Say hello."), options=SHORT, stream=False)
    assert reply.message.role == "assistant" and reply.message.content
    assert reply.done and reply.done_reason in ("stop", "length")
    assert reply.eval_count and 1 <= reply.eval_count <= 8
    assert reply.prompt_eval_count and reply.prompt_eval_count > 5
    assert reply.eval_duration and reply.eval_duration > 0
    assert reply.total_duration and reply.total_duration >= reply.eval_duration
    assert reply.load_duration is not None


def test_chat_streams_ndjson_ending_with_done(client: ollama.Client) -> None:
    parts = list(
        client.chat(model=MODEL, messages=ask("Count to five."), options=SHORT, stream=True)
    )
    *pieces, last = parts
    assert pieces and all(not p.done for p in pieces)
    assert "".join(p.message.content or "" for p in pieces).strip()
    assert last.done and last.message.content == "" and last.eval_count == len(pieces)
    assert last.prompt_eval_duration is not None and last.eval_duration is not None


def test_logprobs_and_think_false_reach_the_engine(client: ollama.Client) -> None:
    reply = client.chat(
        model=MODEL,
        messages=ask("Say hello."),
        options=SHORT,
        logprobs=True,
        top_logprobs=2,
        think=False,
        stream=False,
    )
    assert reply.logprobs and len(reply.logprobs) == reply.eval_count
    assert all(len(p.top_logprobs or []) == 2 for p in reply.logprobs)
    assert "".join(p.token for p in reply.logprobs) == reply.message.content
    plain = client.chat(model=MODEL, messages=ask("Hi."), options=SHORT, logprobs=True)
    assert plain.logprobs and all(p.top_logprobs is None for p in plain.logprobs)


def test_format_json_schema_constrains_the_reply(client: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"type": "string", "maxLength": 12}},
        "required": ["colour"],
    }
    reply = client.chat(
        model=MODEL,
        messages=ask("Name a colour, as JSON."),
        format=schema,
        options={"num_predict": 40, "temperature": 0},
        stream=False,
    )
    data = json.loads(reply.message.content or "")
    assert set(data) == {"colour"} and isinstance(data["colour"], str)


def test_tools_on_a_template_without_them_are_refused_clearly(client: ollama.Client) -> None:
    """Neither bundled model's chat template renders tools (llama.cpp's /props:
    chat_template_caps.supports_tools is false for both), so a tool call cannot be tested
    here; what can be is that tools are refused, not silently dropped."""
    tool = {
        "type": "function",
        "function": {
            "name": "weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
    for model in (MODEL, "gemma3:270m"):
        with pytest.raises(ollama.ResponseError) as caught:
            client.chat(model=model, messages=ask("Weather in Paris?"), tools=[tool])
        assert caught.value.status_code == 400
        assert "tools" in caught.value.error and "no tool support" in caught.value.error


def test_generate_is_a_user_message_through_the_same_path(client: ollama.Client) -> None:
    reply = client.generate(model=MODEL, prompt="Say hi.", system="Be brief.", options=SHORT)
    assert reply.response and reply.done and reply.eval_count
    streamed = list(client.generate(model=MODEL, prompt="Say hi.", options=SHORT, stream=True))
    assert streamed[-1].done and "".join(p.response or "" for p in streamed[:-1])
    raw = client.generate(model=MODEL, prompt="The sky is", raw=True, options=SHORT)
    assert raw.response and raw.done and raw.prompt_eval_count  # completed as it is
    with pytest.raises(ollama.ResponseError) as caught:  # SmolLM2 has no FIM tokens
        client.generate(model=MODEL, prompt="def f(", suffix=")", options=SHORT)
    assert caught.value.status_code == 400 and "suffix" in caught.value.error


def test_num_ctx_is_a_floor_applied_through_the_buckets(
    client: ollama.Client, api: httpx.Client
) -> None:
    body = {"model": MODEL, "messages": ask("Hi"), "stream": False}
    reply = api.post("/api/chat", json={**body, "options": {**SHORT, "num_ctx": 3000}})
    assert reply.status_code == 200, reply.text
    assert "ctx=4096" in reply.headers["X-Autotune-Plan"]
    again = api.post("/api/chat", json={**body, "options": {**SHORT, "num_ctx": 1000}})
    assert "ctx=4096" in again.headers["X-Autotune-Plan"]  # sticky: no reload to shrink
    (running,) = [m for m in client.ps().models if m.model == MODEL]
    assert running.context_length == 4096 and running.size and running.expires_at is not None


def test_keep_alive_zero_without_messages_unloads(client: ollama.Client) -> None:
    client.chat(model=MODEL, messages=ask("Hi"), options=SHORT)
    assert MODEL in {m.model for m in client.ps().models}
    unloaded = client.generate(model=MODEL, keep_alive=0)
    assert unloaded.done and unloaded.done_reason == "unload"
    assert MODEL not in {m.model for m in client.ps().models}
    loaded = client.chat(model=MODEL, messages=[])
    assert loaded.done and loaded.done_reason == "load"


def test_a_conversation_is_stored_alike_from_either_face(api: httpx.Client) -> None:
    conv = api.post("/api/conversations", json={"title": "Cats"}).json()["id"]
    headers = {"X-Conversation-Id": conv}
    first = api.post(
        "/v1/chat/completions",
        headers=headers,
        json={"model": MODEL, "max_tokens": 8, "messages": ask("My cat is Tom.")},
    )
    assert first.status_code == 200
    answer = first.json()["choices"][0]["message"]["content"]
    history = [*ask("My cat is Tom."), {"role": "assistant", "content": answer}]
    second = api.post(  # an Ollama client resends the whole history
        "/api/chat",
        headers=headers,
        json={"model": MODEL, "messages": [*history, *ask("Name my cat.")], "options": SHORT},
    )
    assert second.status_code == 200 and second.headers["X-Conversation-Id"] == conv
    lines = [json.loads(line) for line in second.text.splitlines()]
    assert lines[-1]["done"] is True
    stored: dict[str, Any] = {}
    for _ in range(50):  # the turn is written right after the stream ends
        stored = api.get(f"/api/conversations/{conv}").json()
        if len(stored["messages"]) == 4:
            break
        time.sleep(0.05)
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant", "user", "assistant"]
    assert stored["messages"][2]["content"] == "Name my cat."
    reply = "".join(line["message"]["content"] for line in lines)
    assert stored["messages"][3]["content"] == reply


@pytest.mark.parametrize(
    ("path", "body", "status", "words"),
    [
        ("/api/chat", {"messages": ask("x")}, 400, "Missing required field 'model'"),
        ("/api/chat", {"model": MODEL, "messages": ask("x"), "temperature": 1}, 400, "temperature"),
        (
            "/api/chat",
            {"model": MODEL, "messages": ask("x"), "options": {"num_gpu": 1}},
            400,
            "num_gpu",
        ),
        ("/api/chat", {"model": MODEL, "messages": ask("x"), "options": {"nope": 1}}, 400, "nope"),
        (
            "/api/chat",
            {"model": MODEL, "messages": ask("x"), "keep_alive": "soon"},
            400,
            "keep_alive",
        ),
        ("/api/chat", {"model": MODEL, "messages": ask("x"), "think": "max"}, 400, "think"),
        ("/api/chat", {"model": MODEL, "messages": ask("x"), "format": "xml"}, 400, "format"),
        (
            "/api/chat",
            {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
            400,
            "role",
        ),
        ("/api/chat", {"model": "no-such:1b", "messages": ask("x")}, 404, "not found"),
        ("/api/generate", {"model": MODEL, "prompt": "x", "context": [1, 2]}, 400, "context"),
        ("/api/show", {}, 400, "model"),
        ("/api/pull", {}, 400, "model"),
        ("/api/pull", {"model": "not a name!"}, 400, "autotune does not know"),
    ],
)
def test_bad_input_gets_a_4xx_in_ollamas_shape(
    api: httpx.Client, path: str, body: dict[str, Any], status: int, words: str
) -> None:
    reply = api.post(path, json=body)
    assert reply.status_code == status, reply.text
    assert set(reply.json()) == {"error"} and words in reply.json()["error"]


def test_a_body_that_is_not_json_gets_ollamas_shape(api: httpx.Client) -> None:
    reply = api.post(
        "/api/chat", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == 400 and reply.json() == {
        "error": "The request body is not valid JSON."
    }


def test_an_image_for_a_text_only_model_gets_the_same_400_as_the_openai_face(
    api: httpx.Client,
) -> None:
    png = (  # a 1×1 PNG
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJRU5E"
        "rkJggg=="
    )
    native = api.post(
        "/api/chat",
        json={"model": MODEL, "messages": [{"role": "user", "content": "What?", "images": [png]}]},
    )
    part = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}
    openai = api.post(
        "/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "What?"}, part]}],
        },
    )
    assert native.status_code == openai.status_code == 400
    assert native.json()["error"] == openai.json()["error"]["message"]


def test_version_and_heartbeat(api: httpx.Client) -> None:
    assert api.get("/api/version").json() == {"version": "0.12.0"}
    beat = api.get("/")  # what Ollama's CLI checks first
    assert beat.status_code == 200 and beat.text == "Ollama is running"
    assert beat.headers["X-Served-By"] == "autotune" and api.head("/").status_code == 200
