"""``autotune serve`` through the official openai client, on the real embedded engine.

Every request goes over real HTTP on 127.0.0.1: client → autotune (FastAPI/uvicorn) →
the llama.cpp worker serving the bundled model.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from openai import OpenAI

from autotune.server.runner import BackgroundServer

pytestmark = pytest.mark.engine

MODEL = "smollm2:135m"


def test_openai_client_non_streaming(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=12
    )
    assert reply.object == "chat.completion" and reply.model == MODEL
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage and reply.usage.prompt_tokens > 5 and reply.usage.completion_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_openai_client_streaming_with_usage_from_the_engine(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert (
        usage.completion_tokens
        == sum(1 for c in chunks if c.choices and c.choices[0].delta.content)
        or usage.completion_tokens > 0
    )
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens is not None


def test_streaming_without_include_usage_sends_no_usage(client: OpenAI) -> None:
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=6, stream=True
        )
    )
    assert chunks and all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_plan_header_and_profile_header(server: BackgroundServer) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    fast = httpx.post(
        server.url + "/v1/chat/completions",
        json=body,
        headers={"X-Autotune-Profile": "fast"},
        timeout=60,
    )
    assert fast.status_code == 200
    plan = fast.headers["X-Autotune-Plan"]
    assert "profile=fast" in plan and "ctx=2048" in plan and "kv=q8_0" in plan
    bad = httpx.post(
        server.url + "/v1/chat/completions",
        json=body,
        headers={"X-Autotune-Profile": "turbo"},
        timeout=60,
    )
    assert bad.status_code == 400 and "turbo" in bad.json()["error"]["message"]
    assert bad.json()["error"]["param"] == "X-Autotune-Profile"


def test_twenty_turns_never_reload_and_reuse_the_prompt_cache(
    client: OpenAI, server: BackgroundServer
) -> None:
    messages = [{"role": "system", "content": "You are a terse assistant."}]
    previous_prompt = None
    for turn in range(20):
        messages.append({"role": "user", "content": f"Turn {turn}: name a colour."})
        reply = client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=12, temperature=0, seed=turn
        )
        usage = reply.usage
        assert usage is not None and usage.prompt_tokens_details is not None
        if previous_prompt is not None:
            # llama.cpp re-evaluates at most the last token of a fully matched prefix
            assert usage.prompt_tokens_details.cached_tokens >= previous_prompt - 1, turn
        previous_prompt = usage.prompt_tokens
        messages.append({"role": "assistant", "content": reply.choices[0].message.content or ""})
    running = httpx.get(server.url + "/api/running_models").json()["models"]
    assert [(m["name"], m["loads"]) for m in running] == [(MODEL, 1)]
    metrics = httpx.get(server.url + "/metrics").text
    assert f'autotune_model_loads_total{{backend="embedded",model="{MODEL}"}} 1.0' in metrics


def test_overload_answers_200_or_429_and_stays_healthy(start_server) -> None:
    server = start_server(max_concurrent=1, max_queued=8)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say one word."}],
        "max_tokens": 8,
    }

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            return await asyncio.gather(
                *(http.post("/v1/chat/completions", json=body) for _ in range(30))
            )

    replies = asyncio.run(burst())
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) >= 9  # one running + eight queued are always served
    for r in replies:
        if r.status_code == 429:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["type"] == "rate_limit_error"
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["queue"]["running"] == 0
    assert health["queue"]["queued"] == 0
    assert httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).status_code == 200


def test_a_client_that_disconnects_mid_stream_frees_its_slot_at_once(start_server) -> None:
    server = start_server(max_concurrent=1, max_queued=4)
    long = {
        "model": MODEL,
        "stream": True,
        "max_tokens": 2000,
        "temperature": 0.9,
        "messages": [{"role": "user", "content": "Write a very long story about a ship."}],
    }
    short = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}

    async def scenario() -> float:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
            async with http.stream("POST", "/v1/chat/completions", json=long) as stream:
                lines = stream.aiter_lines()
                while not (await lines.__anext__()).startswith("data: {"):
                    pass  # the long answer is streaming and holds the only slot
                waiting = asyncio.ensure_future(http.post("/v1/chat/completions", json=short))
                await asyncio.sleep(0.3)
                assert not waiting.done()  # queued behind the stream
                left = time.monotonic()
            # leaving the block closes the connection mid-stream
            reply = await waiting
            assert reply.status_code == 200
            return time.monotonic() - left

    waited = asyncio.run(scenario())
    assert waited < 1.0 + 1.0  # started within a second (plus its own short answer)
    health = httpx.get(server.url + "/health").json()
    assert health["queue"] == {**health["queue"], "running": 0, "queued": 0}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (b"{not json", 400, None),
        (b'{"model": "smollm2:135m"}', 400, "messages"),
        (b'{"model": "smollm2:135m", "messages": []}', 400, "messages"),
        (b'{"model": "smollm2:135m", "messages": "hi"}', 400, "messages"),
        (
            b'{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
            400,
            "temperature",
        ),
        (b'{"messages": [{"role": "wizard", "content": "hi"}]}', 400, "messages.0"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', 400, "max_tokens"),
        (b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}', 404, None),
        (b"[1, 2, 3]", 400, None),
    ],
)
def test_bad_input_gets_an_openai_style_error(
    server: BackgroundServer, body: bytes, status: int, param: str | None
) -> None:
    reply = httpx.post(
        server.url + "/v1/chat/completions",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=60,
    )
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["message"] and error["type"]
    if param:
        assert error["param"] == param


def test_oversize_body_is_413(start_server) -> None:
    server = start_server(max_body_bytes=10_000)
    big = {"messages": [{"role": "user", "content": "x" * 20_000}]}
    reply = httpx.post(server.url + "/v1/chat/completions", json=big, timeout=30)
    assert reply.status_code == 413 and reply.json()["error"]["message"]

    def chunks():  # no Content-Length: the limit holds while reading
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(30):
            yield b"y" * 1000
        yield b'"}]}'

    streamed = httpx.post(
        server.url + "/v1/chat/completions",
        content=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    assert streamed.status_code == 413


def test_unknown_model_lists_close_names(client: OpenAI) -> None:
    from openai import NotFoundError

    with pytest.raises(NotFoundError) as missing:
        client.chat.completions.create(
            model="smollm2:13", messages=[{"role": "user", "content": "x"}]
        )
    assert "smollm2:135m" in str(missing.value)


def test_a_stopped_engine_is_503_naming_it_and_how_to_start_it(start_server) -> None:
    server = start_server(backend="ollama", ollama_url="http://127.0.0.1:9")
    reply = httpx.post(
        server.url + "/v1/chat/completions",
        timeout=30,
        json={"model": "qwen3:8b", "messages": [{"role": "user", "content": "x"}]},
    )
    assert reply.status_code == 503
    message = reply.json()["error"]["message"]
    assert "ollama" in message.lower() and "127.0.0.1:9" in message and "ollama serve" in message
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "degraded" and health["backends"] == {"ollama": False}


def test_api_key_is_required_when_set(start_server) -> None:
    server = start_server(api_key="s3cret")
    assert httpx.get(server.url + "/health").status_code == 401
    assert (
        httpx.get(server.url + "/health", headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )
    ok = httpx.get(server.url + "/health", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    keyed = OpenAI(base_url=server.url + "/v1", api_key="s3cret", max_retries=0)
    assert keyed.chat.completions.create(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    ).choices


def test_models_health_hardware_profiles_and_metrics(
    server: BackgroundServer, client: OpenAI
) -> None:
    assert MODEL in [m.id for m in client.models.list()]
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["backends"] == {"embedded": True}
    assert health["memory"]["pressure"] in ("normal", "elevated", "high", "critical")
    hardware = httpx.get(server.url + "/api/hardware").json()
    assert hardware["physical_cores"] >= 1 and hardware["live"]["ram_total"] > 0
    profiles = {p["name"]: p for p in httpx.get(server.url + "/api/profiles").json()["profiles"]}
    assert profiles["fast"]["context_cap"] == 2048 and profiles["quality"]["context_cap"] == 32768
    client.chat.completions.create(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    )
    metrics = httpx.get(server.url + "/metrics").text
    for name in (
        "autotune_requests_total",
        "autotune_ttft_seconds",
        "autotune_tokens_total",
        "autotune_queue_depth",
        "autotune_model_loads_total",
    ):
        assert name in metrics
    recent = httpx.get(server.url + "/api/requests").json()["requests"]
    assert recent[0]["model"] == MODEL and recent[0]["prompt_tokens"]
    assert "Say" not in json.dumps(recent)  # telemetry never holds prompt text


def test_conversations_resume_by_header_and_export(server: BackgroundServer) -> None:
    api = httpx.Client(base_url=server.url, timeout=60)
    created = api.post("/api/conversations", json={"title": "Colours", "system": "Be brief."})
    assert created.status_code == 201
    conv = created.json()["id"]
    headers = {"X-Conversation-Id": conv}
    first = api.post(
        "/v1/chat/completions",
        headers=headers,
        json={
            "model": MODEL,
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "My cat is Tom."}],
        },
    )
    assert first.status_code == 200 and first.headers["X-Conversation-Id"] == conv
    second = api.post(
        "/v1/chat/completions",
        headers=headers,
        json={
            "model": MODEL,
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "Name my cat."}],
        },
    )
    usage1, usage2 = first.json()["usage"], second.json()["usage"]
    # the stored turns were sent again: a longer prompt whose start came from the cache
    assert usage2["prompt_tokens"] > usage1["prompt_tokens"] + 5
    assert usage2["prompt_tokens_details"]["cached_tokens"] >= usage1["prompt_tokens"] - 1
    for _ in range(50):  # the turn is written right after the stream ends
        stored = api.get(f"/api/conversations/{conv}").json()
        if len(stored["messages"]) == 4:
            break
        time.sleep(0.05)
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant", "user", "assistant"]
    assert stored["messages"][0]["content"] == "My cat is Tom."
    listed = api.get("/api/conversations").json()["conversations"]
    assert listed[0]["id"] == conv and listed[0]["message_count"] == 4
    export = api.get(f"/api/conversations/{conv}/export")
    assert export.headers["content-type"].startswith("text/markdown")
    assert (
        "# Colours" in export.text
        and "My cat is Tom." in export.text
        and "Be brief." in export.text
    )
    assert api.delete(f"/api/conversations/{conv}").status_code == 204
    assert api.get(f"/api/conversations/{conv}").status_code == 404
    assert api.delete(f"/api/conversations/{conv}").status_code == 404


def test_a_client_resending_the_whole_history_is_not_stored_twice(server: BackgroundServer) -> None:
    api = httpx.Client(base_url=server.url, timeout=60)
    headers = {"X-Conversation-Id": "conv_resend"}
    history = [{"role": "user", "content": "One."}]
    first = api.post(
        "/v1/chat/completions",
        headers=headers,
        json={"model": MODEL, "max_tokens": 6, "messages": history},
    ).json()
    history += [first["choices"][0]["message"], {"role": "user", "content": "Two."}]
    api.post(
        "/v1/chat/completions",
        headers=headers,
        json={"model": MODEL, "max_tokens": 6, "messages": history},
    )
    for _ in range(50):
        stored = api.get("/api/conversations/conv_resend").json()["messages"]
        if len(stored) >= 4:
            break
        time.sleep(0.05)
    assert [m["content"] for m in stored if m["role"] == "user"] == ["One.", "Two."]


def test_a_non_streaming_client_that_gives_up_frees_its_slot(start_server) -> None:
    server = start_server(max_concurrent=1, max_queued=4)
    short = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}
    assert (
        httpx.post(server.url + "/v1/chat/completions", json=short, timeout=60).status_code == 200
    )
    long = {
        "model": MODEL,
        "max_tokens": 2000,
        "temperature": 0.9,
        "messages": [{"role": "user", "content": "Write a very long story about a ship."}],
    }
    with pytest.raises(httpx.ReadTimeout):  # the model is warm: it gives up mid-generation
        httpx.post(server.url + "/v1/chat/completions", json=long, timeout=1.5)
    started = time.monotonic()
    assert (
        httpx.post(server.url + "/v1/chat/completions", json=short, timeout=60).status_code == 200
    )
    assert time.monotonic() - started < 10  # not after the abandoned 2000-token answer
    runs = httpx.get(server.url + "/api/requests").json()["requests"]
    assert [r["status"] for r in runs][:3] == ["ok", "cancelled", "ok"]


def test_a_cors_preflight_is_answered_before_the_key_check(start_server) -> None:
    server = start_server(api_key="k3y", cors_origins="http://app.example")
    origin = {"Origin": "http://app.example"}
    preflight = httpx.options(
        server.url + "/v1/chat/completions",
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://app.example"
    refused = httpx.get(server.url + "/health", headers=origin)
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "http://app.example"
    ok = httpx.get(server.url + "/health", headers={**origin, "Authorization": "Bearer k3y"})
    assert ok.status_code == 200
