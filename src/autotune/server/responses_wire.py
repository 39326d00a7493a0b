"""Pure translation between OpenAI's Responses API and the chat shapes the pipeline runs.

In: ``input`` (a string, or items: messages with ``input_text`` / ``input_image`` /
``output_text`` parts, ``function_call`` and ``function_call_output``), ``instructions``,
function tools and the other fields of :data:`FIELDS` become chat messages and parameters;
built-in tools (web search, file search, computer use …) are refused with a 400 naming
them. Out: the engine's chunks become a ``response`` object, or the Responses event stream
(``response.created``, ``response.output_item.added``, ``response.output_text.delta``,
``response.function_call_arguments.delta`` … ``response.completed``), with usage in the
Responses' terms (``input_tokens_details.cached_tokens`` from the engine's cache).
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autotune.ground.decision import Decision
from autotune.ground.types import EngineStats
from autotune.server.fields import RESPONSES, accepted_note, check_fields
from autotune.server.responses_tools import Tools, translate_tools
from autotune.server.wire_kit import bad as _bad
from autotune.server.wire_kit import (
    call_piece,
    deltas,
    system_prompt,
    token_counts,
)

__all__ = [
    "FIELDS",
    "ChatParts",
    "ResponseStream",
    "new_response_id",
    "to_chat",
    "usage",
]

Event = dict[str, Any]

#: What happens to each top-level field (see :mod:`autotune.server.fields`).
FIELDS = RESPONSES

_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}
_TEXT_PARTS = ("input_text", "output_text", "text")


def new_response_id() -> str:
    return "resp_" + uuid.uuid4().hex


@dataclass
class ChatParts:
    """A Responses request in the pipeline's terms."""

    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    overflow: str = "refuse"
    #: The tools as the engine has them (a call to a namespaced one is named back).
    tools: Tools = field(default_factory=Tools)
    #: What the plan should say about the translation (fields accepted, tools dropped).
    notes: list[Decision] = field(default_factory=list)


def _part(part: Any, where: str) -> dict[str, Any]:
    if not isinstance(part, Mapping):
        raise _bad(f"{where} must be an object.", where)
    kind = part.get("type")
    if kind in _TEXT_PARTS or kind == "refusal":
        text = part.get("text", part.get("refusal"))
        if not isinstance(text, str):
            raise _bad(f"{where}.text must be a string.", f"{where}.text")
        return {"type": "text", "text": text}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            raise _bad(f"{where}: only images given by image_url are supported here.", where)
        return {"type": "image_url", "image_url": {"url": url}}
    raise _bad(
        f"{where}: content parts of type {kind!r} are not supported here "
        "(supported: input_text, output_text, input_image).",
        f"{where}.type",
    )


def _content(content: Any, where: str) -> Any:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad(f"{where} must be a string or a list of content parts.", where)
    parts = [_part(p, f"{where}[{i}]") for i, p in enumerate(content)]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _text(value: Any, where: str) -> str:
    content = _content(value, where)
    if not isinstance(content, str):
        raise _bad(f"{where} must be text.", where)
    return content


def _function_call(
    item: Mapping[str, Any], where: str, out: list[dict[str, Any]], tools: Tools
) -> None:
    for key in ("call_id", "name", "arguments"):
        if not isinstance(item.get(key), str):
            raise _bad(f"{where}.{key} must be a string.", f"{where}.{key}")
    name = tools.engine_name(item["name"], item.get("namespace"))
    call = {
        "id": item["call_id"],
        "type": "function",
        "function": {"name": name, "arguments": item["arguments"]},
    }
    last = out[-1] if out else None
    if last is not None and last["role"] == "assistant" and "tool_calls" not in last:
        last["tool_calls"] = [call]  # the text and the calls of one assistant turn
    elif last is not None and last["role"] == "assistant" and last.get("tool_calls"):
        last["tool_calls"].append(call)  # parallel calls
    else:
        out.append({"role": "assistant", "content": None, "tool_calls": [call]})


def _item(item: Any, where: str, out: list[dict[str, Any]], tools: Tools) -> None:
    if not isinstance(item, Mapping):
        raise _bad(f"{where} must be an object.", where)
    kind = item.get("type", "message")
    if kind == "message":
        role = _ROLES.get(str(item.get("role")))
        if role is None:
            raise _bad(f"{where}.role must be user, system, developer or assistant.", where)
        out.append({"role": role, "content": _content(item.get("content"), f"{where}.content")})
    elif kind == "function_call":
        _function_call(item, where, out, tools)
    elif kind == "function_call_output":
        call_id = item.get("call_id")
        if not isinstance(call_id, str):
            raise _bad(f"{where}.call_id must be a string.", f"{where}.call_id")
        output = _text(item.get("output"), f"{where}.output")
        out.append({"role": "tool", "tool_call_id": call_id, "content": output})
    elif kind == "reasoning":
        return  # a previous turn's reasoning: not part of the next prompt
    else:
        raise _bad(
            f"{where}: input items of type {kind!r} are not supported here (supported: "
            "message, function_call, function_call_output).",
            f"{where}.type",
        )


