"""Claude Code and Codex, the real CLIs, run against ``autotune serve`` with only a base URL, a
key and a model name (tests/agent_harness.py; installed by ``make agents``).

What is checked today is that they still send what ``tests/fixtures/agents/`` holds — the same
fields, the same tools, the prompt given — so the face tests that replay those recordings
(tests/unit/test_agent_requests.py) stay true to the CLIs. The answers are not checked yet:
autotune refuses parts of both default requests (``REFUSED_TODAY`` there); once the faces
accept them, this is where each agent gets its answer. Neither run reaches the engine today
(each is refused before a prefill), so both together take seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent_harness import Exchange

pytestmark = pytest.mark.usefixtures("tool_model_env")

FIXTURES = Path(__file__).parents[1] / "fixtures" / "agents"


def _recorded(agent: str, name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / agent / name).read_text(encoding="utf-8"))["body"]


def _model_requests(exchanges: list[Exchange], path: str) -> list[dict[str, Any]]:
    return [e.body for e in exchanges if e.method == "POST" and e.path == path]


def _tool_names(body: dict[str, Any]) -> list[str]:
    return [t.get("name") or t["type"] for t in body["tools"]]


def test_claude_code_sends_what_was_recorded(agents: Any) -> None:
    run, exchanges = agents.claude("Say hi.")
    sent = _model_requests(exchanges, "/v1/messages")
    assert sent, (run.returncode, run.stderr[-2000:])
    recorded = _recorded("claude-code", "02-post-v1-messages.json")
    first = sent[0]
    assert sorted(first) == sorted(recorded)
    assert first["model"] == recorded["model"] and first["max_tokens"] == recorded["max_tokens"]
    assert _tool_names(first) == _tool_names(recorded)
    assert [m["role"] for m in first["messages"]] == [m["role"] for m in recorded["messages"]]
    assert "Say hi." in json.dumps(first["messages"])


def test_codex_sends_what_was_recorded(agents: Any) -> None:
    run, exchanges = agents.codex("Say hi.")
    sent = _model_requests(exchanges, "/v1/responses")
    assert sent, (run.returncode, run.stderr[-2000:])
    recorded = _recorded("codex", "01-post-v1-responses.json")
    first = sent[0]
    assert sorted(first) == sorted(recorded)
    assert first["model"] == recorded["model"] and first["store"] is False
    assert _tool_names(first) == _tool_names(recorded)
    roles = [i.get("role") or i["type"] for i in first["input"]]
    assert roles == [i.get("role") or i["type"] for i in recorded["input"]]
    assert "Say hi." in json.dumps(first["input"])
