"""Runs the app with uvicorn: its connection limits and request deadlines, a socket bound before
anything starts, and a background-thread server for tests, benchmarks and the proof."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from autotune.ground.errors import RequestStopped

__all__ = [
    "BODY_TIMEOUT",
    "DRAIN_SECONDS",
    "HEADER_TIMEOUT",
    "KEEP_ALIVE_TIMEOUT",
    "BackgroundServer",
    "bind_socket",
    "connection_limit",
    "free_port",
    "guarded_protocol",
    "serve_on",
    "uvicorn_options",
]

log = logging.getLogger("autotune.server")

#: Seconds a client has, from connecting (or from the first byte of its next request), to send
#: a request's whole head. A slow-loris client holding connections open is closed after it.
HEADER_TIMEOUT = 10.0
#: Seconds a client has to send a request's body once its head arrived (8 MiB at most, see
#: AUTOTUNE_MAX_BODY_BYTES: on a loopback or a LAN that takes well under a second).
BODY_TIMEOUT = 60.0
#: Seconds an idle keep-alive connection stays open between requests (uvicorn's default).
KEEP_ALIVE_TIMEOUT = 5.0
#: Seconds requests in flight have to finish once the server is asked to stop; then each is
#: ended with its API's error. Shorter than uvicorn's graceful shutdown (5 s, 3 s in tests).
DRAIN_SECONDS = 2.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def connection_limit() -> int:
    """Open connections the server holds at most: half the process's file-descriptor limit
    (macOS's default of 256 gives 128), within 16..1024. The rest is left to the database,
    engine workers and log files. Idle connections make room for new ones (see
    :func:`guarded_protocol`), so the limit never locks a new client out."""
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # Windows has no rlimit
        return 1024
    if soft == resource.RLIM_INFINITY:
        return 1024
    return max(16, min(1024, soft // 2))


class _RequestDeadlines:
    """Mixed into uvicorn's HTTP protocol: deadlines for receiving a request, and room made
    for a new connection by closing the oldest idle one when the connection limit is reached.

    uvicorn itself only times idle keep-alive connections: a client that connects and sends
    nothing, or sends its head a byte at a time, is held forever (one file descriptor each).
    """

    header_timeout: float = HEADER_TIMEOUT
    body_timeout: float = BODY_TIMEOUT
    # Set by uvicorn's protocol classes:
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    cycle: Any
    connections: set[Any]
    limit_concurrency: int | None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        self._timed_cycle: Any = None
        self._opened = time.monotonic()
        super().connection_made(transport)  # type: ignore[misc]
        self._arm(self.header_timeout, "head")
        self._make_room()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            if self._phase != "head":  # the first bytes of a new request's head
                self._arm(self.header_timeout, "head")
        elif cycle is not self._timed_cycle:  # a head is complete: now its body, if any
            self._timed_cycle = cycle
            if cycle.more_body:
                self._arm(self.body_timeout, "body")
            else:
                self._disarm()
        elif not cycle.more_body and self._phase == "body":
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _idle(self) -> bool:
        """No request in progress: waiting for a head, or between keep-alive requests."""
        return self.cycle is None or bool(self.cycle.response_complete)

    def _arm(self, seconds: float, phase: str) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expire, phase)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, None

    def _expire(self, phase: str) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if phase == "head" and self._idle():
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"
            )
            self.transport.close()
        elif phase == "body" and self.cycle is self._timed_cycle and self.cycle.more_body:
            self.transport.close()  # the app reading the body sees a disconnect

    def _make_room(self) -> None:
        limit = self.limit_concurrency
        if not limit or len(self.connections) < limit:
            return
        idle = sorted(
            (c for c in self.connections if c is not self and isinstance(c, _RequestDeadlines)),
            key=lambda c: c._opened,
        )
        for victim in idle:
            if len(self.connections) < limit:
                break
            if victim._idle():
                victim.transport.close()
                self.connections.discard(victim)


def guarded_protocol(
    header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_TIMEOUT
) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, else h11) with request deadlines."""
    return type(
        "GuardedHTTPProtocol",
        (_RequestDeadlines, AutoHTTPProtocol),
        {"header_timeout": header_timeout, "body_timeout": body_timeout},
    )


def uvicorn_options(
    *,
    header_timeout: float = HEADER_TIMEOUT,
    body_timeout: float = BODY_TIMEOUT,
    limit_concurrency: int | None = None,
    timeout_graceful_shutdown: int = 5,
) -> dict[str, Any]:
    """The uvicorn options every autotune server runs with (``autotune serve`` and tests)."""
    return {
        "http": guarded_protocol(header_timeout, body_timeout),
        "limit_concurrency": limit_concurrency or connection_limit(),
        "timeout_keep_alive": KEEP_ALIVE_TIMEOUT,
        "log_level": "warning",
        "access_log": False,  # request lines could be logged, prompt text never is
        "timeout_graceful_shutdown": timeout_graceful_shutdown,
    }


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound to ``host:port``; raises ``OSError`` (in use, no
    such address) before anything else has started."""
    address = host.strip("[]")
    family, kind, proto, _, sockaddr = socket.getaddrinfo(
        address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(sockaddr)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class _DrainingServer(uvicorn.Server):
    """On Ctrl-C or SIGTERM, requests in flight get :data:`DRAIN_SECONDS` to finish; then
    each still running is stopped with its API's error (a 503 before its first byte, the
    stream's error event after it), so every client learns why its answer ended and uvicorn
    never has to cancel a response half-way (``timeout graceful shutdown exceeded``)."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        drain = asyncio.ensure_future(self._stop_running_after(DRAIN_SECONDS))
        try:
            await super().shutdown(sockets=sockets)
        finally:
            drain.cancel()

    async def _stop_running_after(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
        pipeline = getattr(getattr(self.config.app, "state", None), "pipeline", None)
        running = getattr(pipeline, "running", None)
        if running is not None:
            stopped = running.stop_all(RequestStopped.shutting_down())
            if stopped:
                log.warning("stopping: %d request(s) still running were ended", stopped)


class _AnnouncingServer(_DrainingServer):
    """Calls ``on_started`` once the app's start-up has finished and the socket listens."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._on_started is not None:
            self._on_started()


def serve_on(
    app: FastAPI,
    sockets: list[socket.socket],
    *,
    on_started: Callable[[], None] | None = None,
    **options: Any,
) -> bool:
    """Serve ``app`` on already bound sockets until Ctrl-C or SIGTERM (blocking); returns
    whether it started at all (False: the app's start-up failed, and uvicorn said why)."""
    config = uvicorn.Config(app, **{**uvicorn_options(), **options})
    server = _AnnouncingServer(config, on_started)
    try:
        server.run(sockets=sockets)
    except KeyboardInterrupt:
        pass  # uvicorn re-raises the Ctrl-C it handled, once it has shut down cleanly
    finally:
        for sock in sockets:
            sock.close()
    return bool(server.started)


class BackgroundServer:
    """``with BackgroundServer(app) as srv: srv.url`` — started on enter, stopped on exit.

    ``options`` override :func:`uvicorn_options` (e.g. a short ``header_timeout`` in a test).
    """

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int | None = None, **options: Any
    ) -> None:
        self.app = app
        self.host = host
        self.port = port or free_port(host)
        config = uvicorn.Config(
            app,
            host=host,
            port=self.port,
            **uvicorn_options(**{"timeout_graceful_shutdown": 3, **options}),
        )
        self.server = _DrainingServer(config)
        self._thread = threading.Thread(target=self.server.run, name="autotune-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
