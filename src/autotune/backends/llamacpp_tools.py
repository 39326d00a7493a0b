"""A required or named ``tool_choice`` on llama.cpp, enforced with a grammar of the call itself.

llama.cpp's grammar for ``tool_choice: "required"`` (and for a named tool) lets free text come
first — any text up to the template's call marker, then the call — and a small model fills that
text until its token limit without ever calling (seen here: Gemma-3-270M and SmolLM2-135M with
a tool template wrote 60-200 tokens of prose, no call, finish ``length``). So on llama.cpp the
call is asked for as a JSON schema (``response_format``), which the engine enforces from the
first token: ``{"name": <one of the tools>, "arguments": <its parameters>}``. ``tools`` stay in
the request, so the template still lists them; the JSON the engine writes becomes the
``tool_calls`` of the reply (:func:`relay_forced_call`), finish ``tool_calls``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from autotune.ground.types import Chunk

__all__ = ["forced_call_params", "relay_forced_call"]


def _functions(params: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    tools = params.get("tools")
    if not isinstance(tools, list):
        return []
    return [
        t["function"]
        for t in tools
        if isinstance(t, Mapping)
        and t.get("type", "function") == "function"
        and isinstance(t.get("function"), Mapping)
        and isinstance(t["function"].get("name"), str)
    ]


def _chosen(params: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The functions a call must be one of, or [] when the request forces no call."""
    choice, functions = params.get("tool_choice"), _functions(params)
    if choice == "required":
        return functions
    if isinstance(choice, Mapping) and isinstance(choice.get("function"), Mapping):
        name = choice["function"].get("name")
        return [f for f in functions if f["name"] == name]
    return []


def _call_schema(function: Mapping[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters")
    if not isinstance(parameters, Mapping) or not parameters:
        parameters = {"type": "object"}
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, "arguments": dict(parameters)},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


def forced_call_params(params: Mapping[str, Any]) -> dict[str, Any] | None:
    """The request's params with the forced call as a JSON schema, or None when nothing is
    forced (no tools, ``auto``/``none``, an unknown name the engine will refuse itself, or a
    ``response_format`` of the client's own, which llama.cpp would put first anyway)."""
    functions = _chosen(params)
    if not functions or params.get("response_format") is not None:
        return None
    calls = [_call_schema(f) for f in functions]
    schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
    forced = {k: v for k, v in params.items() if k not in ("tool_choice", "parallel_tool_calls")}
    forced["response_format"] = {
        "type": "json_schema",
        "json_schema": {"name": "tool_call", "schema": schema, "strict": True},
    }
    return forced


def _tool_call(text: str) -> dict[str, Any] | None:
    """The OpenAI tool call the engine's JSON describes, or None when it is not one (cut short
    by the token limit, say)."""
    try:
        call = json.loads(text)
    except ValueError:
        return None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return None
    arguments = call.get("arguments", {})
    return {
        "index": 0,
        "id": "call_" + uuid.uuid4().hex[:24],
        "type": "function",
        "function": {"name": call["name"], "arguments": json.dumps(arguments)},
    }


def _without_content(data: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The chunk with its content taken out, and that content."""
    text, choices = "", []
    for choice in data.get("choices") or ():
        delta = dict(choice.get("delta") or {})
        text += delta.pop("content", None) or ""
        choices.append({**choice, "delta": delta})
    return ({**data, "choices": choices} if choices else data), text


async def relay_forced_call(chunks: AsyncIterator[Chunk]) -> AsyncIterator[Chunk]:
    """The engine's stream with the call's JSON turned into a tool call: the JSON text is held
    back, and the chunk that finishes the reply is preceded by the ``tool_calls`` delta (finish
    ``tool_calls``). JSON that is not a call (cut by ``max_tokens``) is passed on as text."""
    text = ""
    async for chunk in chunks:
        data, piece = _without_content(chunk.data)
        text += piece
        finish = next((c for c in data.get("choices") or () if c.get("finish_reason")), None)
        if finish is None:
            if data.get("choices") or not piece:
                yield Chunk(data, chunk.stats)
            continue
        call = _tool_call(text)
        head = {k: v for k, v in data.items() if k not in ("choices", "usage", "timings")}
        delta = {"tool_calls": [call]} if call else {"content": text}
        yield Chunk({**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
        if call:
            finish["finish_reason"] = "tool_calls"
        yield Chunk(data, chunk.stats)
