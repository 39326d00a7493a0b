"""ASGI middleware: the API key check and the request-body size limit (pure ASGI, stream-safe)."""

from __future__ import annotations

import hmac
import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autotune.server.dashboard import is_public_dashboard_request
from autotune.server.errors import error_body

__all__ = ["ApiKeyMiddleware", "BodyLimitMiddleware"]


async def _reply(
    send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(error_body(message, status=status)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """With a key configured, every request needs ``Authorization: Bearer <key>`` (else 401)."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The dashboard's page files hold no data: a browser must load them before it can
        # send the key; every data fetch they make still needs it.
        if scope["type"] != "http" or is_public_dashboard_request(scope):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if not hmac.compare_digest(given, self.expected):
            await _reply(
                send,
                401,
                "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        await self.app(scope, receive, send)


class _TooLarge(HTTPException):
    """Raised while reading an oversize body; an HTTPException so FastAPI's body parsing passes
    it on as a 413 instead of wrapping it in a generic 400."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413, by header or while reading."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_big = f"Request body over the {self.limit}-byte limit (AUTOTUNE_MAX_BODY_BYTES)."
        if length is not None and length.isdigit():
            if int(length) > self.limit:
                await _reply(send, 413, too_big)
                return
            # The HTTP server holds a body to its Content-Length: nothing to count (hot path).
            await self.app(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge(too_big)  # an HTTPException: answered as a 413
            return message

        await self.app(scope, limited_receive, send)
