"""Pure translation of Anthropic's Messages requests into the OpenAI chat shapes the pipeline
runs, and Anthropic's error bodies.

A Messages request (system prompt as a string or text blocks; content blocks ``text``,
``image``, ``tool_use``, ``tool_result``, ``thinking``) becomes OpenAI chat messages and
parameters; every top-level field is forwarded, owned, accepted or refused by :data:`FIELDS`,
never dropped silently. The way back, events and messages, is :mod:`.anthropic_stream`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autotune.ground.decision import Decision
from autotune.server.fields import ANTHROPIC, accepted_note, check_fields
from autotune.server.wire_kit import bad as _bad
from autotune.server.wire_kit import function_tools, system_prompt

__all__ = ["FIELDS", "ChatParts", "error_body", "error_type", "to_chat", "to_messages"]

# ---------------------------------------------------------------------- the field table

#: What happens to each top-level field (see :mod:`autotune.server.fields`).
FIELDS = ANTHROPIC

#: Tool ``type`` values that are custom (client-run) tools; any other is a server tool.
_CUSTOM_TOOL_TYPES = (None, "custom")
_BLOCK_KINDS = ("text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking")
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP status."""
    return _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(message: str, status: int) -> dict[str, Any]:
    """``{"type": "error", "error": {"type", "message"}}``, as Anthropic answers."""
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


# ---------------------------------------------------------------------- request → chat


@dataclass
class ChatParts:
    """A Messages request in the pipeline's terms."""

    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    stop_sequences: list[str] = field(default_factory=list)
    #: The client asked for thinking: the engine's reasoning text becomes thinking blocks.
    thinking: bool = False
    #: What the plan should say about the translation (fields accepted, system moved).
    notes: list[Decision] = field(default_factory=list)


def _text_of(value: Any, where: str) -> str:
    """A system prompt or tool result content: a string, or a list of text blocks."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for i, block in enumerate(value):
            if not isinstance(block, Mapping) or block.get("type") != "text":
                raise _bad(f"{where}[{i}] must be a text block.", f"{where}[{i}]")
            parts.append(_string(block, "text", f"{where}[{i}]"))
        return "\n".join(parts)
    raise _bad(f"{where} must be a string or a list of text blocks.", where)


def _string(block: Mapping[str, Any], key: str, where: str) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise _bad(f"{where}.{key} must be a string.", f"{where}.{key}")
    return value


def _image_part(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if isinstance(source, Mapping) and source.get("type") == "base64":
        media = _string(source, "media_type", f"{where}.source")
        data = _string(source, "data", f"{where}.source")
        url = f"data:{media};base64,{data}"
    elif isinstance(source, Mapping) and source.get("type") == "url":
        url = _string(source, "url", f"{where}.source")
    else:
        raise _bad(f"{where}.source must be a base64 or url image source.", f"{where}.source")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    content = block.get("content")
    if isinstance(content, list) and any(
        isinstance(b, Mapping) and b.get("type") == "image" for b in content
    ):
        raise _bad(
            f"{where}: images inside a tool_result are not supported here; send them in a "
            "user content block.",
            f"{where}.content",
        )
    text = "" if content is None else _text_of(content, f"{where}.content")
    if block.get("is_error"):
        text = "Error: " + text
    return {"role": "tool", "tool_call_id": _string(block, "tool_use_id", where), "content": text}


def _tool_call(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    arguments = block.get("input", {})
    if not isinstance(arguments, Mapping):
        raise _bad(f"{where}.input must be an object.", f"{where}.input")
    return {
        "id": _string(block, "id", where),
        "type": "function",
        "function": {"name": _string(block, "name", where), "arguments": json.dumps(arguments)},
    }


def _blocks(content: Any, where: str) -> list[Mapping[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not content:
        raise _bad(f"{where} must be a string or a non-empty list of blocks.", where)
    for i, block in enumerate(content):
        kind = block.get("type") if isinstance(block, Mapping) else None
        if kind not in _BLOCK_KINDS:
            raise _bad(
                f"{where}[{i}]: content blocks of type {kind!r} are not supported here "
                f"(supported: {', '.join(_BLOCK_KINDS)}).",
                f"{where}[{i}].type",
            )
    return content


def _user(content: Any, where: str) -> list[dict[str, Any]]:
    """A user turn: tool results become tool messages, the rest one user message."""
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for i, block in enumerate(_blocks(content, where)):
        at = f"{where}[{i}]"
        kind = block["type"]
        if kind == "tool_result":
            out.append(_tool_result(block, at))
        elif kind == "text":
            parts.append({"type": "text", "text": _string(block, "text", at)})
        elif kind == "image":
            parts.append(_image_part(block, at))
        else:
            raise _bad(f"{at}: a user message cannot hold {kind} blocks.", f"{at}.type")
    if parts:
        only_text = all(p["type"] == "text" for p in parts)
        body: Any = "".join(p["text"] for p in parts) if only_text else parts
        out.append({"role": "user", "content": body})
    return out


def _assistant(content: Any, where: str) -> dict[str, Any]:
    """An assistant turn: text and tool calls; earlier thinking is dropped, as Anthropic's
    API itself drops previous turns' thinking from the context."""
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for i, block in enumerate(_blocks(content, where)):
        at = f"{where}[{i}]"
        kind = block["type"]
        if kind == "text":
            text.append(_string(block, "text", at))
        elif kind == "tool_use":
            calls.append(_tool_call(block, at))
        elif kind not in ("thinking", "redacted_thinking"):
            raise _bad(f"{at}: an assistant message cannot hold {kind} blocks.", f"{at}.type")
    message: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if calls:
        message["tool_calls"] = calls
    elif message["content"] is None:
        message["content"] = ""
    return message


