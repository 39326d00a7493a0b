"""The agents' own requests, replayed through autotune's faces without the CLIs.

``tests/fixtures/agents/`` holds what Claude Code 2.1.332 and Codex 0.171.0 sent in a run that
read a file with one tool call (recorded from the real CLIs by ``bench/agents.py``; ids and paths
scrubbed): each agent's default request and its tool-result turn. Here they go through the real
server, faces and pipeline over the scripted FakeBackend (tests/fakes/backend.py), and the test
checks what the engine would be sent: the agent's system prompt, its function tools, its prompt,
and — on the second turn — its tool call and the tool's result, paired by id.

Parts autotune still refuses are taken out first; :data:`REFUSED_TODAY` lists each with the 400
it gets now (issue 21, the face work, empties it). Everything else in the bodies — fields, tool
schemas, content blocks, items — passes as recorded.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from autotune.backends.registry import BackendSet
from autotune.ground.config import Settings
from autotune.ground.types import ModelMeta
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer
from fakes.backend import FakeBackend, FakeReply
from tool_model import TOOL_MODEL

FIXTURES = Path(__file__).parents[1] / "fixtures" / "agents"
PROMPT = "Read hello.txt and tell me what it says."
Edit = Callable[[dict[str, Any]], dict[str, Any]]


def _without(field: str) -> Edit:
    return lambda body: {k: v for k, v in body.items() if k != field}


def _without_tools(kind: str) -> Edit:
    return lambda body: {**body, "tools": [t for t in body["tools"] if t.get("type") != kind]}


def _without_system_messages(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "messages": [m for m in body["messages"] if m["role"] != "system"]}


#: What each agent sends that autotune refuses today: (what, how it is taken out, the 400's
#: message). Measured with bench/agents.py against `autotune serve` and here.
REFUSED_TODAY: dict[str, list[tuple[str, Edit, str]]] = {
    "claude-code": [
        (
            "a system message inside messages (Claude Code's environment block)",
            _without_system_messages,
            "Invalid value 'system' for 'messages.1.role': Input should be 'user' or 'assistant'.",
        ),
        (
            "context_management",
            _without("context_management"),
            "'context_management' is not supported: autotune manages the context itself.",
        ),
    ],
    "codex": [
        ("client_metadata", _without("client_metadata"), "Unknown parameter 'client_metadata'."),
        (
            "the namespace tool group multi_agent_v1",
            _without_tools("namespace"),
            "tools[4]: the built-in tool 'namespace' is not offered by local engines",
        ),
        (
            "the web_search tool",
            _without_tools("web_search"),
            "tools[7]: the built-in tool 'web_search' is not offered by local engines",
        ),
    ],
}


def _recordings() -> list[Path]:
    return sorted(p for p in FIXTURES.glob("*/*.json") if "-post-" in p.name)


def _load(path: Path) -> dict[str, Any]:
    recorded = json.loads(path.read_text(encoding="utf-8"))
    body = recorded["body"]
    for _, edit, _ in REFUSED_TODAY[path.parent.name]:
        body = edit(body)
    return {**recorded, "body": body}


@pytest.fixture(scope="module")
def fake() -> FakeBackend:
    # The tool model's trained context: the agents' ~12k-token requests fit.
    return FakeBackend(meta=ModelMeta(name=TOOL_MODEL, context_length=32768), models=[TOOL_MODEL])


@pytest.fixture(scope="module")
def url(fake: FakeBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("agents-home")
    settings = Settings(home=home, backend="embedded", default_model=TOOL_MODEL, recall=False)
    app = create_app(settings, backends=BackendSet({"fake": fake}, ["fake"]))
    with BackgroundServer(app) as server:
        yield server.url


def test_both_agents_and_both_turns_are_recorded() -> None:
    names = {(p.parent.name, p.name) for p in _recordings()}
    assert {agent for agent, _ in names} == {"claude-code", "codex"}
    assert all(len([n for a, n in names if a == agent]) == 2 for agent in REFUSED_TODAY)


@pytest.mark.parametrize("path", _recordings(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_recorded_request_reaches_the_engine_whole(
    path: Path, url: str, fake: FakeBackend
) -> None:
    recorded = _load(path)
    fake.queue(FakeReply(("It says hello.",)))
    before = len(fake.requests)
    reply = httpx.post(
        url + recorded["path"],
        json=recorded["body"],
        headers=recorded["headers"],  # the agent's own: versions, betas, user agent
        timeout=60,
    )
    assert reply.status_code == 200, reply.text
    assert (
        "message_stop" if path.parent.name == "claude-code" else "response.completed"
    ) in reply.text
    (sent,) = fake.requests[before:]
    body = recorded["body"]
    names = [t.get("name") for t in body["tools"]]
    assert [t["function"]["name"] for t in sent.params["tools"]] == names
    assert sent.messages[0]["role"] == "system" and len(sent.messages[0]["content"]) > 1000
    users = [m for m in sent.messages if m["role"] == "user"]
    assert PROMPT in json.dumps(users[-1]["content"])
    if path.name.startswith(("03-", "02-post-v1-responses")):
        _check_tool_turn(sent.messages)


def _check_tool_turn(messages: list[dict[str, Any]]) -> None:
    """The agent's call and its result, in the engine's terms and paired by id."""
    call_turn, result = messages[-2], messages[-1]
    assert call_turn["role"] == "assistant" and len(call_turn["tool_calls"]) == 1
    call = call_turn["tool_calls"][0]
    assert call["function"]["name"] in ("Read", "exec_command")
    assert json.loads(call["function"]["arguments"])  # arguments as a JSON string
    assert result["role"] == "tool" and result["tool_call_id"] == call["id"]
    assert "Hello from the test project." in json.dumps(result["content"])
