"""The agents' own requests, replayed through autotune's faces without the CLIs.

``tests/fixtures/agents/`` holds what Claude Code 2.1.332 and Codex 0.171.0 sent in a run that
read a file with one tool call (recorded from the real CLIs by ``bench/agents.py``; ids and paths
scrubbed): each agent's default request and its tool-result turn. Here they go through the real
server, faces and pipeline over the scripted FakeBackend (tests/fakes/backend.py), and the test
checks what the engine would be sent: the agent's system prompt, its function tools, its prompt,
and — on the second turn — its tool call and the tool's result, paired by id.

Every part passes as recorded (:data:`REFUSED_TODAY`, which listed the parts refused before issue
21's face work, is empty): Claude Code's system message among the messages, its
``context_management`` and its 32,000 ``max_tokens``; Codex's ``client_metadata``, its
``namespace`` tool group (flattened into functions) and ``web_search`` (not offered to the model),
each said in the plan (:data:`PLAN_NOTES`).
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


#: What each agent sends that autotune refused before issue 21's face work: (what, how it is
#: taken out, the 400's message). Every recorded body now passes whole.
REFUSED_TODAY: dict[str, list[tuple[str, Edit, str]]] = {"claude-code": [], "codex": []}

#: What the plan says of each agent's defaults (X-Autotune-Plan), now that they are accepted.
PLAN_NOTES = {
    "claude-code": ("system=1 moved to the start", "accepted=context_management"),
    "codex": (
        "tools=flattened multi_agent_v1 dropped web_search",
        "accepted=client_metadata",
    ),
}


def _engine_tool_names(tools: list[dict[str, Any]]) -> list[str]:
    """The function names the engine is given: a namespace group's functions by their own
    names, built-in tools left out."""
    names: list[str] = []
    for tool in tools:
        if tool.get("type") == "namespace":
            names += [t["name"] for t in tool["tools"]]
        elif tool.get("type") in (None, "function", "custom"):
            names.append(tool["name"])
    return names


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
    names = _engine_tool_names(body["tools"])
    assert [t["function"]["name"] for t in sent.params["tools"]] == names
    plan = reply.headers["x-autotune-plan"]
    assert all(note in plan for note in PLAN_NOTES[path.parent.name]), plan
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
