"""The run driver every chat-like API face uses: start, watch the client, stream or aggregate.

A route takes one :class:`Call` (``call: Call = CALL``): the request, autotune's headers read
the one way (:mod:`.headers`), and what the face needs of the running autotune. It builds its
pipeline input with :meth:`Call.chat` and an :class:`Answer` (its wire format for one run),
and hands both to :func:`drive` (:meth:`Call.drive`), which waits for the run to start while
watching the client (one that leaves frees its queue place, load or prefill: 499), sets
autotune's response headers (``X-Autotune-Plan``, ``X-Conversation-Id``), then streams the
answer's frames or awaits its whole body (still watching), answering a failure in the face's
own error shape.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from autotune.ground.errors import BackendError
from autotune.pipeline import ChatInput, ChatRun, Pipeline
from autotune.pipeline.running import Running
from autotune.runtime import Runtime
from autotune.server.headers import (
    AutotuneHeaders,
)

__all__ = [
    "CALL",
    "STREAM_RESPONSES",
    "Answer",
    "Call",
    "ClientGone",
    "EventAnswer",
    "close_run",
    "drive",
    "run_headers",
    "watching",
]

T = TypeVar("T")
#: Response headers of every stream: no caching, no proxy buffering.
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
#: What a streaming route documents (OpenAPI): an event stream, or one of these errors.
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {}}},
    **{status: {} for status in (400, 404, 413, 429)},
}


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


class EventAnswer(ABC):
    """An :class:`Answer` whose wire format is a sequence of events: a face gives the events,
    the frame of one, the frames of a failure once the headers are gone, and the whole body
    once the events have run out."""

    @abstractmethod
    def events(self) -> AsyncIterator[Any]:
        """The run's events, in the face's format."""

    @abstractmethod
    def frame(self, event: Any) -> bytes:
        """One event on the wire."""

    @abstractmethod
    def failed(self, exc: BackendError) -> list[bytes]:
        """What the stream says when the run fails after its headers were sent."""

    @abstractmethod
    def result(self) -> Any:
        """The whole reply, after every event."""

    async def frames(self) -> AsyncIterator[bytes]:
        try:
            async for event in self.events():
                yield self.frame(event)
        except BackendError as exc:
            for frame in self.failed(exc):
                yield frame

    async def whole(self) -> Any:
        async for _ in self.events():
            pass
        return self.result()


async def watching(
    work: Awaitable[T],
    request: Request,
    on_gone: Callable[[T], Awaitable[None]] | None = None,
    entry: Running | None = None,
) -> T:
    """Await ``work`` while watching the client: if it goes away, cancel the work (its queue
    place, its engine generation) and raise :class:`ClientGone`. A request stopped meanwhile
    (``entry``: its time limit, the operator, a shutdown) cancels the work and raises why."""
    task = asyncio.ensure_future(work)
    while True:
        done, _ = await asyncio.wait({task}, timeout=0.1)
        if done:
            return task.result()
        if entry is not None and entry.stopped is not None:
            await _cancel(task, on_gone)
            raise entry.stopped
        if await request.is_disconnected():
            task.cancel()
            try:
                result = await task
            except (asyncio.CancelledError, BackendError):
                raise ClientGone() from None
            if on_gone is not None:
                await on_gone(result)  # it finished just as the client left
            raise ClientGone()


async def _cancel(task: asyncio.Future[T], on_done: Callable[[T], Awaitable[None]] | None) -> None:
    """Cancel ``task`` and wait for it; what it finished with meanwhile goes to ``on_done``."""
    task.cancel()
    try:
        result = await task
    except (asyncio.CancelledError, BackendError):
        return
    if on_done is not None:
        await on_done(result)


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
    entry: Running | None = None,
) -> Response:
    """Start the run, then answer it: a stream of ``answer``'s frames, or its whole body.
    ``entry``: the request among those running (listed, stopped at its time limit, …),
    closed when the run finishes."""
    try:
        run = await watching(started, request, close_run, entry)
    except BaseException as exc:
        if entry is not None:
            entry.close()  # it never started (refused, stopped, the client left)
        if isinstance(exc, ClientGone):
            return Response(status_code=499)
        raise
    if entry is not None:
        entry.attach(run)  # closed when the run finishes
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
    headers["X-Autotune-Plan"] = run.plan.summary()  # what the run added: a runaway stopped, …
    return JSONResponse(body, headers=headers)


@dataclass(frozen=True)
class Call:
    """One request to an API face: the request, autotune's headers, the running autotune."""

    request: Request
    headers: AutotuneHeaders
    #: The pipeline inputs :meth:`chat` built (the model asked for is listed while it runs).
    inputs: list[ChatInput] = field(default_factory=list)

    @classmethod
    async def read(cls, request: Request) -> Call:
        """The dependency: autotune's headers read from the request, one way for every face
        (:meth:`AutotuneHeaders.of`; not as FastAPI header parameters, whose validation costs
        a request more than the reading)."""
        return cls(request, AutotuneHeaders.of(request.headers))

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.request.app.state.runtime
        return runtime

    @property
    def pipeline(self) -> Pipeline:
        pipeline: Pipeline = self.request.app.state.pipeline
        return pipeline

    @property
    def pass_unknown(self) -> bool:
        """AUTOTUNE_PASS_UNKNOWN_FIELDS: fields outside the API's schema go to the engine."""
        return bool(self.request.app.state.settings.pass_unknown_fields)

    def chat(
        self, messages: list[dict[str, Any]], model: str | None, params: dict[str, Any], **more: Any
    ) -> ChatInput:
        """A chat through the pipeline with what the headers ask for (see
        :meth:`AutotuneHeaders.chat`)."""
        inp = self.headers.chat(messages, model, params, **more)
        self.inputs.append(inp)
        return inp

    async def drive(
        self, started: Awaitable[ChatRun], answer: Callable[[ChatRun], Answer], **options: Any
    ) -> Response:
        """:func:`drive` this call's run (``options``: ``stream`` and the rest of its own),
        listed among the running requests until it finishes."""
        asked = self.inputs[-1].model if self.inputs else None
        model = asked or self.pipeline.settings.default_model
        entry = self.pipeline.running.open(self.request.url.path, model)
        return await drive(self.request, started, answer, entry=entry, **options)


#: ``call: Call = CALL`` in a route's signature.
CALL = Depends(Call.read)
