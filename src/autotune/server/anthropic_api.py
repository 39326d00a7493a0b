"""Anthropic's Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

What Claude Code and other agents speak with ``ANTHROPIC_BASE_URL`` pointed at autotune.
A thin face: :mod:`autotune.server.anthropic_wire` translates, :meth:`Pipeline.start` runs
the request exactly as a chat completion (admission, plan, context window, conversation
store through ``X-Conversation-Id``, telemetry, ``X-Autotune-Plan``). Errors are answered in
Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}``, on every path under
``/v1/messages`` (:data:`ERRORS`), those raised before a route included.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from autotune.ground.errors import BackendError
from autotune.pipeline import ChatRun, Pipeline
from autotune.pipeline.count import count_tokens
from autotune.server.anthropic_schema import CountTokensRequest, MessagesRequest
from autotune.server.anthropic_stream import Event, EventStream
from autotune.server.anthropic_wire import error_body, to_chat
from autotune.server.driver import CALL, STREAM_RESPONSES, Call, EventAnswer
from autotune.server.errors import ErrorShape
from autotune.server.headers import HEADER_DOCS
from autotune.server.schemas import as_sent

__all__ = ["ERRORS", "router"]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _error(exc: BackendError) -> dict[str, Any]:
    return error_body(str(exc), exc.status if exc.status >= 400 else 502)


#: Anthropic's error shape, for every path of this API.
ERRORS = ErrorShape("Anthropic", _error, paths=("/v1/messages",), brackets=True)

router = APIRouter()


def _pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


def _sse(event: Event) -> bytes:
    return b"event: " + event[0].encode() + b"\ndata: " + _dumps(event[1]).encode() + b"\n\n"


class _Answer(EventAnswer):
    """A run as Anthropic's event stream, or one ``message``."""

    def __init__(self, run: ChatRun, stream: EventStream) -> None:
        self.run, self.stream = run, stream

    async def events(self) -> AsyncIterator[Event]:
        """The run's chunks as Anthropic events; stops the engine at a stop sequence."""
        run, stream = self.run, self.stream
        for event in stream.start():
            yield event
        chunks = run.__aiter__()
        try:
            async for chunk in chunks:
                for event in stream.feed(chunk.data):
                    yield event
                if stream.stopped:
                    await run.stop_early(stream.scanner.emitted)
                    break
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]
        for event in stream.finish(run.stats):
            yield event

    def frame(self, event: Event) -> bytes:
        return _sse(event)

    def failed(self, exc: BackendError) -> list[bytes]:
        return [_sse(("error", _error(exc)))]  # as Anthropic streams report a failure

    def result(self) -> dict[str, Any]:
        return self.stream.message()


@router.post("/v1/messages", responses=STREAM_RESPONSES, openapi_extra=HEADER_DOCS)
async def create_message(body: MessagesRequest, call: Call = CALL) -> Response:
    """A message through autotune's pipeline (Anthropic's schema; SSE when ``stream``)."""
    parts = to_chat(as_sent(body), pass_unknown=call.pass_unknown)
    pipeline = call.pipeline

    def answer(run: ChatRun) -> _Answer:
        stream = EventStream(
            body.model,
            input_estimate=pipeline.tokens.count(run.model, run.request.messages),
            stop_sequences=parts.stop_sequences,
            thinking=parts.thinking,
        )
        return _Answer(run, stream)

    inp = call.chat(
        parts.messages,
        body.model,
        parts.params,
        source="anthropic",
        streamed=bool(body.stream),
        notes=parts.notes,
        cap_max_tokens=True,  # a required field: agents send their own model's maximum
    )
    return await call.drive(pipeline.start(inp), answer, stream=bool(body.stream))


@router.post("/v1/messages/count_tokens", responses={400: {}, 404: {}})
async def count_message_tokens(body: CountTokensRequest, call: Call = CALL) -> dict[str, Any]:
    """Prompt tokens of a Messages request on its model, counted as the planner counts: by the
    engine's tokenizer when the model is loaded, else by the calibrated estimate (which
    leans high); a model is never loaded just to count. Tool definitions count as text."""
    parts = to_chat(as_sent(body), pass_unknown=call.pass_unknown)
    messages = list(parts.messages)
    if parts.params.get("tools"):
        messages.append({"role": "system", "content": json.dumps(parts.params["tools"])})
    counted = await count_tokens(call.pipeline, body.model, messages)
    return {"input_tokens": counted.tokens}
