"""OpenAI's Responses API: ``POST /v1/responses`` and ``GET /v1/responses/{id}``.

What Codex CLI speaks. A thin face: :mod:`autotune.server.responses_wire` translates and
:meth:`Pipeline.start` runs the request as it runs a chat completion. A stored response
(``store``, the default) keeps its turn in an autotune conversation and its id in the
``responses`` table, so a next request with ``previous_response_id`` sends only its new
input: the history comes from the store, and the engine's prompt cache holds its prefix.
Errors are OpenAI's ``{"error": {...}}`` bodies, from the app's handlers.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from autotune.ground.errors import BackendError, InvalidRequest
from autotune.pipeline import ChatInput, ChatRun, Pipeline
from autotune.server.errors import error_body, error_response
from autotune.server.responses_wire import ResponseStream, to_chat
from autotune.server.shapes import ClientGone, close_run, watching
from autotune.store.conversations import new_conversation_id
from autotune.store.responses import ResponseStore

__all__ = ["router"]

router = APIRouter()
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_CONVERSATION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class ResponsesRequest(BaseModel):
    """``POST /v1/responses``; every other field is checked by responses_wire.FIELDS."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, min_length=1, max_length=512)
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    stream: bool | None = None
    store: bool | None = None
    previous_response_id: str | None = Field(None, min_length=1, max_length=128)
    conversation: str | dict[str, Any] | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None


def _pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


def _responses(request: Request) -> ResponseStore:
    store = getattr(request.app.state, "responses", None)
    if store is None:
        store = request.app.state.responses = ResponseStore(request.app.state.db)
    return store


def _conversation_param(value: Any) -> str | None:
    if value is None:
        return None
    cid = value.get("id") if isinstance(value, dict) else value
    if not isinstance(cid, str) or not _CONVERSATION_ID.match(cid):
        raise InvalidRequest(
            "'conversation' must be a conversation id (letters, digits, _.:-, at most 128).",
            param="conversation",
        )
    return cid


async def _conversation(
    raw: dict[str, Any], header: str | None, responses: ResponseStore
) -> str | None:
    """The conversation this request continues: previous_response_id's, the ``conversation``
    field's, X-Conversation-Id's, or a new one when the response is stored."""
    given = _conversation_param(raw.get("conversation")) or header
    previous = raw.get("previous_response_id")
    if previous is not None:
        if given:
            raise InvalidRequest(
                "previous_response_id cannot be combined with a conversation; send one of them.",
                param="previous_response_id",
            )
        resumed = await asyncio.to_thread(responses.resume, previous)
        if resumed is None:
            raise InvalidRequest(
                f"Previous response with id {previous!r} not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return resumed
    if given:
        return given
    return new_conversation_id() if raw.get("store", True) else None


async def _finish(
    run: ChatRun, stream: ResponseStream, responses: ResponseStore, store: bool
) -> list[dict[str, Any]]:
    """The closing events, once the response is on record (so it can be resumed at once)."""
    events = stream.finish(run.stats)
    if store and run.conversation_id:
        await asyncio.to_thread(
            responses.put, stream.id, run.conversation_id, run.model, stream.response()
        )
    return events


async def _events(
    run: ChatRun, stream: ResponseStream, responses: ResponseStore, store: bool
) -> AsyncIterator[dict[str, Any]]:
    for event in stream.start():
        yield event
    async for chunk in run:
        for event in stream.feed(chunk.data):
            yield event
    for event in await _finish(run, stream, responses, store):
        yield event


def _frame(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + _dumps(event).encode() + b"\n\n"


async def _sse(
    run: ChatRun, stream: ResponseStream, responses: ResponseStore, store: bool
) -> AsyncIterator[bytes]:
    try:
        async for event in _events(run, stream, responses, store):
            yield _frame(event)
    except BackendError as exc:
        # Headers are gone already: report the failure as the Responses stream does.
        for event in stream.failed(str(exc), exc.code):
            yield _frame(event)


async def _collect(
    run: ChatRun, stream: ResponseStream, responses: ResponseStore, store: bool
) -> dict[str, Any]:
    async for _ in _events(run, stream, responses, store):
        pass
    return stream.response()


@router.post(
    "/v1/responses",
    responses={200: {"content": {"text/event-stream": {}}}, 400: {}, 404: {}, 413: {}, 429: {}},
)
async def create_response(
    body: ResponsesRequest,
    request: Request,
    x_autotune_profile: Literal["fast", "balanced", "quality"] | None = Header(
        None, description="Tuning profile for this request (default: the server's)."
    ),
    x_conversation_id: str | None = Header(
        None, max_length=128, description="Store and resume this conversation."
    ),
) -> Response:
    """A response through autotune's pipeline (OpenAI's Responses schema; SSE when ``stream``)."""
    settings = request.app.state.settings
    raw = body.model_dump(exclude_unset=True, exclude_none=True)
    parts = to_chat(raw, pass_unknown=settings.pass_unknown_fields)
    responses = _responses(request)
    store = bool(raw.get("store", True))
    inp = ChatInput(
        messages=parts.messages,
        model=body.model,
        params=parts.params,
        profile=x_autotune_profile,
        conversation_id=await _conversation(raw, x_conversation_id, responses),
        persist=store,
        overflow=parts.overflow,
        source="responses",
    )
    pipeline = _pipeline(request)
    try:
        run = await watching(pipeline.start(inp), request, close_run)
    except ClientGone:
        return Response(status_code=499)
    stream = ResponseStream(
        raw,
        body.model or run.model,
        input_estimate=pipeline.tokens.count(run.model, run.request.messages),
    )
    stream.conversation_id = run.conversation_id if store else None
    headers = {"X-Autotune-Plan": run.plan.summary()}
    if run.conversation_id and store:
        headers["X-Conversation-Id"] = run.conversation_id
    if body.stream:
        return StreamingResponse(
            _sse(run, stream, responses, store),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        answer = await watching(_collect(run, stream, responses, store), request)
    except ClientGone:
        return Response(status_code=499)
    except BackendError as exc:
        status = exc.status if exc.status >= 400 else 502
        return JSONResponse(error_body(str(exc), status=status, code=exc.code), status, headers)
    return JSONResponse(answer, headers=headers)


@router.get("/v1/responses/{response_id}", responses={404: {}})
async def retrieve_response(response_id: str, request: Request) -> Response:
    """A stored response, as it was answered."""
    stored = await asyncio.to_thread(_responses(request).get, response_id)
    if stored is None:
        return error_response(
            f"No response found with id {response_id!r}.", status=404, param="response_id"
        )
    return JSONResponse(stored.body)
