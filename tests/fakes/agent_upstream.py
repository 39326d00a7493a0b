"""A scripted model behind Anthropic's Messages API and OpenAI's Responses API, for recording
what the agents send after a tool call (``bench/agents.py``).

The tiny test models never choose a tool, so to record an agent's own tool-result turn this
upstream answers the agent's first request with a tool call (Claude Code: ``Read``; Codex:
``exec_command``) and the next one with text. The streamed events follow the two APIs' documented
streaming formats (Anthropic: ``message_start`` … ``message_stop`` with ``input_json_delta``;
Responses: ``response.created`` … ``response.completed`` with a ``function_call`` item). It is
never used to test autotune: only to make the real CLIs send their real follow-up requests.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["Say", "ScriptedUpstream", "UseTool"]


@dataclass(frozen=True)
class UseTool:
    """Answer with one call of ``name`` with ``arguments``."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class Say:
    """Answer with ``text``."""

    text: str


Step = UseTool | Say


def _sse(events: Iterable[tuple[str, dict[str, Any]]]) -> StreamingResponse:
    body = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)
    return StreamingResponse(iter([body.encode()]), media_type="text/event-stream")


def _anthropic_events(model: str, step: Step) -> list[tuple[str, dict[str, Any]]]:
    usage = {"input_tokens": 10, "output_tokens": 0}
    message = {
        "id": "msg_" + uuid.uuid4().hex,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    if isinstance(step, UseTool):
        block = {"type": "tool_use", "id": "toolu_" + uuid.uuid4().hex[:24], "name": step.name}
        start = {**block, "input": {}}
        delta = {"type": "input_json_delta", "partial_json": json.dumps(step.arguments)}
        stop = "tool_use"
    else:
        start = {"type": "text", "text": ""}
        delta = {"type": "text_delta", "text": step.text}
        stop = "end_turn"
    return [
        ("message_start", {"type": "message_start", "message": message}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": start},
        ),
        ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 5},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def _message(events: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """The non-streamed message the events describe."""
    data = dict(events)
    block = dict(data["content_block_start"]["content_block"])
    delta = data["content_block_delta"]["delta"]
    if block["type"] == "tool_use":
        block["input"] = json.loads(delta["partial_json"])
    else:
        block["text"] = delta["text"]
    stop = data["message_delta"]["delta"]["stop_reason"]
    return {**data["message_start"]["message"], "content": [block], "stop_reason": stop}


def _responses_item(step: Step) -> dict[str, Any]:
    if isinstance(step, UseTool):
        return {
            "type": "function_call",
            "id": "fc_" + uuid.uuid4().hex,
            "call_id": "call_" + uuid.uuid4().hex[:24],
            "name": step.name,
            "arguments": json.dumps(step.arguments),
            "status": "completed",
        }
    return {
        "type": "message",
        "id": "msg_" + uuid.uuid4().hex,
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": step.text, "annotations": []}],
    }


def _responses_events(model: str, step: Step) -> list[tuple[str, dict[str, Any]]]:
    item = _responses_item(step)
    response = {
        "id": "resp_" + uuid.uuid4().hex,
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "model": model,
        "output": [],
    }
    usage = {
        "input_tokens": 10,
        "output_tokens": 5,
        "total_tokens": 15,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": 0},
    }
    done = {**response, "status": "completed", "output": [item], "usage": usage}
    events = [
        ("response.created", {"type": "response.created", "response": response}),
        (
            "response.output_item.added",
            {"type": "response.output_item.added", "output_index": 0, "item": item},
        ),
        (
            "response.output_item.done",
            {"type": "response.output_item.done", "output_index": 0, "item": item},
        ),
        ("response.completed", {"type": "response.completed", "response": done}),
    ]
    for n, (_, data) in enumerate(events):
        data["sequence_number"] = n
    return events


class ScriptedUpstream:
    """``ScriptedUpstream([UseTool(...), Say(...)]).app``: each model request takes the next
    step (the last one repeats); every request is answered, none is recorded here."""

    def __init__(self, steps: Iterable[Step]) -> None:
        self._steps: deque[Step] = deque(steps)
        self.app = Starlette(
            routes=[Route("/{path:path}", self._route, methods=["GET", "POST", "HEAD"])]
        )

    def _next(self) -> Step:
        return self._steps.popleft() if len(self._steps) > 1 else self._steps[0]

    async def _route(self, request: Request) -> Response:
        path = request.url.path
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        if path.endswith("/messages/count_tokens"):
            return JSONResponse({"input_tokens": 10})
        if path.endswith("/messages"):
            events = _anthropic_events(body.get("model", ""), self._next())
            return _sse(events) if body.get("stream") else JSONResponse(_message(events))
        if path.endswith("/responses"):
            return _sse(_responses_events(body.get("model", ""), self._next()))
        if path.endswith("/models"):
            return JSONResponse({"object": "list", "data": []})
        return JSONResponse({"error": "not found"}, status_code=404)
