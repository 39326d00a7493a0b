"""ASGI middleware: the Host/Origin guard, the API key check, the request-body size limit and
the last-resort 500 (pure ASGI, stream-safe), each answered in the shape of the API whose
path was called (:class:`~autotune.server.errors.ErrorShapes`)."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import traceback
import uuid
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from autotune import __version__
from autotune.ground.engines import AUTOTUNE_HEADER
from autotune.server.dashboard import is_dashboard_asset_request, is_public_dashboard_request
from autotune.server.errors import ErrorShapes, Refusal

__all__ = [
    "IDENTITY",
    "ApiKeyMiddleware",
    "BodyLimitMiddleware",
    "HostGuardMiddleware",
    "InternalErrorMiddleware",
    "SiteCorsMiddleware",
    "Sites",
    "bearer_token_matches",
    "is_loopback",
]

log = logging.getLogger("autotune.server")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1, ``localhost`` and names under ``.localhost`` (RFC 6761)."""
    name = host.strip().lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


#: Every answer says it comes from autotune (its version), so another autotune probing for an
#: engine never takes this one for Ollama or llama-server by mistake: added to the routes'
#: answers by :class:`InternalErrorMiddleware` and to every refusal before them.
IDENTITY = (AUTOTUNE_HEADER.lower().encode(), __version__.encode())


async def _reply(
    shapes: ErrorShapes,
    scope: Scope,
    receive: Receive,
    send: Send,
    refusal: Refusal,
) -> None:
    """Answer ``refusal`` before any route, in the shape of the API at the request's path."""
    response = shapes.for_path(scope.get("path", "")).response(refusal)
    response.raw_headers.append(IDENTITY)
    await response(scope, receive, send)


def bearer_token_matches(header: bytes, api_key: str) -> bool:
    """``Authorization: Bearer <key>`` holds ``api_key``; the scheme in any case (RFC 9110
    makes it case-insensitive), the token compared in constant time."""
    scheme, _, token = header.strip().partition(b" ")
    # Compared even when the scheme is wrong, so the time taken says nothing about the key.
    same = hmac.compare_digest(token.strip(), api_key.encode())
    return scheme.lower() == b"bearer" and same


class ApiKeyMiddleware:
    """With a key configured, every request needs ``Authorization: Bearer <key>`` (else 401)."""

    def __init__(self, app: ASGIApp, api_key: str, shapes: ErrorShapes | None = None) -> None:
        self.app = app
        self.api_key = api_key
        self.shapes = shapes or ErrorShapes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The dashboard's page files hold no data: a browser must load them before it can
        # send the key; every data fetch they make still needs it.
        if scope["type"] != "http" or is_public_dashboard_request(scope):
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"authorization", b"")
        if not bearer_token_matches(given, self.api_key):
            refusal = Refusal(
                "Missing or wrong API key: send 'Authorization: Bearer <key>'.",
                401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await _reply(self.shapes, scope, receive, send, refusal)
            return
        await self.app(scope, receive, send)


class _TooLarge(HTTPException):
    """Raised while reading an oversize body; an HTTPException so FastAPI's body parsing passes
    it on as a 413 instead of wrapping it in a generic 400."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes with 413, by header or while reading."""

    def __init__(self, app: ASGIApp, limit: int, shapes: ErrorShapes | None = None) -> None:
        self.app = app
        self.limit = limit
        self.shapes = shapes or ErrorShapes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_big = f"Request body over the {self.limit}-byte limit (AUTOTUNE_MAX_BODY_BYTES)."
        if length is not None and length.isdigit():
            if int(length) > self.limit:
                await _reply(self.shapes, scope, receive, send, Refusal(too_big, 413))
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


def _host_name(value: str) -> str:
    """The name in a ``Host`` header or URL authority, lower case, without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:8765
        return value[1 : value.find("]")] if "]" in value else value[1:]
    if value.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        value = value.split(":", 1)[0]
    return value.rstrip(".")


class Sites:
    """The host names this server answers to and the web pages that may call it: loopback
    names, the listening address and ``AUTOTUNE_ALLOWED_HOSTS`` (``.example.com`` a domain,
    ``*`` any); pages on those hosts and the sites in ``AUTOTUNE_CORS_ORIGINS``."""

    def __init__(self, hosts: Iterable[str] = (), cors_origins: Iterable[str] = ()) -> None:
        names = {_host_name(h) for h in hosts if h.strip()}
        self.any_host = "*" in names
        self.suffixes = tuple(n for n in names if n.startswith("."))
        self.names = names - {"*"} - set(self.suffixes)
        self.origins = {o.strip().rstrip("/").lower() for o in cors_origins if o.strip()}

    def host_allowed(self, name: str) -> bool:
        return (
            self.any_host
            or is_loopback(name)
            or name in self.names
            or any(name.endswith(s) or name == s[1:] for s in self.suffixes)
        )

    def origin_allowed(self, origin: str) -> bool:
        origin = origin.strip().rstrip("/").lower()
        if "*" in self.origins or origin in self.origins:
            return True
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and self.host_allowed(_host_name(parts.netloc))


class HostGuardMiddleware:
    """Answers only to its own names, and only to web pages of its own sites (403 otherwise).

    DNS rebinding: a web page at ``evil.example`` whose name is re-pointed at 127.0.0.1 reaches
    this server with ``Host: evil.example``; only loopback names, the listening address and
    ``AUTOTUNE_ALLOWED_HOSTS`` are answered. Cross-site requests: a browser names the page that
    sent a request in ``Origin``; pages on loopback or allowed hosts, and the sites in
    ``AUTOTUNE_CORS_ORIGINS``, may call the API, others may not. Clients that are not browsers
    send no ``Origin``. The dashboard's static files hold no data and are served to any host.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        hosts: Iterable[str] = (),
        cors_origins: Iterable[str] = (),
        shapes: ErrorShapes | None = None,
    ) -> None:
        self.app = app
        self.shapes = shapes or ErrorShapes()
        self.sites = Sites(hosts, cors_origins)
        self.host_allowed = self.sites.host_allowed
        self.origin_allowed = self.sites.origin_allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or is_dashboard_asset_request(scope):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host")
        if host is not None:
            name = _host_name(host.decode("latin-1"))
            if not self.host_allowed(name):
                refusal = Refusal(
                    f"This server does not answer to the host name {name[:100]!r} (a guard "
                    "against DNS rebinding). If you reach it by that name on purpose, add it "
                    "to AUTOTUNE_ALLOWED_HOSTS.",
                    403,
                    code="host_not_allowed",
                )
                await _reply(self.shapes, scope, receive, send, refusal)
                return
        origin = headers.get(b"origin")
        if origin is not None and not self.origin_allowed(origin.decode("latin-1")):
            shown = origin.decode("latin-1")[:100]
            refusal = Refusal(
                f"Requests from the web page at {shown!r} are refused (a guard against "
                "cross-site requests). To let that site call this server, add it to "
                "AUTOTUNE_CORS_ORIGINS.",
                403,
                code="origin_not_allowed",
            )
            await _reply(self.shapes, scope, receive, send, refusal)
            return
        await self.app(scope, receive, send)


