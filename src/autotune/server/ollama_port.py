"""``autotune serve --ollama``: also listen on Ollama's own address, 127.0.0.1:11434, when free.

Apps set up for Ollama (its default address) then reach autotune unchanged. One app, one
pipeline: uvicorn serves the same app on both sockets. When something already holds the
port — a real Ollama, most likely — autotune says so in one line and keeps its own port.
Ollama's port is always loopback-only, whatever ``AUTOTUNE_HOST`` says.
"""

from __future__ import annotations

import socket

import httpx

from autotune.ground.engines import AUTOTUNE_HEADER

__all__ = ["OLLAMA_HOST", "OLLAMA_PORT", "bind_ollama_port"]

OLLAMA_HOST = "127.0.0.1"
OLLAMA_PORT = 11434


def bind_ollama_port(
    host: str = OLLAMA_HOST, port: int = OLLAMA_PORT
) -> tuple[socket.socket | None, str]:
    """A socket bound to ``host:port`` (uvicorn listens on it), and the line to print; or
    None and one line saying what holds the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        return None, _taken(host, port)
    sock.set_inheritable(True)
    return (
        sock,
        f"Ollama's API also on http://{host}:{port} (apps set up for Ollama work unchanged)",
    )


def _taken(host: str, port: int) -> str:
    """Who holds the port, in one line: a running Ollama says its version."""
    try:
        reply = httpx.get(f"http://{host}:{port}/api/version", timeout=1.0)
        version = reply.json().get("version") if reply.status_code == 200 else None
        autotune = reply.headers.get(AUTOTUNE_HEADER)
    except (httpx.HTTPError, ValueError, AttributeError):
        version = autotune = None
    holder = f"Ollama {version} is running there" if version else "another program holds it"
    if autotune:
        holder = f"another autotune {autotune} is running there"
    return f"{host}:{port} is taken ({holder}): autotune serves Ollama's API on its own port only."
