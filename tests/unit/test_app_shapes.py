"""aider's and Open WebUI's requests to the Ollama face, as they send them, over real HTTP.

The real server and pipeline over the scripted FakeBackend (tests/fakes/backend.py); the
bodies are written from each app's source (what they post is a function of their settings
and the conversation, not something a recording adds to):

* aider 0.86 through litellm's ``ollama_chat/`` provider (``litellm/llms/ollama/chat``):
  ``POST /api/show`` ``{"name": model}`` for the model's context, then ``/api/chat`` with
  ``model``, ``messages``, ``options`` (aider sets ``num_ctx``; ``temperature`` 0) and
  ``stream``, the JSON posted without a ``Content-Type`` header.
* Continue (``provider: ollama``; ``core/llm/llms/Ollama.ts`` of continuedev/continue):
  ``/api/show`` for the model, then ``/api/chat`` with ``options`` ``num_predict`` and
  ``num_ctx`` (8,192 unless set), ``keep_alive`` 1800 and, in agent mode, its tools;
* Open WebUI (its Ollama connection; ``backend/open_webui/utils/payload.py``
  ``convert_payload_openai_to_ollama`` and ``tools/builtin.py`` of the open-webui/open-webui
  source read for this test, main branch of late 2026; the issue saw the same with 0.12):
  a turn with its built-in tools on (native function calling: ``get_current_timestamp``,
  ``calculate_timestamp``, ``search_web``, ``fetch_url``), its tool-result turn (tool calls
  with ``index`` and ``id``, arguments as an object; the tool message with ``tool_call_id``),
  and a background title task (not streamed; its ``max_tokens`` lands at the top level as
  ``num_predict``, and the payload carries Open WebUI's ``metadata``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from autotune.backends.registry import BackendSet
from autotune.ground.config import Settings
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer
from fakes.backend import MODEL, FakeBackend, FakeReply

OPEN_WEBUI_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_current_timestamp",
            "description": "Get the current Unix timestamp in seconds.",
            "parameters": {"type": "object", "properties": {}, "required": []},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "calculate_timestamp",
            "description": "Get the current Unix timestamp, optionally adjusted by days, "
            "weeks, months, or years.",
            "parameters": {
                "type": "object",
                "properties": {
                    name: {"type": "integer", "description": f"Number of {name[:-4]} to subtract"}
                    for name in ("days_ago", "weeks_ago", "months_ago", "years_ago")
                },
                "required": [],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search_web",
            "description": "Search the public web for information.",
            "parameters": {
                "type": "object",
                "properties": {
                    "query": {"type": "string", "description": "The search query to look up"},
                    "count": {"type": "integer", "description": "Number of results to return"},
                },
                "required": ["query"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "fetch_url",
            "description": "Fetch and extract the main text content from a web page URL.",
            "parameters": {
                "type": "object",
                "properties": {"url": {"type": "string", "description": "The URL to fetch"}},
                "required": ["url"],
            },
        },
    },
]
OPEN_WEBUI_METADATA = {
    "user_id": "00000000-0000-0000-0000-000000000000",
    "chat_id": "00000000-0000-0000-0000-000000000001",
    "message_id": "00000000-0000-0000-0000-000000000002",
    "session_id": "sess",
    "tool_ids": None,
    "files": None,
    "features": {"web_search": False, "image_generation": False, "code_interpreter": False},
    "variables": {"{{USER_NAME}}": "User", "{{CURRENT_DATE}}": "2026-12-07"},
    "model": {"id": MODEL, "name": MODEL, "owned_by": "ollama"},
    "direct": False,
    "params": {"function_calling": "native"},
}


@pytest.fixture(scope="module")
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture(scope="module")
def url(fake: FakeBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("apps")
    settings = Settings(home=home, backend="embedded", default_model=MODEL, recall=False)
    app = create_app(settings, backends=BackendSet({"fake": fake}, ["fake"]))
    with BackgroundServer(app) as server:
        yield server.url


def _ndjson(reply: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in reply.text.splitlines() if line.strip()]


def test_aider_through_litellm_ollama_chat(url: str, fake: FakeBackend) -> None:
    """No Content-Type on either request (litellm posts ``data=json.dumps(...)``)."""
    fake.queue(FakeReply(("Sure.",)))
    chat = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "Act as an expert software developer."},
            {"role": "user", "content": "Add a docstring to hello.py"},
        ],
        "options": {"temperature": 0, "num_ctx": 8192},
        "stream": True,
    }
    with httpx.Client(base_url=url, timeout=30) as http:
        show = http.post("/api/show", content=json.dumps({"name": MODEL}))
        reply = http.post("/api/chat", content=json.dumps(chat))
    assert show.status_code == 200, show.text
    assert reply.status_code == 200, reply.text
    objects = _ndjson(reply)
    assert "".join(o["message"]["content"] for o in objects) == "Sure." and objects[-1]["done"]


def test_open_webui_with_its_built_in_tools_then_the_tool_result(
    url: str, fake: FakeBackend
) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_current_timestamp", "arguments": "{}"},
    }
    fake.queue(FakeReply(pieces=(), tool_calls=[call], finish_reason="tool_calls"))
    fake.queue(FakeReply(("It is noon.",)))
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What time is it?"},
    ]
    first = {
        "model": MODEL,
        "messages": messages,
        "stream": True,
        "tools": OPEN_WEBUI_TOOLS,
        "options": {},
        "metadata": OPEN_WEBUI_METADATA,
    }
    with httpx.Client(base_url=url, timeout=30) as http:
        turn = http.post("/api/chat", json=first)
        assert turn.status_code == 200, turn.text
        (called,) = [o for o in _ndjson(turn) if o["message"].get("tool_calls")]
        tool_call = called["message"]["tool_calls"][0]
        assert tool_call["function"] == {
            "index": 0,
            "name": "get_current_timestamp",
            "arguments": {},
        }
        answered = {
            **first,
            "messages": [
                *messages,
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": tool_call.get("id", "call_1"),
                            "function": {"name": "get_current_timestamp", "arguments": {}},
                        }
                    ],
                },
                {
                    "role": "tool",
                    "tool_call_id": tool_call.get("id", "call_1"),
                    "content": '{"current_timestamp": 1796644800}',
                },
            ],
        }
        result = http.post("/api/chat", json=answered)
    assert result.status_code == 200, result.text
    assert "".join(o["message"]["content"] for o in _ndjson(result)) == "It is noon."
    sent = fake.requests[-1]
    assert [t["function"]["name"] for t in sent.params["tools"]] == [
        t["function"]["name"] for t in OPEN_WEBUI_TOOLS
    ]
    assert sent.messages[-1]["role"] == "tool" and "1796644800" in sent.messages[-1]["content"]
    assert sent.messages[-2]["tool_calls"][0]["function"]["name"] == "get_current_timestamp"


def test_open_webui_title_task_gets_its_token_limit(url: str, fake: FakeBackend) -> None:
    """Open WebUI's Ollama payload puts a task's ``max_tokens`` at the top level as
    ``num_predict`` (Ollama itself ignores it there: the issue's 7,945-token title); autotune
    takes it as the limit it is meant to be."""
    fake.queue(FakeReply(("Greeting",)))
    task = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "### Task:\nGenerate a concise title."}],
        "stream": False,
        "num_predict": 1000,
        "metadata": {**OPEN_WEBUI_METADATA, "task": "title_generation"},
    }
    reply = httpx.post(url + "/api/chat", json=task, timeout=30)
    assert reply.status_code == 200, reply.text
    assert reply.json()["message"]["content"] == "Greeting"
    assert fake.requests[-1].params["max_tokens"] == 1000


CONTINUE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Use this tool to read the contents of an existing file.",
            "parameters": {
                "type": "object",
                "required": ["filepath"],
                "properties": {"filepath": {"type": "string", "description": "The path"}},
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "run_terminal_command",
            "description": "Run a terminal command in the current directory.",
            "parameters": {
                "type": "object",
                "required": ["command"],
                "properties": {"command": {"type": "string", "description": "The command"}},
            },
        },
    },
]


def test_continue_with_its_tools(url: str, fake: FakeBackend) -> None:
    fake.queue(FakeReply(("Done.",)))
    chat = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "<important_rules>Be concise.</important_rules>"},
            {"role": "user", "content": "What does hello.py do?"},
        ],
        "options": {"num_predict": 4096, "num_ctx": 8192},
        "keep_alive": 1800,
        "stream": True,
        "tools": CONTINUE_TOOLS,
    }
    with httpx.Client(base_url=url, timeout=30) as http:
        show = http.post("/api/show", json={"name": MODEL})
        reply = http.post("/api/chat", json=chat)
    assert show.status_code == 200 and reply.status_code == 200, reply.text
    assert "".join(o["message"]["content"] for o in _ndjson(reply)) == "Done."
    sent = fake.requests[-1]
    assert [t["function"]["name"] for t in sent.params["tools"]] == [
        "read_file",
        "run_terminal_command",
    ]
