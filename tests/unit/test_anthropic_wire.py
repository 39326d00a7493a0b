"""Anthropic Messages ⇄ OpenAI chat translation: requests, events, stop reasons and usage.

Outputs are checked against the official ``anthropic`` package's own models (its
``Message``, its stream events and its stream accumulator), so a shape the SDK would not
read fails here.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent, message_create_params
from pydantic import TypeAdapter

from autotune.ground.errors import InvalidRequest
from autotune.ground.types import EngineStats
from autotune.server.anthropic_stream import EventStream, StopScanner, usage
from autotune.server.anthropic_wire import FIELDS, error_body, to_chat

EVENTS: TypeAdapter[Any] = TypeAdapter(RawMessageStreamEvent)
BASE: dict[str, Any] = {
    "model": "m",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "hi"}],
}


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def run_stream(stream: EventStream, chunks: list[dict[str, Any]], stats: Any = None) -> list[Any]:
    events = stream.start()
    for c in chunks:
        events += stream.feed(c)
        if stream.stopped:
            break
    events += stream.finish(stats)
    return events


def accumulate(events: list[Any]) -> Message:
    """Fold events as the SDK's MessageStream does; every event must parse as the SDK's."""
    snapshot = None
    buffers: dict[int, bytes] = {}
    for name, data in events:
        assert data["type"] == name
        event = EVENTS.validate_python(data)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=buffers)
    assert snapshot is not None
    return snapshot


# ---------------------------------------------------------------------- requests


def test_every_field_of_the_official_request_type_is_in_the_table() -> None:
    official = set(typing.get_type_hints(message_create_params.MessageCreateParamsStreaming))
    missing = official - set(FIELDS)
    assert not missing, f"classify these in anthropic_wire.FIELDS: {sorted(missing)}"
    assert {rule.action for rule in FIELDS.values()} <= {"forward", "own", "accept", "refuse"}


def test_system_prompt_as_a_string_or_text_blocks() -> None:
    as_text = to_chat({**BASE, "system": "Be brief."})
    as_blocks = to_chat(
        {**BASE, "system": [{"type": "text", "text": "Be"}, {"type": "text", "text": "brief."}]}
    )
    assert as_text.messages[0] == {"role": "system", "content": "Be brief."}
    assert as_blocks.messages[0] == {"role": "system", "content": "Be\nbrief."}
    assert as_text.messages[1] == {"role": "user", "content": "hi"}
    assert as_text.params == {"max_tokens": 32}


def test_system_messages_among_the_messages_join_the_system_prompt_and_the_plan_says_so() -> None:
    """Claude Code sends its environment as a system message after the first user turn; it
    joins the system prompt (every template takes one there), in the order sent."""
    body = {
        **BASE,
        "system": "You are an agent.",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "system", "content": [{"type": "text", "text": "# Environment"}]},
            {"role": "assistant", "content": "hello"},
            {"role": "system", "content": "Shell: bash"},
            {"role": "user", "content": "bye"},
        ],
    }
    parts = to_chat(body)
    assert parts.messages == [
        {"role": "system", "content": "You are an agent.\n\n# Environment\n\nShell: bash"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"},
    ]
    assert [(n.key, n.value) for n in parts.notes] == [("system", "2 moved to the start")]


def test_context_management_edits_that_change_nothing_are_accepted_and_named() -> None:
    edits = [
        {"type": "clear_thinking_20251015", "keep": "all"},
        {"type": "clear_tool_uses_20250919"},
    ]
    parts = to_chat({**BASE, "context_management": {"edits": edits}})
    assert [(n.key, n.value) for n in parts.notes] == [("accepted", "context_management")]
    assert "context_management" not in parts.params and parts.messages[-1]["content"] == "hi"


def test_a_tool_round_trip_becomes_tool_calls_and_tool_messages() -> None:
    body = {
        **BASE,
        "tools": [
            {
                "name": "weather",
                "description": "Weather in a city",
                "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
            }
        ],
        "tool_choice": {"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "call it", "signature": "s"},
                    {"type": "text", "text": "Checking."},
                    {
                        "type": "tool_use",
                        "id": "toolu_1",
                        "name": "weather",
                        "input": {"city": "Paris"},
                    },
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [{"type": "text", "text": "x"}],
                        "is_error": True,
                    },
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
        ],
    }
    parts = to_chat(body)
    _, assistant, tool, failed, follow_up = parts.messages
    assert assistant == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "toolu_1",
                "type": "function",
                "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    assert tool == {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C"}
    assert failed["content"] == "Error: x"
    assert follow_up == {"role": "user", "content": "And tomorrow?"}
    assert parts.params["tools"][0]["function"]["name"] == "weather"
    assert parts.params["tools"][0]["function"]["parameters"]["properties"]["city"]
    assert parts.params["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert parts.params["parallel_tool_calls"] is False


def test_images_become_image_url_parts() -> None:
    body = {
        **BASE,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": "iVBO"},
                    },
                    {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}},
                ],
            }
        ],
    }
    (message,) = to_chat(body).messages
    assert message["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBO"},
    }
    assert message["content"][2]["image_url"]["url"] == "https://x/y.png"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"container": "c1"}, "container"),
        ({"mcp_servers": []}, "mcp_servers"),
        ({"foo": 1}, "foo"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        ({"tool_choice": {"type": "any"}}, "tools"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0].type",
        ),
        ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"context_management": {"edits": [{"type": "compact_20260101"}]}}, "context_management"),
        ({"system": [{"type": "image"}]}, "system[0]"),
        ({"stop_sequences": [""]}, "stop_sequences"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_the_field(
    change: dict[str, Any], param: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        to_chat({**BASE, **change})
    assert info.value.status == 400 and info.value.param == param


def test_thinking_and_output_config_map_to_engine_terms() -> None:
    parts = to_chat(
        {
            **BASE,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
            "output_config": {
                "effort": "low",
                "format": {"type": "json_schema", "schema": {"type": "object"}},
            },
            "metadata": {"user_id": "u"},
            "temperature": 0.2,
            "top_k": 5,
        }
    )
    assert parts.thinking is True
    assert parts.params["reasoning_effort"] == "low"
    assert parts.params["response_format"]["json_schema"]["schema"] == {"type": "object"}
    assert parts.params["temperature"] == 0.2 and parts.params["top_k"] == 5
    assert "metadata" not in parts.params
    assert to_chat({**BASE, "thinking": {"type": "disabled"}}).thinking is False


# ---------------------------------------------------------------------- stop sequences


def test_the_stop_scanner_finds_a_sequence_split_across_pieces() -> None:
    scanner = StopScanner(["END", "\n\n"])
    out = "".join(scanner.feed(p) for p in ["Hello E", "N", "D and more"])
    assert out == "Hello " and scanner.matched == "END" and scanner.emitted == 6
    assert scanner.feed("ignored") == ""


def test_the_stop_scanner_releases_held_text_at_the_end() -> None:
    scanner = StopScanner(["STOP"])
    out = scanner.feed("ab") + scanner.feed("cS") + scanner.flush()
    assert out == "abcS" and scanner.matched is None and scanner.emitted == 4


# ---------------------------------------------------------------------- events


def test_a_text_reply_streams_as_the_sdk_reads_it() -> None:
    stats = EngineStats(prompt_tokens=30, cached_tokens=20, completion_tokens=2)
    stream = EventStream("m", input_estimate=25)
    events = run_stream(
        stream,
        [
            chunk({"role": "assistant"}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo"}),
            chunk({}, "stop"),
        ],
        stats,
    )
    names = [e[0] for e in events]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    message = accumulate(events)
    assert message.content[0].type == "text" and message.content[0].text == "Hello"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 10 and message.usage.cache_read_input_tokens == 20
    assert message.usage.output_tokens == 2
    whole = Message.model_validate(stream.message())
    assert whole.content[0].text == "Hello" and whole.usage.cache_read_input_tokens == 20


def test_tool_calls_stream_as_tool_use_blocks_with_input_json() -> None:
    stream = EventStream("m")
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    events = run_stream(
        stream,
        [
            chunk({"content": "Let me check."}),
            chunk({"tool_calls": [call]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            chunk({}, "tool_calls"),
        ],
    )
    message = accumulate(events)
    text, tool = message.content
    assert text.type == "text" and tool.type == "tool_use"
    assert tool.id == "call_1" and tool.name == "weather" and tool.input == {"city": "Paris"}
    assert message.stop_reason == "tool_use"
    whole = Message.model_validate(stream.message())
    assert whole.content[1].input == {"city": "Paris"}


def test_a_stop_sequence_ends_the_reply_and_is_named() -> None:
    stream = EventStream("m", stop_sequences=["3"])
    events = run_stream(stream, [chunk({"content": "1, 2, "}), chunk({"content": "3, 4"})])
    message = accumulate(events)
    assert message.content[0].text == "1, 2, "
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "3"
    assert stream.scanner.emitted == len("1, 2, ")


def test_max_tokens_and_thinking_blocks() -> None:
    stream = EventStream("m", thinking=True)
    events = run_stream(
        stream,
        [chunk({"reasoning_content": "hmm"}), chunk({"content": "Yes"}), chunk({}, "length")],
    )
    message = accumulate(events)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "hmm" and message.stop_reason == "max_tokens"
    hidden = run_stream(
        EventStream("m"), [chunk({"reasoning_content": "hmm"}), chunk({"content": "Yes"})]
    )
    assert [b.type for b in accumulate(hidden).content] == ["text"]


def test_usage_falls_back_to_the_estimate_without_engine_counters() -> None:
    assert usage(None, 12, 3) == {
        "input_tokens": 12,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
        "output_tokens": 3,
    }


def test_error_bodies_have_anthropics_shape() -> None:
    assert error_body("bad", 400) == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "bad"},
    }
    assert error_body("x", 404)["error"]["type"] == "not_found_error"
    assert error_body("x", 429)["error"]["type"] == "rate_limit_error"
    assert json.dumps(error_body("x", 500))