def to_messages(instructions: Any, items: Any, tools: Tools | None = None) -> list[dict[str, Any]]:
    """``instructions`` and ``input`` as chat messages (calls named as ``tools`` has them)."""
    tools = tools or Tools()
    out = system_prompt(_text(instructions, "instructions") if instructions is not None else None)
    if isinstance(items, str):
        out.append({"role": "user", "content": items})
    elif isinstance(items, list):
        for i, item in enumerate(items):
            _item(item, f"input[{i}]", out, tools)
    else:
        raise _bad("'input' must be a string or a list of input items.", "input")
    if not any(m["role"] != "system" for m in out):
        raise _bad("'input' must hold at least one message or item.", "input")
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        if not isinstance(choice.get("name"), str):
            raise _bad("tool_choice.name must be a string.", "tool_choice")
        return {"type": "function", "function": {"name": choice["name"]}}
    raise _bad("'tool_choice' must be auto, none, required or a function.", "tool_choice")


def _text_format(text: Any, params: dict[str, Any]) -> None:
    if not isinstance(text, Mapping):
        raise _bad("'text' must be an object.", "text")
    fmt = text.get("format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, Mapping) else None
    if kind == "json_object":
        params["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        if not isinstance(fmt.get("schema"), Mapping):
            raise _bad("text.format.schema must be a JSON schema object.", "text.format")
        schema = {"name": fmt.get("name") or "output", "schema": fmt["schema"]}
        if fmt.get("strict") is not None:
            schema["strict"] = fmt["strict"]
        params["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif kind != "text":
        raise _bad("text.format.type must be text, json_object or json_schema.", "text.format")


def to_chat(body: Mapping[str, Any], *, pass_unknown: bool = False) -> ChatParts:
    """A Responses request (as sent, no ``None`` values) in the pipeline's terms; raises
    :class:`InvalidRequest` naming what it cannot honour."""
    params = check_fields(
        body, table=FIELDS, pass_unknown=pass_unknown, extensions=False, forwarded=False
    )
    notes = accepted_note(body, FIELDS)
    tools = translate_tools(body["tools"]) if body.get("tools") else Tools()
    notes += tools.notes()
    messages = to_messages(body.get("instructions"), body.get("input"), tools)
    if body.get("max_output_tokens") is not None:
        params["max_tokens"] = body["max_output_tokens"]
    for name in ("temperature", "top_p", "parallel_tool_calls"):
        if body.get(name) is not None:
            params[name] = body[name]
    if tools.functions:
        params["tools"] = tools.functions
    if body.get("tool_choice") is not None:
        params["tool_choice"] = _tool_choice(body["tool_choice"])
        if params["tool_choice"] not in ("auto", "none") and not params.get("tools"):
            raise _bad("'tool_choice' asks for a tool, but the request has no 'tools'.", "tools")
    if body.get("text") is not None:
        _text_format(body["text"], params)
    reasoning = body.get("reasoning")
    if isinstance(reasoning, Mapping) and reasoning.get("effort") is not None:
        params["reasoning_effort"] = reasoning["effort"]
    truncation = body.get("truncation", "disabled")
    if truncation not in ("auto", "disabled"):
        raise _bad("'truncation' must be auto or disabled.", "truncation")
    overflow = "truncate-oldest" if truncation == "auto" else "refuse"
    return ChatParts(messages, params, overflow, tools, notes)


# ---------------------------------------------------------------------- reply → Responses


def usage(stats: EngineStats | None, estimate: int = 0, output: int = 0) -> dict[str, Any]:
    """Responses usage from the engine's counters (estimates when it gave none). The engine
    keeps every prompt it computed in its cache: those tokens are the cache writes."""
    prompt, cached, completion = token_counts(stats, estimate, output)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": cached,
            "cache_write_tokens": max(0, prompt - cached),
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


class ResponseStream:
    """Turns the engine's chat chunks into Responses events, keeping the output items so
    :meth:`response` answers a non-streaming request with the same content."""

    def __init__(
        self,
        request: Mapping[str, Any],
        model: str,
        *,
        input_estimate: int = 0,
        tools: Tools | None = None,
    ) -> None:
        self.id = new_response_id()
        self.tools = tools or Tools()
        self.created_at = int(time.time())
        self.request = request
        self.model = model
        self.input_estimate = input_estimate
        self.output: list[dict[str, Any]] = []
        self.status = "in_progress"
        self.usage: dict[str, Any] | None = None
        self.incomplete: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.conversation_id: str | None = None
        self._sequence = 0
        self._open: str | None = None  # "text" or "call:<index>"
        self._deltas = 0
        self._finish: str | None = None

    # -- the response object

    def response(self) -> dict[str, Any]:
        req = self.request
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self.status,
            "model": self.model,
            "output": self.output,
            "parallel_tool_calls": req.get("parallel_tool_calls", True),
            "tool_choice": req.get("tool_choice", "auto"),
            "tools": req.get("tools", []),
            "instructions": req.get("instructions"),
            "previous_response_id": req.get("previous_response_id"),
            "max_output_tokens": req.get("max_output_tokens"),
            "temperature": req.get("temperature"),
            "top_p": req.get("top_p"),
            "text": req.get("text", {"format": {"type": "text"}}),
            "truncation": req.get("truncation", "disabled"),
            "metadata": req.get("metadata", {}),
            "store": req.get("store", True),
            "error": self.error,
            "incomplete_details": self.incomplete,
            "usage": self.usage,
        }
        if self.conversation_id:
            body["conversation"] = {"id": self.conversation_id}
        if self.status == "completed":
            body["completed_at"] = int(time.time())
        return body

    # -- events

    def _event(self, kind: str, **data: Any) -> Event:
        # Copied: the items keep growing after their event is out.
        event = {"type": kind, "sequence_number": self._sequence, **copy.deepcopy(data)}
        self._sequence += 1
        return event

    def start(self) -> list[Event]:
        return [
            self._event("response.created", response=self.response()),
            self._event("response.in_progress", response=self.response()),
        ]

    def feed(self, data: Mapping[str, Any]) -> list[Event]:
        events: list[Event] = []
        for delta, finish in deltas(data):
            if delta.get("content"):
                self._deltas += 1
                events += self._text(delta["content"])
            events += [e for call in delta.get("tool_calls") or () for e in self._call(call)]
            self._finish = finish or self._finish
        return events

    def finish(self, stats: EngineStats | None) -> list[Event]:
        events = self._close()
        self.usage = usage(stats, self.input_estimate, self._deltas)
        if self._finish == "length":
            self.status = "incomplete"
            self.incomplete = {"reason": "max_output_tokens"}
            events.append(self._event("response.incomplete", response=self.response()))
        else:
            self.status = "completed"
            events.append(self._event("response.completed", response=self.response()))
        return events

    def failed(self, message: str, code: str | None) -> list[Event]:
        self.status = "failed"
        self.error = {"code": code or "server_error", "message": message}
        return [
            self._event("error", code=code, message=message, param=None),
            self._event("response.failed", response=self.response()),
        ]

    # -- items

    def _item_added(self, item: dict[str, Any]) -> Event:
        self.output.append(item)
        return self._event(
            "response.output_item.added", output_index=len(self.output) - 1, item=item
        )

    def _text(self, text: str) -> list[Event]:
        events: list[Event] = []
        if self._open != "text":
            events += self._close()
            self._open = "text"
            item: dict[str, Any] = {
                "type": "message",
                "id": "msg_" + uuid.uuid4().hex,
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            events.append(self._item_added(item))
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item["content"].append(part)
            events.append(
                self._event(
                    "response.content_part.added",
                    item_id=item["id"],
                    output_index=len(self.output) - 1,
                    content_index=0,
                    part=dict(part),
                )
            )
        item = self.output[-1]
        item["content"][0]["text"] += text
        events.append(
            self._event(
                "response.output_text.delta",
                item_id=item["id"],
                output_index=len(self.output) - 1,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return events

    def _call(self, call: Mapping[str, Any]) -> list[Event]:
        piece = call_piece(call)
        events: list[Event] = []
        if self._open != f"call:{piece.index}":
            events += self._close()
            self._open = f"call:{piece.index}"
            name, namespace = self.tools.client_name(piece.name or "")
            opened = {
                "type": "function_call",
                "id": "fc_" + uuid.uuid4().hex,
                "call_id": piece.id or "call_" + uuid.uuid4().hex[:24],
                "name": name,
                "arguments": "",
                "status": "in_progress",
            }
            if namespace is not None:
                opened["namespace"] = namespace  # as the client named the function
            events.append(self._item_added(opened))
        if piece.arguments:
            item = self.output[-1]
            item["arguments"] += piece.arguments
            events.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=len(self.output) - 1,
                    delta=piece.arguments,
                )
            )
        return events

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        item, index = self.output[-1], len(self.output) - 1
        events: list[Event] = []
        if item["type"] == "message":
            part = item["content"][0]
            events.append(
                self._event(
                    "response.output_text.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    text=part["text"],
                    logprobs=[],
                )
            )
            events.append(
                self._event(
                    "response.content_part.done",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    part=dict(part),
                )
            )
        else:
            events.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
        item["status"] = "completed"
        events.append(self._event("response.output_item.done", output_index=index, item=dict(item)))
        self._open = None
        return events
