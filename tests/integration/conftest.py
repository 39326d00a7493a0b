"""A real ``autotune serve`` on the real embedded engine: in a thread (``start_server``), or as
its own process (``serve_process``) where a test stops it with a signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from autotune.ground.config import Settings
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer, free_port

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


class ServeProcess:
    """``autotune serve`` as a real process on its own home; stopped with SIGTERM."""

    def __init__(self, home: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "AUTOTUNE_HOME": str(home),
            "AUTOTUNE_BACKEND": "embedded",
            "AUTOTUNE_PORT": str(self.port),
            "AUTOTUNE_MEMORY_BUDGET": "4GiB",
            # Recall's model load (~5 s of CPU beside the engine) is not what these test.
            "AUTOTUNE_RECALL": "false",
            **env,
        }
        self.proc: subprocess.Popen[str] | None = None
        #: What ``serve`` wrote to stderr (its log), read when it stopped.
        self.log = ""

    def start(self) -> ServeProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autotune", "serve"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("autotune serve did not start")

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully (the lifespan's end: slots saved), then re-raises
        # the signal it caught, so the exit status is -SIGTERM.
        code = self.proc.wait(timeout=60)
        self.log = self.proc.stderr.read() if self.proc.stderr else ""
        assert code in (0, -signal.SIGTERM), self.log


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    started: list[ServeProcess] = []

    def make(**env: str) -> ServeProcess:
        server = ServeProcess(tmp_path / "home", **env)
        started.append(server)
        return server

    yield make
    for server in started:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
