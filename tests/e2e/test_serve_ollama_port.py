"""``autotune serve --ollama``: the same app also on Ollama's port when it is free, one line and
autotune's own port only when it is not. Real processes; the port is a free one rather than
11434 (which a developer's Ollama may hold), set with AUTOTUNE_OLLAMA_PORT. The Ollama that
holds a port in one test is ``tests/fakes/ollama.py`` (no Ollama binary can run here)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import ollama
import pytest

from autotune.server.ollama_port import bind_ollama_port
from autotune.server.runner import free_port
from fakes.ollama import FakeOllama
from fakes.server import serve


def test_a_free_port_is_bound_a_taken_one_is_named() -> None:
    port = free_port()
    sock, line = bind_ollama_port(port=port)
    assert sock is not None and f"http://127.0.0.1:{port}" in line
    try:
        sock.listen()
        again, why = bind_ollama_port(port=port)
        assert again is None and "another program holds it" in why
    finally:
        sock.close()
    fake = FakeOllama()
    with serve(fake.app) as url:
        taken, why = bind_ollama_port(port=int(url.rsplit(":", 1)[1]))
    assert taken is None and "Ollama 0.12.6 is running there" in why


@contextmanager
def serving(ollama_port: int) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    env = {
        **os.environ,
        "AUTOTUNE_BACKEND": "embedded",
        "AUTOTUNE_PORT": str(port),
        "AUTOTUNE_OLLAMA_PORT": str(ollama_port),
        "NO_COLOR": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune", "serve", "--ollama"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url, proc
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)


@pytest.mark.engine
def test_serve_ollama_answers_ollama_clients_on_the_ollama_port() -> None:
    ollama_port = free_port()
    with serving(ollama_port) as (url, proc):
        client = ollama.Client(host=f"http://127.0.0.1:{ollama_port}", timeout=120)
        reply = client.chat(
            model="smollm2:135m",
            messages=[{"role": "user", "content": "Hi"}],
            options={"num_predict": 4},
        )
        assert reply.message.content and reply.done
        assert httpx.get(url + "/api/version").json()["version"]  # and on autotune's own port
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"Ollama's API also on http://127.0.0.1:{ollama_port}" in out


def test_serve_ollama_keeps_its_own_port_when_ollama_holds_the_port() -> None:
    fake = FakeOllama()
    with serve(fake.app) as fake_url:
        taken = int(fake_url.rsplit(":", 1)[1])
        with serving(taken) as (url, proc):
            assert httpx.get(url + "/health").status_code == 200
            assert httpx.get(fake_url + "/api/version").json() == {"version": "0.12.6"}
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"127.0.0.1:{taken} is taken (Ollama 0.12.6 is running there)" in out
