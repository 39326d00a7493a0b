"""Claude Code and Codex, the real CLIs, against ``autotune serve`` on the tool-capable test
model, with only a base URL, a key and a model name (tests/agent_harness.py; installed by
``make agents``).

Each CLI runs once, and every request it sends is answered — 200, a whole event stream, no
4xx — with its defaults accepted and said in ``X-Autotune-Plan``; it still sends what
``tests/fixtures/agents/`` holds (the face tests replay those, tests/unit/test_agent_requests.py).
Then a tool round trip in the agent's own shapes, on the request the CLI just sent: its tool
call and the tool's result as the agent sends them (the recorded tool-result turn's blocks /
items, tests/fixtures/agents/), answered by the engine. That request starts with the CLI's own
prompt, so the engine's cache holds its ~10k-token preamble and only the new turn is
computed. (Calls the engine makes itself, forced by ``tool_choice``, are checked on all four
faces in tests/integration/test_tools_engine.py: an agent's path in a call is longer than
the replies these tests allow.)

Gemma-3-270M does not end its turn after an agent's prompt (it copies the prompt back for
thousands of tokens), so the serve caps replies (``AUTOTUNE_MAX_REPLY_TOKENS``,
conftest.MAX_REPLY) and each CLI is stopped once its first request is answered whole: after a
reply cut at the cap, Claude Code asks for the rest again and again (seen: 28 requests in
6 minutes) and Codex reports an incomplete response. What is checked is autotune's side —
every request the CLI sent answered in its API's shape, nothing refused; a model that ends
its turns gives the CLIs their answer as it is.
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
    assert posts and posts[0].done, (run.returncode, run.stderr[-2000:])
    for post in posts:  # the last may be in flight when the CLI is stopped: never refused
        assert post.status in (200, None), post.error()
        assert not post.done or post.events[-1] == "message_stop", post.tail[-500:]
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
    each = ", ".join(f"{p.seconds:.0f}" for p in posts if p.done)
    print(f"\nClaude Code: {len(posts)} requests answered in {seconds:.0f} s ({each} s)")


def test_claude_code_tool_round_trip_in_its_shapes(agents: Any, claude: Any) -> None:
    """The CLI's own request, then its tool call and the tool's result as Claude Code sends
    them (the recorded turn's blocks): answered, the CLI's preamble from the engine's cache."""
    _, exchanges, _ = claude
    post = _posts(exchanges, "/v1/messages")[0]
    body = copy.deepcopy(post.body)
    recorded = _recorded("claude-code", "03-post-v1-messages.json")["body"]["messages"]
    call_turn, result_turn = recorded[-2], recorded[-1]
    assert call_turn["content"][0]["type"] == "tool_use"
    assert result_turn["content"][0]["type"] == "tool_result"
    turn = {**body, "messages": [*body["messages"], call_turn, result_turn]}
    answered = httpx.post(agents.url + "/v1/messages", json=turn, headers=post.headers, timeout=600)
    assert answered.status_code == 200, answered.text
    events = _events(answered.text)
    assert events[-1]["type"] == "message_stop"
    usage = next(e for e in events if e["type"] == "message_delta")["usage"]
    assert usage["cache_read_input_tokens"] > 5000  # the CLI's preamble, from the engine's cache


def test_codex_answers_with_its_defaults(codex: Any) -> None:
    run, exchanges, seconds = codex
    posts = _posts(exchanges, "/v1/responses")
    assert posts and posts[0].done, (run.returncode, run.stderr[-2000:])
    for post in posts:  # the last may be in flight when the CLI is stopped: never refused
        assert post.status in (200, None), post.error()
        assert not post.done or post.events[-1] in ("response.completed", "response.incomplete")
        assert "response.failed" not in post.events
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
    each = ", ".join(f"{p.seconds:.0f}" for p in posts if p.done)
    print(f"\nCodex: {len(posts)} requests answered in {seconds:.0f} s ({each} s)")


def test_codex_tool_round_trip_in_its_shapes(agents: Any, codex: Any) -> None:
    """The CLI's own request, then its command call and the command's output as Codex sends
    them (the recorded turn's items): answered, the CLI's preamble from the engine's cache."""
    _, exchanges, _ = codex
    post = _posts(exchanges, "/v1/responses")[0]
    body = copy.deepcopy(post.body)
    recorded = _recorded("codex", "02-post-v1-responses.json")["body"]["input"]
    call_item, output_item = recorded[-2], recorded[-1]
    assert (call_item["type"], output_item["type"]) == ("function_call", "function_call_output")
    turn = {**body, "input": [*body["input"], call_item, output_item]}
    answered = httpx.post(
        agents.url + "/v1/responses", json=turn, headers=post.headers, timeout=600
    )
    assert answered.status_code == 200, answered.text
    last = _events(answered.text)[-1]
    assert last["type"] in ("response.completed", "response.incomplete")
    cached = last["response"]["usage"]["input_tokens_details"]["cached_tokens"]
    assert cached > 4000  # the CLI's preamble, from the engine's cache
