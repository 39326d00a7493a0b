"""A forced tool call on llama.cpp: the request as a JSON schema of the call, and the engine's
JSON turned back into a tool call. The chunks are shaped as llama-server streams them (a role
chunk, content deltas, a finish chunk carrying usage and timings)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from autotune.backends.llamacpp_tools import forced_call_params, relay_forced_call
from autotune.ground.types import Chunk, EngineStats

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": CITY}}
ADD = {"type": "function", "function": {"name": "add"}}


def test_nothing_is_forced_without_a_forcing_choice() -> None:
    assert forced_call_params({"tools": [WEATHER]}) is None
    assert forced_call_params({"tools": [WEATHER], "tool_choice": "auto"}) is None
    assert forced_call_params({"tools": [WEATHER], "tool_choice": "none"}) is None
    assert forced_call_params({"tool_choice": "required"}) is None  # no tools: the engine says so
    unknown = {"type": "function", "function": {"name": "nope"}}
    assert forced_call_params({"tools": [WEATHER], "tool_choice": unknown}) is None
    own = {"type": "json_object"}
    assert (
        forced_call_params({"tools": [WEATHER], "tool_choice": "required", "response_format": own})
        is None
    )


def test_a_named_tool_becomes_the_schema_of_its_call() -> None:
    params = {
        "messages": [],
        "tools": [WEATHER, ADD],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": True,
        "max_tokens": 40,
    }
    forced = forced_call_params(params)
    assert forced is not None
    assert "tool_choice" not in forced and "parallel_tool_calls" not in forced
    assert (
        forced["tools"] == [WEATHER, ADD] and forced["max_tokens"] == 40
    )  # the template lists them
    schema = forced["response_format"]["json_schema"]["schema"]
    assert schema["properties"] == {"name": {"const": "get_weather"}, "arguments": CITY}
    assert schema["required"] == ["name", "arguments"]
    assert params["tool_choice"]  # the caller's params are left as they were


def test_required_is_any_one_of_the_tools() -> None:
    forced = forced_call_params({"tools": [WEATHER, ADD], "tool_choice": "required"})
    assert forced is not None
    options = forced["response_format"]["json_schema"]["schema"]["anyOf"]
    assert [o["properties"]["name"]["const"] for o in options] == ["get_weather", "add"]
    assert options[1]["properties"]["arguments"] == {"type": "object"}  # no parameters given


def _stream(pieces: list[str], finish: str = "stop") -> list[Chunk]:
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1}
    chunks = [Chunk({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})]
    chunks += [Chunk({**base, "choices": [{"index": 0, "delta": {"content": p}}]}) for p in pieces]
    usage = {"prompt_tokens": 9, "completion_tokens": len(pieces), "total_tokens": 9 + len(pieces)}
    last = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}], "usage": usage}
    chunks.append(Chunk(last, EngineStats(prompt_tokens=9, completion_tokens=len(pieces))))
    return chunks


async def _relayed(chunks: list[Chunk]) -> list[Chunk]:
    async def source() -> AsyncIterator[Chunk]:
        for chunk in chunks:
            yield chunk

    return [c async for c in relay_forced_call(source())]


def _deltas(chunks: list[Chunk]) -> list[dict[str, Any]]:
    return [choice["delta"] for c in chunks for choice in c.data.get("choices") or ()]


async def test_the_engines_json_becomes_a_tool_call_before_the_finish() -> None:
    out = await _relayed(_stream(['{"name": "get_', 'weather", "arguments": {"city": "Paris"}}']))
    deltas = _deltas(out)
    assert not any("content" in d for d in deltas)  # the JSON text is not shown as text
    calls = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert len(calls) == 1 and len(calls[0]) == 1
    call = calls[0][0]
    assert call["index"] == 0 and call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert out[-1].data["choices"][0]["finish_reason"] == "tool_calls"
    assert out[-1].stats is not None and out[-1].data["usage"]["prompt_tokens"] == 9


async def test_json_cut_short_is_passed_on_as_text() -> None:
    out = await _relayed(_stream(['{"name": "get_weather", "argu'], finish="length"))
    assert "".join(d.get("content", "") for d in _deltas(out)) == '{"name": "get_weather", "argu'
    assert out[-1].data["choices"][0]["finish_reason"] == "length"
    assert not any("tool_calls" in d for d in _deltas(out))
