"""Anthropic's Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

What Claude Code and other agents speak with ``ANTHROPIC_BASE_URL`` pointed at autotune.
A thin face: :mod:`autotune.server.anthropic_wire` translates, :meth:`Pipeline.start` runs
the request exactly as a chat completion (admission, plan, context window, conversation
store through ``X-Conversation-Id``, telemetry, ``X-Autotune-Plan``). Errors are answered in
Anthropic's shape, ``{"type": "error", "error": {"type", "message"}}``, by this router's own
route class (the app's global handlers answer in OpenAI's shape).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from autotune.ground.errors import BackendError
from autotune.pipeline import ChatInput, ChatRun, Pipeline
from autotune.pipeline.count import count_tokens
from autotune.server.anthropic_wire import Event, EventStream, error_body, to_chat
from autotune.server.shapes import ClientGone, close_run, shaped_route, watching

__all__ = ["AnthropicRoute", "anthropic_error", "router"]

_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def anthropic_error(
    message: str, status: int, headers: Mapping[str, str] | None = None, _: Any = None
) -> JSONResponse:
    """An error response in Anthropic's shape with a real status."""
    return JSONResponse(
        error_body(message, status), status_code=status, headers=dict(headers or {}) or None
    )


#: Answers this router's errors in Anthropic's shape.
AnthropicRoute = shaped_route(anthropic_error, "AnthropicRoute")


router = APIRouter(route_class=AnthropicRoute)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class MessageParam(_Open):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class TextBlockParam(_Open):
    type: Literal["text"]
    text: str


class ToolParam(_Open):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class CountTokensRequest(_Open):
    """``POST /v1/messages/count_tokens``."""

    model: str = Field(min_length=1, max_length=512)
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlockParam] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``; every other field is checked by anthropic_wire.FIELDS."""

    max_tokens: int = Field(ge=1)
    stream: bool | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    metadata: dict[str, Any] | None = None


def _pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


def _sse(event: Event) -> bytes:
    return b"event: " + event[0].encode() + b"\ndata: " + _dumps(event[1]).encode() + b"\n\n"


async def _events(run: ChatRun, stream: EventStream) -> AsyncIterator[Event]:
    """The run's chunks as Anthropic events; stops the engine at a stop sequence."""
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


async def _stream(run: ChatRun, stream: EventStream) -> AsyncIterator[bytes]:
    try:
        async for event in _events(run, stream):
            yield _sse(event)
    except BackendError as exc:
        # Headers are gone already: report the failure as Anthropic streams do.
        yield _sse(("error", error_body(str(exc), exc.status)))


async def _collect(run: ChatRun, stream: EventStream) -> dict[str, Any]:
    async for _ in _events(run, stream):
        pass
    return stream.message()


@router.post(
    "/v1/messages",
    responses={200: {"content": {"text/event-stream": {}}}, 400: {}, 404: {}, 413: {}, 429: {}},
)
async def create_message(
    body: MessagesRequest,
    request: Request,
    x_autotune_profile: Literal["fast", "balanced", "quality"] | None = Header(
        None, description="Tuning profile for this request (default: the server's)."
    ),
    x_conversation_id: str | None = Header(
        None, max_length=128, description="Store and resume this conversation."
    ),
    x_autotune_overflow: Literal["refuse", "truncate-oldest"] | None = Header(
        None, description="When the newest message cannot fit: refuse (400) or cut its start."
    ),
) -> Response:
    """A message through autotune's pipeline (Anthropic's schema; SSE when ``stream``)."""
    settings = request.app.state.settings
    raw = body.model_dump(exclude_unset=True, exclude_none=True)
    parts = to_chat(raw, pass_unknown=settings.pass_unknown_fields)
    inp = ChatInput(
        messages=parts.messages,
        model=body.model,
        params=parts.params,
        profile=x_autotune_profile,
        conversation_id=x_conversation_id,
        overflow=x_autotune_overflow,
        source="anthropic",
    )
    pipeline = _pipeline(request)
    try:
        run = await watching(pipeline.start(inp), request, close_run)
    except ClientGone:
        return Response(status_code=499)
    stream = EventStream(
        body.model,
        input_estimate=pipeline.tokens.count(run.model, run.request.messages),
        stop_sequences=parts.stop_sequences,
        thinking=parts.thinking,
    )
    headers = {"X-Autotune-Plan": run.plan.summary()}
    if run.conversation_id:
        headers["X-Conversation-Id"] = run.conversation_id
    if body.stream:
        return StreamingResponse(
            _stream(run, stream),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        message = await watching(_collect(run, stream), request)
    except ClientGone:
        return Response(status_code=499)
    except BackendError as exc:
        return anthropic_error(str(exc), exc.status if exc.status >= 400 else 502, headers)
    return JSONResponse(message, headers=headers)


@router.post("/v1/messages/count_tokens", responses={400: {}, 404: {}})
async def count_message_tokens(body: CountTokensRequest, request: Request) -> dict[str, Any]:
    """Prompt tokens of a Messages request on its model, counted as the planner counts: by the
    engine's tokenizer when the model is loaded, else by the calibrated estimate (which
    leans high); a model is never loaded just to count. Tool definitions count as text."""
    settings = request.app.state.settings
    raw = body.model_dump(exclude_unset=True, exclude_none=True)
    parts = to_chat(raw, pass_unknown=settings.pass_unknown_fields)
    messages = list(parts.messages)
    if parts.params.get("tools"):
        messages.append({"role": "system", "content": json.dumps(parts.params["tools"])})
    counted = await count_tokens(_pipeline(request), body.model, messages)
    return {"input_tokens": counted.tokens}