def to_messages(
    system: Any, messages: Any, notes: list[Decision] | None = None
) -> list[dict[str, Any]]:
    """Anthropic ``system`` + ``messages`` as OpenAI chat messages.

    A ``system`` message among ``messages`` (Claude Code sends its environment block so) joins
    the system prompt, after ``system``, in the order sent: the one place every chat template
    takes a system text (Gemma's, for one, refuses a system turn after the first), and a
    prefix that stays the same from turn to turn, so the engine's prompt cache holds. When
    ``notes`` is given, the plan's note saying so is added to it."""
    texts = [_text_of(system, "system")] if system is not None else []
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must hold at least one message.", "messages")
    turns: list[dict[str, Any]] = []
    moved = 0
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = m.get("role") if isinstance(m, Mapping) else None
        if role == "user":
            turns.extend(_user(m.get("content"), f"{where}.content"))
        elif role == "assistant":
            turns.append(_assistant(m.get("content"), f"{where}.content"))
        elif role == "system":
            texts.append(_text_of(m.get("content"), f"{where}.content"))
            moved += 1
        else:
            raise _bad(f"{where}.role must be 'user', 'assistant' or 'system'.", f"{where}.role")
    if not turns:
        raise _bad("'messages' must hold at least one user or assistant message.", "messages")
    if moved and notes is not None:
        why = "system messages among the messages join the system prompt, in the order sent"
        notes.append(Decision("system", f"{moved} moved to the start", why))
    return system_prompt("\n\n".join(t for t in texts if t) or None) + turns


def _tool(tool: Mapping[str, Any], where: str) -> dict[str, Any]:
    """One custom tool as an OpenAI function (a server tool is refused by type)."""
    if tool.get("type") not in _CUSTOM_TOOL_TYPES:
        raise _bad(
            f"{where}: the server tool {tool.get('type')!r} runs on Anthropic's platform and "
            "is not offered by local engines; define it as a custom tool instead.",
            f"{where}.type",
        )
    schema = tool.get("input_schema")
    if not isinstance(schema, Mapping):
        raise _bad(f"{where}.input_schema must be a JSON schema object.", where)
    function: dict[str, Any] = {"name": _string(tool, "name", where), "parameters": schema}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return function


def _tool_choice(choice: Any, params: dict[str, Any]) -> None:
    if not isinstance(choice, Mapping):
        raise _bad("'tool_choice' must be an object with a 'type'.", "tool_choice")
    kind = choice.get("type")
    if kind == "auto":
        params["tool_choice"] = "auto"
    elif kind == "any":
        params["tool_choice"] = "required"
    elif kind == "none":
        params["tool_choice"] = "none"
    elif kind == "tool":
        name = _string(choice, "name", "tool_choice")
        params["tool_choice"] = {"type": "function", "function": {"name": name}}
    else:
        raise _bad(f"tool_choice.type {kind!r} is not one of auto, any, tool, none.", "tool_choice")
    if choice.get("disable_parallel_tool_use") and params.get("tools"):
        params["parallel_tool_calls"] = False


def _output_config(config: Any, params: dict[str, Any]) -> None:
    if not isinstance(config, Mapping):
        raise _bad("'output_config' must be an object.", "output_config")
    if config.get("effort") is not None:
        params["reasoning_effort"] = config["effort"]
    fmt = config.get("format")
    if fmt is not None:
        if not isinstance(fmt, Mapping) or not isinstance(fmt.get("schema"), Mapping):
            raise _bad("output_config.format must hold a JSON 'schema'.", "output_config.format")
        params["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": fmt["schema"]},
        }


def _thinking(value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, Mapping) or not isinstance(value.get("type"), str):
        raise _bad("'thinking' must be an object with a 'type'.", "thinking")
    return bool(value["type"] != "disabled")


def to_chat(body: Mapping[str, Any], *, pass_unknown: bool = False) -> ChatParts:
    """A Messages request (as sent, no ``None`` values) in the pipeline's terms; raises
    :class:`InvalidRequest` naming the field it cannot honour."""
    params = check_fields(
        body,
        table=FIELDS,
        pass_unknown=pass_unknown,
        schema="Anthropic",
        extensions=False,
        forwarded=False,
    )
    notes = accepted_note(body, FIELDS)
    messages = to_messages(body.get("system"), body.get("messages"), notes)
    for name in ("max_tokens", "temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            params[name] = body[name]
    if body.get("tools"):
        params["tools"] = function_tools(body["tools"], _tool)
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], params)
        if params["tool_choice"] != "none" and not params.get("tools"):
            raise _bad("'tool_choice' asks for a tool, but the request has no 'tools'.", "tools")
    if body.get("output_config") is not None:
        _output_config(body["output_config"], params)
    stops = body.get("stop_sequences") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _bad("'stop_sequences' must be a list of non-empty strings.", "stop_sequences")
    return ChatParts(messages, params, list(stops), _thinking(body.get("thinking")), notes)
