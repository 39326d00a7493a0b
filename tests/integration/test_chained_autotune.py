"""autotune never fronts another autotune by mistake, nor ever itself: real servers on
127.0.0.1 (the embedded engine opened, no model loaded), one of them on Ollama's own port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from autotune import __version__
from autotune.ground.config import Settings
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer, free_port

OLLAMA_PORT = 11434


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def autotune_on_ollamas_port(tmp_path: Path) -> Iterator[str]:
    """An ``autotune serve`` where Ollama would be (what ``serve --ollama`` does)."""
    if not _port_free(OLLAMA_PORT):
        pytest.skip(f"127.0.0.1:{OLLAMA_PORT} is in use here (an Ollama?); this test needs it")
    settings = Settings(home=tmp_path / "first", backend="embedded")
    server = BackgroundServer(create_app(settings), port=OLLAMA_PORT).start()
    try:
        yield server.url
    finally:
        server.stop()


def test_a_second_autotune_on_ollamas_port_is_not_taken_for_ollama(
    autotune_on_ollamas_port: str, tmp_path: Path
) -> None:
    """Issue 22.3 — before: a second ``autotune serve`` in auto mode proxied every request
    through the first, taking it for Ollama."""
    version = httpx.get(autotune_on_ollamas_port + "/api/version", timeout=30)
    assert version.headers["X-Autotune-Version"] == __version__
    auto = Settings(home=tmp_path / "second", backend="auto", lmstudio_url="", llamacpp_url="")
    with BackgroundServer(create_app(auto)) as second:
        health = httpx.get(second.url + "/health", timeout=30).json()
    assert health["backends"] == {"embedded": True}
    # Told to, it chains on purpose: the first autotune is its Ollama.
    chained = Settings(home=tmp_path / "third", backend="ollama")
    with BackgroundServer(create_app(chained)) as third:
        health = httpx.get(third.url + "/health", timeout=30).json()
    assert health["backends"] == {"ollama": True}


def test_serve_refuses_an_engine_url_that_is_its_own_address(tmp_path: Path) -> None:
    port = free_port()
    done = subprocess.run(
        [sys.executable, "-m", "autotune", "serve"],
        env={
            **os.environ,
            "AUTOTUNE_HOME": str(tmp_path / "home"),
            "AUTOTUNE_PORT": str(port),
            "AUTOTUNE_BACKEND": "llamacpp",
            "AUTOTUNE_LLAMACPP_URL": f"http://localhost:{port}",
            "NO_COLOR": "1",
        },
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "AUTOTUNE_LLAMACPP_URL" in done.stderr and "own address" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_refusal_says_autotune_too(tmp_path: Path) -> None:
    """An autotune with a key answers a probe with a 401: that answer names it as well, so it
    is not taken for an Ollama that merely refused."""
    app = create_app(Settings(home=tmp_path / "home", backend="embedded", api_key="k3y"))
    refused = TestClient(app, base_url="http://127.0.0.1").get("/api/version")
    assert refused.status_code == 401
    assert refused.headers["X-Autotune-Version"] == __version__
