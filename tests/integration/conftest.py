"""A real ``autotune serve`` (FastAPI + uvicorn) in a thread, on the real embedded engine."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from autotune.ground.config import Settings
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer

ServerFactory = Callable[..., BackgroundServer]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """``start_server(max_concurrent=1, …)`` starts a server with those settings; all stop after."""
    started: list[BackgroundServer] = []

    def start(**overrides: Any) -> BackgroundServer:
        values: dict[str, Any] = {
            "home": tmp_path / "serve-home",
            "backend": "embedded",
            "memory_budget": 4 * 1024**3,
            **overrides,
        }
        server = BackgroundServer(create_app(Settings(**values))).start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def server(start_server: ServerFactory) -> BackgroundServer:
    return start_server()


@pytest.fixture
def client(server: BackgroundServer) -> OpenAI:
    """The official openai client, unchanged, pointed at autotune."""
    return OpenAI(base_url=server.url + "/v1", api_key="not-needed", max_retries=0, timeout=60)