class SiteCorsMiddleware(CORSMiddleware):
    """CORS for the web pages :class:`HostGuardMiddleware` lets through: pages on loopback
    (``http://localhost:3000``, ``http://127.0.0.1:5173``, ``http://[::1]:8080``) or allowed
    hosts and the sites in ``AUTOTUNE_CORS_ORIGINS`` get their preflight answered (any
    method, the headers they ask for) and ``Access-Control-Allow-Origin`` naming them on
    every response. The outermost layer: a browser's preflight carries no key; a foreign
    page's requests, its preflight too, go on to be refused (the key, the guard's 403)."""

    def __init__(
        self, app: ASGIApp, *, hosts: Iterable[str] = (), cors_origins: Iterable[str] = ()
    ) -> None:
        super().__init__(
            app,
            allow_methods=["*"],
            allow_headers=["*"],
            # A public site the user allowed may call this private address (Chrome's
            # Private Network Access asks in the preflight).
            allow_private_network=True,
            expose_headers=["X-Autotune-Plan", "X-Conversation-Id", "Retry-After"],
        )
        self.sites = Sites(hosts, cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        origin = dict(scope.get("headers") or []).get(b"origin")
        if (
            scope["type"] == "http"
            and origin is not None
            and not self.is_allowed_origin(origin.decode("latin-1"))
        ):
            await self.app(scope, receive, send)  # refused further in, in the API's shape
            return
        await super().__call__(scope, receive, send)

    def is_allowed_origin(self, origin: str) -> bool:
        return self.sites.origin_allowed(origin)


class InternalErrorMiddleware:
    """An unexpected exception becomes a 500 that says "Internal error" and a request id; the
    server log gets the id, the exception's type and its stack (file, line, function), never
    the exception's text, which can quote a prompt. Every answer gets :data:`IDENTITY`."""

    def __init__(self, app: ASGIApp, shapes: ErrorShapes | None = None) -> None:
        self.app = app
        self.shapes = shapes or ErrorShapes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", ()), IDENTITY]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            request_id = "req_" + uuid.uuid4().hex[:16]
            log.error(
                "request %s (%s %s) failed: %s\n%s",
                request_id,
                scope.get("method"),
                scope.get("path"),
                _exception_chain(exc),
                "".join(traceback.format_tb(exc.__traceback__)).rstrip(),
            )
            if started:
                return  # the reply is under way: the client sees it end early
            refusal = Refusal(
                f"Internal error (request id {request_id}); the server log has the details.",
                500,
                code="internal_error",
                headers={"X-Request-Id": request_id},
            )
            await _reply(self.shapes, scope, receive, send, refusal)


def _exception_chain(exc: BaseException) -> str:
    """``ValueError <- KeyError``: the types of an exception and its causes, no messages."""
    names: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(names) < 5:
        names.append(type(seen).__qualname__)
        seen = seen.__cause__ or seen.__context__
    return " <- ".join(names)
