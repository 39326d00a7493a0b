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
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from autotune.ground.errors import BackendError, InvalidRequest
from autotune.ground.ids import CONVERSATION_ID_RULE, is_conversation_id, new_conversation_id
from autotune.pipeline import ChatInput, ChatRun, Pipeline
from autotune.server.driver import drive
from autotune.server.errors import ErrorShape, error_response
from autotune.server.headers import AutotuneHeaders
from autotune.server.responses_schema import ResponsesRequest
from autotune.server.responses_wire import ResponseStream, to_chat
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


class _Answer:
    """A run as the Responses event stream, or one ``response``; a stored response is put
    on record before its closing events, so it can be resumed at once."""

    def __init__(
        self, run: ChatRun, stream: ResponseStream, responses: ResponseStore, store: bool
    ) -> None:
        self.run, self.stream, self.responses, self.store = run, stream, responses, store

    async def _events(self) -> AsyncIterator[dict[str, Any]]:
        run, stream = self.run, self.stream
        for event in stream.start():
            yield event
        async for chunk in run:
            for event in stream.feed(chunk.data):
                yield event
        events = stream.finish(run.stats)
        if self.store and run.conversation_id:
            await asyncio.to_thread(
                self.responses.put, stream.id, run.conversation_id, run.model, stream.response()
            )
        for event in events:
            yield event

    async def frames(self) -> AsyncIterator[bytes]:
        try:
            async for event in self._events():
                yield _frame(event)
        except BackendError as exc:
            # Headers are gone already: report the failure as the Responses stream does.
            for event in self.stream.failed(str(exc), exc.code):
                yield _frame(event)

    async def whole(self) -> dict[str, Any]:
        async for _ in self._events():
            pass
        return self.stream.response()


@router.post(
    "/v1/responses",
    responses={200: {"content": {"text/event-stream": {}}}, 400: {}, 404: {}, 413: {}, 429: {}},
)
async def create_response(
    body: ResponsesRequest,
    request: Request,
    headers: AutotuneHeaders = Depends(AutotuneHeaders.read),
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
        profile=headers.profile,
        conversation_id=await _conversation(raw, headers.conversation_id, responses),
        persist=store,
        overflow=headers.overflow or parts.overflow,
        source="responses",
    )
    pipeline = _pipeline(request)

    def answer(run: ChatRun) -> _Answer:
        stream = ResponseStream(
            raw,
            body.model or run.model,
            input_estimate=pipeline.tokens.count(run.model, run.request.messages),
        )
        stream.conversation_id = run.conversation_id if store else None
        return _Answer(run, stream, responses, store)

    started = pipeline.start(inp)
    streaming = bool(body.stream)
    return await drive(request, started, answer, stream=streaming, conversation_header=store)


@router.get("/v1/responses/{response_id}", responses={404: {}})
async def retrieve_response(response_id: str, request: Request) -> Response:
    """A stored response, as it was answered."""
    stored = await asyncio.to_thread(_responses(request).get, response_id)
    if stored is None:
        return error_response(
            f"No response found with id {response_id!r}.", status=404, param="response_id"
        )
    return JSONResponse(stored.body)
