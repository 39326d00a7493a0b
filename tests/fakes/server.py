"""Serve an ASGI app on a free 127.0.0.1 port from a background thread, so fakes speak real HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

__all__ = ["Swappable", "closed_port_url", "serve"]


class Swappable:
    """An ASGI app that forwards to whichever app is set, so one server can host a fresh fake per
    test (start-up and shutdown cost a fifth of a second each)."""

    def __init__(self, app: Any = None) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.app is None:
            raise RuntimeError("no fake app is set")
        await self.app(scope, receive, send)


@contextmanager
def serve(app: Any, *, startup_timeout: float = 10.0) -> Iterator[str]:
    """Run ``app`` with uvicorn on ``127.0.0.1:0`` and yield its base URL; stop it on exit."""
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fake-engine", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the fake engine's server stopped during start-up")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the fake engine's server did not start in time")
        time.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(startup_timeout)


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens, so connecting is refused.

    Port 9 (discard) is never served here; a port picked free and released could be taken
    by another test's server a moment later.
    """
    return "http://127.0.0.1:9"
