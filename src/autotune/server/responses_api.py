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
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from autotune.ground.errors import BackendError, InvalidRequest, storage_failure
from autotune.ground.ids import CONVERSATION_ID_RULE, is_conversation_id, new_conversation_id
from autotune.pipeline import ChatRun, Pipeline
from autotune.server.driver import CALL, STREAM_RESPONSES, Call, EventAnswer
from autotune.server.errors import ErrorShape, error_response
from autotune.server.headers import HEADER_DOCS
from autotune.server.responses_schema import ResponsesRequest
from autotune.server.responses_wire import ResponseStream, to_chat
from autotune.server.schemas import as_sent
from autotune.store.responses import ResponseStore

__all__ = ["ERRORS", "router"]

router = APIRouter()
#: OpenAI's error shape; fields named as the Responses API names them (``input[0].content``).
ERRORS = ErrorShape("OpenAI", paths=("/v1/responses",), brackets=True)
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


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
    if not isinstance(cid, str) or not is_conversation_id(cid):
        raise InvalidRequest(
            f"'conversation' must be a conversation id ({CONVERSATION_ID_RULE}).",
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


def _frame(event: dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + _dumps(event).encode() + b"\n\n"


class _Answer(EventAnswer):
    """A run as the Responses event stream, or one ``response``; a stored response is put
    on record before its closing events, so it can be resumed at once."""

    def __init__(
        self, run: ChatRun, stream: ResponseStream, responses: ResponseStore, store: bool
    ) -> None:
        self.run, self.stream, self.responses, self.store = run, stream, responses, store

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        run, stream = self.run, self.stream
        for event in stream.start():
            yield event
        async for chunk in run:
            for event in stream.feed(chunk.data):
                yield event
        closing = stream.finish(run.stats)
        if self.store and run.conversation_id:
            try:
                await asyncio.to_thread(
                    self.responses.put, stream.id, run.conversation_id, run.model, stream.response()
                )
            except (sqlite3.Error, OSError) as exc:
                raise storage_failure(exc, "The response") or exc from None
        for event in closing:
            yield event

    def frame(self, event: dict[str, Any]) -> bytes:
        return _frame(event)

    def failed(self, exc: BackendError) -> list[bytes]:
        return [_frame(event) for event in self.stream.failed(str(exc), exc.code)]

    def result(self) -> dict[str, Any]:
        return self.stream.response()


@router.post("/v1/responses", responses=STREAM_RESPONSES, openapi_extra=HEADER_DOCS)
async def create_response(body: ResponsesRequest, call: Call = CALL) -> Response:
    """A response through autotune's pipeline (OpenAI's Responses schema; SSE when ``stream``)."""
    raw = as_sent(body)
    parts = to_chat(raw, pass_unknown=call.pass_unknown)
    responses = _responses(call.request)
    store = bool(raw.get("store", True))
    pipeline = call.pipeline

    def answer(run: ChatRun) -> _Answer:
        stream = ResponseStream(
            raw,
            body.model or run.model,
            input_estimate=pipeline.tokens.count(run.model, run.request.messages),
            tools=parts.tools,
        )
        stream.conversation_id = run.conversation_id if store else None
        return _Answer(run, stream, responses, store)

    inp = call.chat(
        parts.messages,
        body.model,
        parts.params,
        conversation_id=await _conversation(raw, call.headers.conversation_id, responses),
        persist=store,
        overflow=call.headers.overflow or parts.overflow,
        source="responses",
        streamed=bool(body.stream),
        notes=parts.notes,
    )
    started = pipeline.start(inp)
    return await call.drive(started, answer, stream=bool(body.stream), conversation_header=store)


@router.get("/v1/responses/{response_id}", responses={404: {}})
async def retrieve_response(response_id: str, request: Request) -> Response:
    """A stored response, as it was answered."""
    stored = await asyncio.to_thread(_responses(request).get, response_id)
    if stored is None:
        return error_response(
            f"No response found with id {response_id!r}.", status=404, param="response_id"
        )
    return JSONResponse(stored.body)
