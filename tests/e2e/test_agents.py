"""Claude Code and Codex, the real CLIs, against ``autotune serve`` on the tool-capable test
model, with only a base URL, a key and a model name (tests/agent_harness.py; installed by
``make agents``).

Each CLI runs once, and every request it sends is answered — 200, a whole event stream, no
4xx — with its defaults accepted and said in ``X-Autotune-Plan``; it still sends what
``tests/fixtures/agents/`` holds (the face tests replay those, tests/unit/test_agent_requests.py).
Then a tool round trip in the agent's own shapes, on the request the CLI just sent: the call
forced with ``tool_choice`` (asked of llama.cpp as a JSON schema of the call), then the
agent's tool-result turn as it sends one (the recorded turn's blocks / items), answered.
Those two requests start with the CLI's own prompt, so the engine's cache holds its
~10k-token preamble and only the new turn is computed.

Gemma-3-270M does not end its turn after an agent's prompt (it copies the prompt back), so
the serve caps replies (``AUTOTUNE_MAX_REPLY_TOKENS``, conftest.MAX_REPLY): each reply stops
at the cap, which Claude Code reports after asking for the rest three times ("response
exceeded the output token maximum") and Codex as an incomplete response. What is checked is
autotune's side — every request answered in the API's shape; a model that ends its turns
gives the CLIs their answer as it is.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from agent_harness import AgentRun, Exchange

# Each agent's first request is a ~10k-token prefill: minutes on a busy 2-core machine.
pytestmark = [pytest.mark.usefixtures("tool_model_env"), pytest.mark.timeout(900)]

FIXTURES = Path(__file__).parents[1] / "fixtures" / "agents"


def _recorded(agent: str, name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / agent / name).read_text(encoding="utf-8"))


def _posts(exchanges: list[Exchange], path: str) -> list[Exchange]:
    return [e for e in exchanges if e.method == "POST" and e.path == path]


def _tool_names(body: dict[str, Any]) -> list[str]:
    return [t.get("name") or t["type"] for t in body["tools"]]


def _events(stream: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: {")]


@pytest.fixture(scope="module")
def claude(agents: Any) -> tuple[AgentRun, list[Exchange], float]:
    started = time.monotonic()
    run, exchanges = agents.claude("Say hi.")
    return run, exchanges, time.monotonic() - started


@pytest.fixture(scope="module")
def codex(agents: Any) -> tuple[AgentRun, list[Exchange], float]:
    started = time.monotonic()
    run, exchanges = agents.codex("Say hi.")
    return run, exchanges, time.monotonic() - started


def test_claude_code_answers_with_its_defaults(claude: Any) -> None:
    run, exchanges, seconds = claude
    posts = _posts(exchanges, "/v1/messages")
    assert posts, (run.returncode, run.stderr[-2000:])
    for post in posts:
        assert post.status == 200, post.error()
        assert '"type":"message_stop"' in post.tail, post.tail[-500:]
    plan = posts[0].plan
    assert "system=1 moved to the start" in plan and "accepted=context_management" in plan
    assert "max_tokens=" in plan  # its 32,000 capped
    assert "API Error: 4" not in run.stdout + run.stderr  # no refusal reached the agent
    recorded = _recorded("claude-code", "02-post-v1-messages.json")["body"]
    first = posts[0].body
    assert sorted(first) == sorted(recorded)
    assert first["model"] == recorded["model"] and first["max_tokens"] == recorded["max_tokens"]
    assert _tool_names(first) == _tool_names(recorded)
    assert [m["role"] for m in first["messages"]] == [m["role"] for m in recorded["messages"]]
    assert "Say hi." in json.dumps(first["messages"])
    each = ", ".join(f"{p.seconds:.0f}" for p in posts)
    print(f"\nClaude Code: {len(posts)} requests answered in {seconds:.0f} s ({each} s)")


def test_claude_code_tool_round_trip_in_its_shapes(agents: Any, claude: Any) -> None:
    _, exchanges, _ = claude
    post = _posts(exchanges, "/v1/messages")[0]
    body = copy.deepcopy(post.body)
    headers = post.headers
    forced = {**body, "tool_choice": {"type": "tool", "name": "Read"}}
    with httpx.Client(base_url=agents.url, timeout=600) as http:
        called = http.post("/v1/messages", json=forced, headers=headers)
        assert called.status_code == 200, called.text
        uses = [
            e["content_block"]
            for e in _events(called.text)
            if e.get("type") == "content_block_start" and e["content_block"]["type"] == "tool_use"
        ]
        assert uses and uses[0]["name"] == "Read", called.text[-1000:]
        arguments = "".join(
            e["delta"]["partial_json"]
            for e in _events(called.text)
            if e.get("type") == "content_block_delta" and e["delta"]["type"] == "input_json_delta"
        )
        # the agent's next turn: its call, then the tool's result, as Claude Code sends them
        recorded = _recorded("claude-code", "03-post-v1-messages.json")["body"]["messages"]
        call_turn, result_turn = copy.deepcopy(recorded[-2]), copy.deepcopy(recorded[-1])
        call_turn["content"][0].update(id=uses[0]["id"], input=json.loads(arguments))
        result_turn["content"][0]["tool_use_id"] = uses[0]["id"]
        answered_body = {**body, "messages": [*body["messages"], call_turn, result_turn]}
        answered = http.post("/v1/messages", json=answered_body, headers=headers)
    assert answered.status_code == 200, answered.text
    events = _events(answered.text)
    assert events[-1]["type"] == "message_stop"
    usage = next(e for e in events if e["type"] == "message_delta")["usage"]
    assert usage["cache_read_input_tokens"] > 5000  # the CLI's preamble, from the engine's cache


def test_codex_answers_with_its_defaults(codex: Any) -> None:
    run, exchanges, seconds = codex
    posts = _posts(exchanges, "/v1/responses")
    assert posts, (run.returncode, run.stderr[-2000:])
    for post in posts:
        assert post.status == 200, post.error()
        assert '"type":"response.' in post.tail and '"response.failed"' not in post.tail
    plan = posts[0].plan
    assert "tools=flattened multi_agent_v1 dropped web_search" in plan
    assert "accepted=client_metadata" in plan
    recorded = _recorded("codex", "01-post-v1-responses.json")["body"]
    first = posts[0].body
    assert sorted(first) == sorted(recorded)
    assert first["model"] == recorded["model"] and first["store"] is False
    assert _tool_names(first) == _tool_names(recorded)
    roles = [i.get("role") or i["type"] for i in first["input"]]
    assert roles == [i.get("role") or i["type"] for i in recorded["input"]]
    assert "Say hi." in json.dumps(first["input"])
    each = ", ".join(f"{p.seconds:.0f}" for p in posts)
    print(f"\nCodex: {len(posts)} requests answered in {seconds:.0f} s ({each} s)")


def test_codex_tool_round_trip_in_its_shapes(agents: Any, codex: Any) -> None:
    _, exchanges, _ = codex
    post = _posts(exchanges, "/v1/responses")[0]
    body = copy.deepcopy(post.body)
    forced = {**body, "tool_choice": {"type": "function", "name": "exec_command"}}
    with httpx.Client(base_url=agents.url, timeout=600) as http:
        called = http.post("/v1/responses", json=forced, headers=post.headers)
        assert called.status_code == 200, called.text
        done = [e for e in _events(called.text) if e.get("type") == "response.output_item.done"]
        calls = [e["item"] for e in done if e["item"]["type"] == "function_call"]
        assert calls and calls[0]["name"] == "exec_command", called.text[-1000:]
        # the agent's next turn: its call and the command's output, as Codex sends them
        recorded = _recorded("codex", "02-post-v1-responses.json")["body"]["input"]
        call_item, output_item = copy.deepcopy(recorded[-2]), copy.deepcopy(recorded[-1])
        call_item.update(call_id=calls[0]["call_id"], arguments=calls[0]["arguments"])
        output_item["call_id"] = calls[0]["call_id"]
        answered_body = {**body, "input": [*body["input"], call_item, output_item]}
        answered = http.post("/v1/responses", json=answered_body, headers=post.headers)
    assert answered.status_code == 200, answered.text
    last = _events(answered.text)[-1]
    assert last["type"] in ("response.completed", "response.incomplete")
    cached = last["response"]["usage"]["input_tokens_details"]["cached_tokens"]
    assert cached > 4000  # the CLI's preamble, from the engine's cache
