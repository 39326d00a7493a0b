"""What every API face shares: errors answered in the face's own shape, and a client that leaves.

FastAPI's exception handlers are global and answer in OpenAI's shape; a face whose clients
expect another shape (Anthropic's, Ollama's) builds its router on :func:`shaped_route`, which
catches the same errors inside that router's routes. :func:`watching` awaits a request's
start (its queue place, a load, a prefill) while watching the client: one that leaves
cancels the work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from autotune.ground.errors import BackendError
from autotune.pipeline import ChatRun
from autotune.server.errors import validation_message

__all__ = ["ClientGone", "ErrorShape", "close_run", "retry_headers", "shaped_route", "watching"]

T = TypeVar("T")
#: (message, status, headers, the error when it was autotune's own) → the face's response.
ErrorShape = Callable[[str, int, Mapping[str, str] | None, BackendError | None], Response]


class ClientGone(Exception):
    """The client disconnected before its request started."""


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


def retry_headers(exc: BackendError) -> dict[str, str] | None:
    retry_after = getattr(exc, "retry_after", None)
    return {"Retry-After": str(retry_after)} if retry_after is not None else None


def _describe(exc: RequestValidationError) -> str:
    return validation_message(exc)[0]


def shaped_route(
    shape: ErrorShape,
    name: str,
    describe: Callable[[RequestValidationError], str] = _describe,
) -> type[APIRoute]:
    """A route class whose errors — a body that does not validate (worded by ``describe``),
    autotune's own errors, HTTP errors — are answered by ``shape`` (FastAPI's "custom
    APIRoute class" pattern)."""

    class ShapedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                try:
                    return await handler(request)
                except RequestValidationError as exc:
                    return shape(describe(exc), 400, None, None)
                except BackendError as exc:
                    status = exc.status if exc.status >= 400 else 502
                    return shape(str(exc), status, retry_headers(exc), exc)
                except HTTPException as exc:
                    detail = exc.detail if isinstance(exc.detail, str) else "Request failed."
                    return shape(detail, exc.status_code, exc.headers, None)

            return route

    ShapedRoute.__name__ = ShapedRoute.__qualname__ = name
    return ShapedRoute
