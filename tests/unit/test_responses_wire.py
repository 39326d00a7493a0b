"""OpenAI Responses ⇄ chat translation, and the response-id store behind previous_response_id.

Outputs are validated with the official ``openai`` package's models (``Response`` and the
stream event union), so a shape the client would not read fails here.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent, response_create_params
from pydantic import TypeAdapter

from autotune.ground.errors import InvalidRequest
from autotune.ground.types import EngineStats
from autotune.server.responses_wire import FIELDS, ResponseStream, to_chat
from autotune.store.conversations import ConversationStore
from autotune.store.db import Database
from autotune.store.responses import ResponseStore

EVENTS: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
BASE: dict[str, Any] = {"model": "m", "input": "hi"}
TOOL = {"type": "function", "name": "shell", "parameters": {"type": "object"}}


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_every_field_of_the_official_request_type_is_in_the_table() -> None:
    official = set(typing.get_type_hints(response_create_params.ResponseCreateParamsStreaming))
    missing = official - set(FIELDS)
    assert not missing, f"classify these in responses_wire.FIELDS: {sorted(missing)}"


def test_instructions_and_items_become_chat_messages() -> None:
    parts = to_chat(
        {
            "model": "m",
            "instructions": "Be brief.",
            "input": [
                {"role": "developer", "content": "Use tools."},
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "ls"}],
                },
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"role": "assistant", "content": [{"type": "output_text", "text": "Running."}]},
                {"type": "function_call", "call_id": "call_1", "name": "shell", "arguments": "{}"},
                {"type": "function_call", "call_id": "call_2", "name": "shell", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "a.txt"},
                {
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA"}],
                },
            ],
            "tools": [TOOL],
            "tool_choice": {"type": "function", "name": "shell"},
            "max_output_tokens": 64,
            "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}},
            "reasoning": {"effort": "low"},
            "truncation": "auto",
            "store": False,
            "metadata": {"k": "v"},
        }
    )
    system, developer, user, assistant, tool, image = parts.messages
    assert system == {"role": "system", "content": "Be brief."}
    assert developer == {"role": "system", "content": "Use tools."}
    assert user == {"role": "user", "content": "ls"}
    assert assistant["content"] == "Running." and [c["id"] for c in assistant["tool_calls"]] == [
        "call_1",
        "call_2",
    ]
    assert tool == {"role": "tool", "tool_call_id": "call_1", "content": "a.txt"}
    assert image["content"][0]["type"] == "image_url"
    assert parts.params["tools"][0]["function"]["name"] == "shell"
    assert parts.params["tool_choice"] == {"type": "function", "function": {"name": "shell"}}
    assert parts.params["max_tokens"] == 64 and parts.params["reasoning_effort"] == "low"
    assert parts.params["response_format"]["json_schema"]["name"] == "x"
    assert parts.overflow == "truncate-oldest"
    assert "metadata" not in parts.params and "store" not in parts.params


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"tools": [{"type": "custom", "name": "apply_patch"}]}, "tools[0].type"),
        ({"tools": [{"type": "local_shell"}]}, "tools[0].type"),
        (
            {"tools": [{"type": "namespace", "name": "n", "tools": [{"type": "x"}]}]},
            "tools[0].tools[0].type",
        ),
        ({"tools": [{"type": "web_search"}], "tool_choice": "required"}, "tools"),
        ({"background": True}, "background"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": []}, "input"),
        ({"tool_choice": "required"}, "tools"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_it(change: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        to_chat({**BASE, **change})
    assert info.value.status == 400 and info.value.param == param


def test_a_streamed_reply_is_valid_responses_events_and_a_valid_response() -> None:
    stream = ResponseStream({**BASE, "tools": [TOOL]}, "m", input_estimate=9)
    events = stream.start()
    for c in [
        chunk({"role": "assistant"}),
        chunk({"content": "Let me"}),
        chunk({"content": " look."}),
        chunk(
            {
                "tool_calls": [
                    {"index": 0, "id": "call_9", "function": {"name": "shell", "arguments": '{"c'}}
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'md": "ls"}'}}]}),
        chunk({}, "tool_calls"),
    ]:
        events += stream.feed(c)
    events += stream.finish(EngineStats(prompt_tokens=40, cached_tokens=32, completion_tokens=7))
    parsed = [EVENTS.validate_python(e) for e in events]
    kinds = [e.type for e in parsed]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds.count("response.output_text.delta") == 2
    assert "response.function_call_arguments.done" in kinds and kinds[-1] == "response.completed"
    assert [e.sequence_number for e in parsed] == list(range(len(parsed)))
    final = Response.model_validate(stream.response())
    message, call = final.output
    assert message.type == "message" and message.content[0].text == "Let me look."
    assert call.type == "function_call" and call.call_id == "call_9"
    assert call.arguments == '{"cmd": "ls"}' and call.name == "shell"
    assert final.usage is not None and final.usage.input_tokens_details.cached_tokens == 32
    assert final.usage.total_tokens == 47 and final.status == "completed"
    added = next(e for e in parsed if e.type == "response.output_item.added")
    assert added.item.type == "message" and added.item.content == []  # as it was when sent


NAMESPACE = {
    "type": "namespace",
    "name": "multi_agent_v1",
    "description": "Sub-agents.",
    "tools": [
        {"type": "function", "name": "spawn_agent", "parameters": {"type": "object"}},
        {"type": "function", "name": "shell", "parameters": {"type": "object"}},
    ],
}


def test_namespace_groups_are_flattened_and_built_in_tools_dropped_with_a_note() -> None:
    """Codex's defaults: a namespace group becomes functions (by their own names unless taken,
    then ``<namespace>__<name>``), web_search is not offered, and the plan says both."""
    parts = to_chat({**BASE, "tools": [TOOL, NAMESPACE, {"type": "web_search"}]})
    names = [t["function"]["name"] for t in parts.params["tools"]]
    assert names == ["shell", "spawn_agent", "multi_agent_v1__shell"]
    assert parts.params["tools"][1]["function"]["parameters"] == {"type": "object"}
    (note,) = parts.notes
    assert (note.key, note.value) == ("tools", "flattened multi_agent_v1 dropped web_search")
    only_built_in = to_chat({**BASE, "tools": [{"type": "web_search_preview"}]})
    assert "tools" not in only_built_in.params


def test_a_call_to_a_namespaced_function_goes_back_with_its_namespace() -> None:
    """In the history Codex sends back a call with its ``namespace``; the engine sees the
    flattened name. A call the engine makes comes back named as Codex knows the function."""
    history = [
        {"role": "user", "content": "go"},
        {
            "type": "function_call",
            "call_id": "c1",
            "name": "shell",
            "namespace": "multi_agent_v1",
            "arguments": "{}",
        },
        {"type": "function_call_output", "call_id": "c1", "output": "ok"},
    ]
    parts = to_chat({**BASE, "input": history, "tools": [TOOL, NAMESPACE]})
    assert parts.messages[1]["tool_calls"][0]["function"]["name"] == "multi_agent_v1__shell"
    stream = ResponseStream({**BASE, "tools": [TOOL, NAMESPACE]}, "m", tools=parts.tools)
    events = stream.start()
    for c in [
        chunk({"tool_calls": [{"index": 0, "id": "c2", "function": {"name": "spawn_agent"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
    ]:
        events += stream.feed(c)
    events += stream.finish(None)
    for event in events:
        EVENTS.validate_python(event)
    (call,) = stream.response()["output"]
    assert (call["name"], call["namespace"]) == ("spawn_agent", "multi_agent_v1")


def test_client_metadata_is_accepted_and_named_in_the_plan() -> None:
    parts = to_chat({**BASE, "client_metadata": {"x-codex-turn-metadata": "{}"}})
    assert [(n.key, n.value) for n in parts.notes] == [("accepted", "client_metadata")]


def test_a_reply_cut_by_max_output_tokens_is_incomplete() -> None:
    stream = ResponseStream(BASE, "m")
    stream.start()
    stream.feed(chunk({"content": "x"}))
    events = stream.finish(None)
    assert events[-1]["type"] == "response.incomplete" or stream.status == "completed"
    stream2 = ResponseStream(BASE, "m")
    stream2.feed(chunk({"content": "x"}, "length"))
    assert stream2.finish(None)[-1]["type"] == "response.incomplete"
    final = Response.model_validate(stream2.response())
    assert final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"


def test_the_response_store_resumes_and_forks_conversations(tmp_path: Path) -> None:
    db = Database(tmp_path / "r.db")
    conversations, responses = ConversationStore(db), ResponseStore(db)
    conversations.ensure("conv_a")
    conversations.append(
        "conv_a", [{"role": "user", "content": "1"}, {"role": "assistant", "content": "one"}]
    )
    assert responses.put("resp_1", "conv_a", "m", {"id": "resp_1"}) == 2
    assert responses.resume("resp_1") == "conv_a"
    conversations.append(
        "conv_a", [{"role": "user", "content": "2"}, {"role": "assistant", "content": "two"}]
    )
    responses.put("resp_2", "conv_a", "m", {"id": "resp_2"})
    forked = responses.resume("resp_1")  # an earlier turn: a copy up to it
    assert forked is not None and forked != "conv_a"
    assert [m.content for m in conversations.messages(forked)] == ["1", "one"]
    assert responses.resume("resp_2") == "conv_a"
    assert responses.resume("resp_missing") is None
    stored = responses.get("resp_2")
    assert stored is not None and stored.body == {"id": "resp_2"} and stored.turn_end == 4
    db.close()
