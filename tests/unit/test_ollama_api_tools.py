"""Tool calls through the Ollama face, end to end over HTTP with the official ``ollama`` client.

The real engine's tool round trip through this face is in
tests/integration/test_tools_engine.py (the tool-capable test model). This runs the real
server and pipeline over the scripted in-process FakeBackend
(``tests/fakes/backend.py``), which answers with OpenAI tool-call chunks the way llama.cpp
streams them, to check what comes back in Ollama's shape — and that a tool result sent
back in Ollama's shape reaches the engine as an OpenAI tool message.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from autotune.backends.registry import BackendSet
from autotune.ground.config import Settings
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer
from fakes.backend import MODEL, FakeBackend, FakeReply

CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
}
TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def client(fake: FakeBackend, tmp_path: Path) -> Iterator[ollama.Client]:
    settings = Settings(home=tmp_path / "home", backend="embedded", default_model=MODEL)
    app = create_app(settings, backends=BackendSet({"fake": fake}, ["fake"]))
    with BackgroundServer(app) as server:
        yield ollama.Client(host=server.url, timeout=30)


def test_a_tool_call_comes_back_whole_with_an_arguments_object(
    fake: FakeBackend, client: ollama.Client
) -> None:
    fake.queue(FakeReply(pieces=(), tool_calls=[CALL], finish_reason="tool_calls"))
    reply = client.chat(model=MODEL, messages=[{"role": "user", "content": "Paris?"}], tools=[TOOL])
    (call,) = reply.message.tool_calls or []
    assert call.function.name == "weather" and call.function.arguments == {"city": "Paris"}
    assert reply.done_reason == "stop"  # Ollama says stop after tool calls
    assert fake.requests[-1].params["tools"] == [TOOL]

    fake.queue(FakeReply(pieces=(), tool_calls=[CALL], finish_reason="tool_calls"))
    parts = list(
        client.chat(
            model=MODEL, messages=[{"role": "user", "content": "Paris?"}], tools=[TOOL], stream=True
        )
    )
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert [c.function.arguments for c in calls] == [{"city": "Paris"}] and parts[-1].done


def test_a_tool_result_reaches_the_engine_as_an_openai_tool_message(
    fake: FakeBackend, client: ollama.Client
) -> None:
    fake.queue("It is sunny.")
    reply = client.chat(
        model=MODEL,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "weather", "arguments": {"city": "Paris"}}}],
            },
            {"role": "tool", "tool_name": "weather", "content": "sunny, 21 °C"},
        ],
        tools=[TOOL],
    )
    assert reply.message.content == "It is sunny."
    sent = fake.requests[-1].messages
    assert sent[1]["tool_calls"][0]["function"] == {
        "name": "weather",
        "arguments": '{"city": "Paris"}',
    }
    assert sent[2] == {
        "role": "tool",
        "content": "sunny, 21 °C",
        "tool_call_id": sent[1]["tool_calls"][0]["id"],
    }
