"""The run driver every chat-like API face uses: start, watch the client, stream or aggregate.

A face builds its pipeline input and an :class:`Answer` (its wire format for one run) and
hands both to :func:`drive`, which waits for the run to start while watching the client (one
that leaves frees its queue place, load or prefill: 499), sets autotune's response headers
(``X-Autotune-Plan``, ``X-Conversation-Id``), then streams the answer's frames or awaits its
whole body (still watching), answering a failure in the face's own error shape.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from autotune.ground.errors import BackendError
from autotune.pipeline import ChatRun

__all__ = ["Answer", "ClientGone", "close_run", "drive", "run_headers", "watching"]

T = TypeVar("T")
#: Response headers of every stream: no caching, no proxy buffering.
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ClientGone(Exception):
    """The client disconnected before its request started."""


class Answer(Protocol):
    """One run in a face's wire format."""

    def frames(self) -> AsyncIterator[bytes]:
        """The streamed reply, frame by frame (a failure after the headers is a frame too)."""
        ...

    async def whole(self) -> Any:
        """The reply as one JSON body, once the run has ended."""
        ...


async def watching(
    work: Awaitable[T], request: Request, on_gone: Callable[[T], Awaitable[None]] | None = None
) -> T:
    """Await ``work`` while watching the client: if it goes away, cancel the work (its queue
    place, its engine generation) and raise :class:`ClientGone`."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.1)
        if done:
            return task.result()
        if await request.is_disconnected():
            task.cancel()
            try:
                result = await task
            except (asyncio.CancelledError, BackendError):
                raise ClientGone() from None
            if on_gone is not None:
                await on_gone(result)  # it finished just as the client left
            raise ClientGone()


async def close_run(run: ChatRun) -> None:
    """For :func:`watching`: a run that started as its client left is closed at once."""
    await run.aclose()


def run_headers(run: ChatRun, *, conversation: bool = True) -> dict[str, str]:
    """``X-Autotune-Plan``, and ``X-Conversation-Id`` when the run has one (and
    ``conversation``: a face may keep it to itself, as a Responses request not stored)."""
    headers = {"X-Autotune-Plan": run.plan.summary()}
    if conversation and run.conversation_id:
        headers["X-Conversation-Id"] = run.conversation_id
    return headers


async def drive(
    request: Request,
    started: Awaitable[ChatRun],
    answer: Callable[[ChatRun], Answer],
    *,
    stream: bool,
    media_type: str = "text/event-stream",
    conversation_header: bool = True,
) -> Response:
    """Start the run, then answer it: a stream of ``answer``'s frames, or its whole body."""
    try:
        run = await watching(started, request, close_run)
    except ClientGone:
        return Response(status_code=499)
    reply = answer(run)
    headers = run_headers(run, conversation=conversation_header)
    if stream:
        return StreamingResponse(
            reply.frames(), media_type=media_type, headers={**headers, **_STREAM_HEADERS}
        )
    try:
        body = await watching(reply.whole(), request)
    except ClientGone:
        return Response(status_code=499)
    except BackendError as exc:
        shape = request.app.state.error_shapes.for_path(request.url.path)
        return shape.response(exc, headers)
    return JSONResponse(body, headers=headers)
