"""Pure translation between Anthropic's Messages API and the OpenAI chat shapes the pipeline runs.

In: a Messages request (system prompt as a string or text blocks; content blocks ``text``,
``image``, ``tool_use``, ``tool_result``, ``thinking``) becomes OpenAI chat messages and
parameters; every top-level field is forwarded, owned, accepted or refused by :data:`FIELDS`,
never dropped silently. Out: the engine's ``chat.completion.chunk`` stream becomes
Anthropic's event sequence (``message_start``, ``content_block_start`` / ``_delta`` /
``_stop``, ``message_delta``, ``message_stop``) or one ``message``, with stop reasons
(``end_turn``, ``max_tokens``, ``stop_sequence``, ``tool_use``) and usage in Anthropic's terms
(``cache_read_input_tokens`` are the prompt tokens the engine took from its cache).

Stop sequences are matched here, on the text as it streams, rather than by the engine:
OpenAI-style engines do not say which sequence (or the end-of-turn token) ended a reply, and
Anthropic's answer names it. :class:`StopScanner` holds back at most the longest sequence's
length of text, so streaming stays token by token.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autotune.ground.errors import InvalidRequest
from autotune.ground.types import EngineStats
from autotune.server.fields import unknown_field

__all__ = [
    "FIELDS",
    "ChatParts",
    "Event",
    "EventStream",
    "StopScanner",
    "error_body",
    "error_type",
    "to_chat",
    "to_messages",
    "usage",
]

Event = tuple[str, dict[str, Any]]

# ---------------------------------------------------------------------- the field table

#: Each top-level field of a Messages request: (action, why). Actions as in server/fields.py:
#: ``own`` (autotune translates it), ``forward`` (sent to the engine in OpenAI terms),
#: ``accept`` (metadata; changes nothing in the answer) or ``refuse`` (a 400 naming it).
FIELDS: dict[str, tuple[str, str]] = {
    "model": ("own", "the engine is chosen by model name"),
    "messages": ("own", "translated to chat messages; the newest is never cut"),
    "system": ("own", "the system prompt (a string or text blocks)"),
    "max_tokens": ("forward", "as max_tokens"),
    "stream": ("own", "Anthropic's server-sent events"),
    "stop_sequences": ("own", "matched by autotune on the streamed text, so the answer names one"),
    "temperature": ("forward", "an older Messages field Claude Code still sends"),
    "top_p": ("forward", "an older Messages field"),
    "top_k": ("forward", "an older Messages field; llama.cpp, vLLM and Ollama take it"),
    "tools": ("forward", "custom tools as functions; server tools are refused by type"),
    "tool_choice": ("forward", "auto, any, tool or none, as OpenAI's tool_choice"),
    "thinking": ("own", "enabled: the engine's reasoning text becomes thinking blocks"),
    "output_config": ("forward", "effort as reasoning_effort, format as a JSON schema"),
    "metadata": ("accept", "metadata; a user id names a user, not a conversation"),
    "service_tier": ("accept", "a local engine has one tier"),
    "cache_control": ("accept", "autotune's prompt caching is automatic"),
    "inference_geo": ("accept", "the engine runs on this machine"),
    "speed": ("accept", "a local engine has one speed"),
    "diagnostics": ("accept", "metadata"),
    "user_profile_id": ("accept", "metadata"),
    "workspace_id": ("accept", "metadata"),
    "container": ("refuse", "code-execution containers are a service of Anthropic's platform"),
    "mcp_servers": ("refuse", "remote MCP servers are a service of Anthropic's platform"),
    "context_management": ("refuse", "autotune manages the context itself"),
}

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


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


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


def to_messages(system: Any, messages: Any) -> list[dict[str, Any]]:
    """Anthropic ``system`` + ``messages`` as OpenAI chat messages."""
    out: list[dict[str, Any]] = []
    if system is not None:
        text = _text_of(system, "system")
        if text:
            out.append({"role": "system", "content": text})
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must hold at least one message.", "messages")
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = m.get("role") if isinstance(m, Mapping) else None
        if role == "user":
            out.extend(_user(m.get("content"), f"{where}.content"))
        elif role == "assistant":
            out.append(_assistant(m.get("content"), f"{where}.content"))
        else:
            raise _bad(f"{where}.role must be 'user' or 'assistant'.", f"{where}.role")
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _bad("'tools' must be a list.", "tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise _bad(f"{where} must be an object.", where)
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
        out.append({"type": "function", "function": function})
    return out


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


def _check_fields(body: Mapping[str, Any], pass_unknown: bool) -> dict[str, Any]:
    """Refuse what autotune cannot honour; return unknown fields to pass through."""
    extra: dict[str, Any] = {}
    for name, value in body.items():
        rule = FIELDS.get(name)
        if rule is None:
            if pass_unknown:
                extra[name] = value
                continue
            raise unknown_field(name, "Anthropic")
        if rule[0] == "refuse":
            raise InvalidRequest(f"{name!r} is not supported: {rule[1]}.", param=name)
    return extra


def _thinking(value: Any) -> bool:
    if value is None:
        return False
    if not isinstance(value, Mapping) or not isinstance(value.get("type"), str):
        raise _bad("'thinking' must be an object with a 'type'.", "thinking")
    return bool(value["type"] != "disabled")


def to_chat(body: Mapping[str, Any], *, pass_unknown: bool = False) -> ChatParts:
    """A Messages request (as sent, no ``None`` values) in the pipeline's terms; raises
    :class:`InvalidRequest` naming the field it cannot honour."""
    params = _check_fields(body, pass_unknown)
    messages = to_messages(body.get("system"), body.get("messages"))
    for name in ("max_tokens", "temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            params[name] = body[name]
    if body.get("tools"):
        params["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], params)
        if params["tool_choice"] != "none" and not params.get("tools"):
            raise _bad("'tool_choice' asks for a tool, but the request has no 'tools'.", "tools")
    if body.get("output_config") is not None:
        _output_config(body["output_config"], params)
    stops = body.get("stop_sequences") or []
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise _bad("'stop_sequences' must be a list of non-empty strings.", "stop_sequences")
    return ChatParts(messages, params, list(stops), _thinking(body.get("thinking")))


# ---------------------------------------------------------------------- stop sequences


class StopScanner:
    """Finds the first stop sequence in text that arrives piece by piece.

    :meth:`feed` returns the text that is safe to emit now; text that could be the start
    of a stop sequence is held back until the next piece says otherwise.
    """

    def __init__(self, sequences: Sequence[str]) -> None:
        self.sequences = [s for s in sequences if s]
        self._hold = max((len(s) for s in self.sequences), default=1) - 1
        self._pending = ""
        #: Characters emitted so far (the reply's text up to the match, once matched).
        self.emitted = 0
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        if self.matched is not None:
            return ""
        if not self.sequences:
            self.emitted += len(text)
            return text
        buffer = self._pending + text
        hits = [(buffer.find(s), s) for s in self.sequences if s in buffer]
        if hits:
            at, self.matched = min(hits)
            self._pending = ""
            self.emitted += at
            return buffer[:at]
        keep = min(self._hold, len(buffer))
        out, self._pending = buffer[: len(buffer) - keep], buffer[len(buffer) - keep :]
        self.emitted += len(out)
        return out

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        self.emitted += len(out)
        return out


# ---------------------------------------------------------------------- reply → Anthropic


def usage(stats: EngineStats | None, estimate: int = 0, output: int = 0) -> dict[str, Any]:
    """Anthropic usage from the engine's counters: ``input_tokens`` are the prompt tokens the
    engine computed, ``cache_read_input_tokens`` those it took from its cache."""
    prompt = stats.prompt_tokens if stats and stats.prompt_tokens is not None else estimate
    cached = stats.cached_tokens if stats and stats.cached_tokens else 0
    completion = stats.completion_tokens if stats and stats.completion_tokens else output
    return {
        "input_tokens": max(0, prompt - cached),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": completion,
    }


def _stop_reason(finish: str | None, matched: str | None, tool_calls: bool) -> str:
    if matched is not None:
        return "stop_sequence"
    if tool_calls or finish == "tool_calls":
        return "tool_use"
    if finish == "length":
        return "max_tokens"
    if finish == "content_filter":
        return "refusal"
    return "end_turn"


def _tool_input(arguments: str) -> dict[str, Any]:
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        return {"_unparsed_arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"_unparsed_arguments": arguments}


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


class EventStream:
    """Turns the engine's chat chunks into Anthropic's events, and remembers the blocks so
    :meth:`message` can answer a non-streaming request with the same content.

    Feed it every chunk's dict with :meth:`feed`; when the stream ends (or the scanner
    matched a stop sequence) call :meth:`finish`.
    """

    def __init__(
        self,
        model: str,
        *,
        input_estimate: int = 0,
        stop_sequences: Sequence[str] = (),
        thinking: bool = False,
        message_id: str | None = None,
    ) -> None:
        self.id = message_id or new_message_id()
        self.model = model
        self.input_estimate = input_estimate
        self.thinking = thinking
        self.scanner = StopScanner(stop_sequences)
        #: Content blocks so far, in Anthropic's shape (tool inputs as raw JSON text).
        self.blocks: list[dict[str, Any]] = []
        self._open: str | None = None  # "text", "thinking" or "tool:<openai index>"
        self._finish: str | None = None
        self._deltas = 0
        self.stop_reason: str | None = None
        self.final_usage: dict[str, Any] | None = None

    @property
    def stopped(self) -> bool:
        """A stop sequence was found: the rest of the engine's stream is not wanted."""
        return self.scanner.matched is not None

    def start(self) -> list[Event]:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage(None, self.input_estimate, 0),
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def feed(self, data: Mapping[str, Any]) -> list[Event]:
        events: list[Event] = []
        for choice in data.get("choices") or ():
            if choice.get("index", 0) != 0 or self.stopped:
                continue
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content") and self.thinking:
                events += self._delta("thinking", delta["reasoning_content"])
            if delta.get("content"):
                self._deltas += 1
                text = self.scanner.feed(delta["content"])
                if text:
                    events += self._delta("text", text)
            for call in delta.get("tool_calls") or ():
                events += self._tool_delta(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return events

    def finish(self, stats: EngineStats | None) -> list[Event]:
        """The closing events: the held-back text, block stops, ``message_delta`` with the
        stop reason and usage, ``message_stop``."""
        events: list[Event] = []
        if not self.stopped:
            rest = self.scanner.flush()
            if rest:
                events += self._delta("text", rest)
        events += self._close()
        tools = any(b["type"] == "tool_use" for b in self.blocks)
        self.stop_reason = _stop_reason(self._finish, self.scanner.matched, tools)
        self.final_usage = usage(None if self.stopped else stats, self.input_estimate, self._deltas)
        delta = {"stop_reason": self.stop_reason, "stop_sequence": self.scanner.matched}
        events.append(
            ("message_delta", {"type": "message_delta", "delta": delta, "usage": self.final_usage})
        )
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    def message(self) -> dict[str, Any]:
        """The whole reply as one Anthropic ``message`` (after :meth:`finish`)."""
        content = []
        for block in self.blocks:
            if block["type"] == "tool_use":
                block = {**block, "input": _tool_input(block.get("_json", ""))}
            content.append({k: v for k, v in block.items() if k != "_json"})
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason,
            "stop_sequence": self.scanner.matched,
            "usage": self.final_usage or usage(None, self.input_estimate, self._deltas),
        }

    # -- blocks

    def _begin(self, kind: str, block: dict[str, Any]) -> list[Event]:
        events = self._close()
        self._open = kind
        self.blocks.append(block)
        shown = {k: v for k, v in block.items() if k != "_json"}
        index = len(self.blocks) - 1
        return [
            *events,
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": shown},
            ),
        ]

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        events: list[Event] = []
        index = len(self.blocks) - 1
        if self._open == "thinking":
            events.append(self._block_delta({"type": "signature_delta", "signature": ""}))
        self._open = None
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        return events

    def _block_delta(self, delta: dict[str, Any]) -> Event:
        index = len(self.blocks) - 1
        body = {"type": "content_block_delta", "index": index, "delta": delta}
        return ("content_block_delta", body)

    def _delta(self, kind: str, text: str) -> list[Event]:
        events: list[Event] = []
        if self._open != kind:
            empty = (
                {"type": "text", "text": ""}
                if kind == "text"
                else {
                    "type": "thinking",
                    "thinking": "",
                    "signature": "",
                }
            )
            events += self._begin(kind, empty)
        block = self.blocks[-1]
        block[kind] += text
        name = "text_delta" if kind == "text" else "thinking_delta"
        events.append(self._block_delta({"type": name, kind: text}))
        return events

    def _tool_delta(self, call: Mapping[str, Any]) -> list[Event]:
        events: list[Event] = []
        key = f"tool:{call.get('index', 0)}"
        fn = call.get("function") or {}
        if self._open != key:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": call.get("id") or "toolu_" + uuid.uuid4().hex[:24],
                "name": fn.get("name") or "",
                "input": {},
                "_json": "",
            }
            events += self._begin(key, block)
        piece = fn.get("arguments") or ""
        if piece:
            self.blocks[-1]["_json"] += piece
            events.append(self._block_delta({"type": "input_json_delta", "partial_json": piece}))
        return events
