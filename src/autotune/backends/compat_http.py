"""How autotune talks to OpenAI-compatible engines over HTTP: timeouts, server-sent events
read without aiohttp's 64 KiB line limit, a retry on a stale kept-alive connection, and a few
words on why a connection failed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import httpx

__all__ = [
    "AIO_TRANSPORT",
    "DEFAULT_TIMEOUT",
    "PROBE_TIMEOUT",
    "is_remote",
    "json_or_none",
    "once_more_if_stale",
    "post_chat",
    "sse_events",
    "text_or_none",
    "transport_detail",
]

_T = TypeVar("_T")

#: Long reads: the first token can wait for a JIT load (LM Studio) or a long prefill.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)
#: What a probe or a health check waits.
PROBE_TIMEOUT = httpx.Timeout(3.0, connect=2.0)
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0", ""}


def is_remote(url: str) -> bool:
    """The server is on another machine (its memory is not autotune's to plan)."""
    return (urlsplit(url).hostname or "") not in _LOCAL_HOSTS


#: Transport failures on the aiohttp stream path (a timeout included).
AIO_TRANSPORT = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


async def sse_events(content: aiohttp.StreamReader) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events as ``(event, data)`` pairs, from an aiohttp response body.

    Lines are split here rather than with aiohttp's line reader, which refuses lines over
    64 KiB (a chunk carrying logprobs can be long).
    """
    kind, buffer = "message", b""
    data: list[str] = []
    async for piece in content.iter_any():
        buffer += piece
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8").rstrip("\r")
            if not line:
                if data:
                    yield kind, "\n".join(data)
                kind, data = "message", []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "event":
                kind = value
    if buffer.strip():
        field, _, value = buffer.decode("utf-8").rstrip("\r").partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield kind, "\n".join(data)


def transport_detail(exc: BaseException) -> str:
    """A few words on why a connection failed, for "engine unavailable" messages."""
    if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError)):
        return "timed out"
    if isinstance(exc, (httpx.ConnectError, ConnectionError, aiohttp.ClientConnectorError)):
        return "connection refused"
    return type(exc).__name__


def json_or_none(response: Any) -> Any:
    """A 200 response's JSON body; None for anything else (a failure, another status)."""
    if not isinstance(response, httpx.Response) or response.status_code != 200:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def text_or_none(response: Any) -> str | None:
    """A successful response's text; None for anything else."""
    if isinstance(response, httpx.Response) and response.is_success:
        return response.text
    return None


async def once_more_if_stale(
    send: Callable[[], Awaitable[_T]],
    stale: tuple[type[BaseException], ...],
    *,
    refused: tuple[type[BaseException], ...] = (),
) -> _T:
    """``send()``, and once more when the kept-alive connection it went out on was stale.

    llama-server closes a kept-alive connection after streamed replies without saying so
    (seen: every third back-to-back streamed request on one connection failed with "Server
    disconnected without sending a response", despite ``Keep-Alive: timeout=5, max=100``).
    Nothing came back, so the engine never ran the request: one retry on a fresh connection
    is safe. ``refused`` (a kind of ``stale`` error that means the engine is down) is raised.
    """
    try:
        return await send()
    except refused:
        raise
    except stale:
        pass
    return await send()


async def post_chat(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> httpx.Response:
    """A non-streaming POST to a llama-server, retried once on a stale kept-alive connection."""
    return await once_more_if_stale(lambda: http.post(url, json=body), (httpx.RemoteProtocolError,))
