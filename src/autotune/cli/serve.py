"""``autotune serve``: the OpenAI-compatible server on 127.0.0.1:8765 by default.

Everything that can be checked is checked before anything starts (settings, the memory budget,
the engine choice and a router config, the database, the port), each problem as one line and
a non-zero exit; the "serving on" banner appears only once the server answers on its socket.
"""

from __future__ import annotations

import errno
import socket
from typing import Any

import typer
from pydantic import ValidationError

from autotune.cli._common import console, err_console, fail
from autotune.cli._help import PlainCommand
from autotune.ground.config import Settings, get_settings
from autotune.ground.errors import BackendError

__all__ = ["preflight", "register"]


def preflight(settings: Settings) -> None:
    """Every start-up check that needs no engine; raises ``typer.Exit`` after one line."""
    from autotune.operations.startup import check_engines, check_memory_budget
    from autotune.store.db import DatabaseUnusable, check_database

    problem = check_memory_budget(settings.memory_budget)
    if problem is not None:
        raise fail(f"{problem}.", "Unset it, or give a size this machine can hold.", code=2)
    try:
        check_engines(settings)
    except BackendError as exc:
        raise fail(exc.message, exc.hint, code=2) from None
    problem = check_database(settings.db_path)
    if problem is not None:
        raise fail(DatabaseUnusable(settings.db_path, problem).message, code=1)


def _settings(updates: dict[str, Any]) -> Settings:
    """The settings with the command line's values on top, or one line per bad value. Only the
    values someone set are carried over, so a setting left at its default stays unset (the
    runtime then chooses it, e.g. max_concurrent from the engines' capacity)."""
    try:
        return Settings.model_validate({**get_settings().model_dump(exclude_unset=True), **updates})
    except ValidationError as exc:
        for problem in exc.errors():
            where = ".".join(str(p) for p in problem["loc"]) or "setting"
            message = str(problem["msg"]).removeprefix("Value error, ")
            name = f"--{where}" if where in updates else f"AUTOTUNE_{where.upper()}"
            err_console.print(f"[bold red]error:[/] {name}: {message}")
        raise typer.Exit(2) from None


def _bind(settings: Settings) -> socket.socket:
    from autotune.server.runner import bind_socket

    where = f"{settings.host}:{settings.port}"
    try:
        return bind_socket(settings.host, settings.port)
    except socket.gaierror:
        raise fail(
            f"Cannot listen on {settings.host}: no such address on this machine.",
            "Use --host 127.0.0.1 (the default), or an address this machine has.",
            code=2,
        ) from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise fail(
                f"Port {settings.port} on {settings.host} is already in use "
                "(another autotune serve, or another program).",
                "Stop that program, or choose another port with --port or AUTOTUNE_PORT.",
                code=1,
            ) from None
        raise fail(f"Cannot listen on {where}: {exc.strerror or exc}.", code=1) from None


def _banner(settings: Settings, notes: list[str] | None = None) -> None:
    url = f"http://{settings.host}:{settings.port}"
    console.print(f"[bold]autotune[/] serving on [cyan]{url}/v1[/] (profile {settings.profile})")
    console.print(
        f"  try: curl {url}/v1/chat/completions -H 'Content-Type: application/json' "
        f'-d \'{{"model": "{settings.default_model}", '
        '"messages": [{"role": "user", "content": "Hello"}]}\''
    )
    console.print(f"  health: {url}/health   metrics: {url}/metrics   Ctrl-C stops")
    for note in notes or ():
        console.print(f"  {note}")


def serve(
    ctx: typer.Context,
    host: str = typer.Option(
        None,
        "--host",
        metavar="ADDRESS",
        help="Address to listen on (default: AUTOTUNE_HOST, else 127.0.0.1).",
    ),
    port: int = typer.Option(
        None,
        "--port",
        "-p",
        metavar="PORT",
        help="Port to listen on (default: AUTOTUNE_PORT, else 8765).",
    ),
    profile: str = typer.Option(
        None,
        "--profile",
        metavar="PROFILE",
        help="Default profile: fast, balanced or quality (default: AUTOTUNE_PROFILE, else "
        "balanced).",
    ),
    ollama: bool = typer.Option(
        False,
        "--ollama",
        help="Also listen on Ollama's address, 127.0.0.1:11434, when it is free, so apps set up "
        "for Ollama work unchanged (AUTOTUNE_SERVE_OLLAMA; port: AUTOTUNE_OLLAMA_PORT).",
    ),
) -> None:
    """Serve an OpenAI-compatible API that tunes every request for the engine behind it.

    Settings it reads (README, "Settings"): where it listens, AUTOTUNE_HOST and
    AUTOTUNE_PORT (any address beyond 127.0.0.1 needs AUTOTUNE_API_KEY); which engine,
    AUTOTUNE_BACKEND, AUTOTUNE_OLLAMA_URL, AUTOTUNE_LMSTUDIO_URL, AUTOTUNE_LLAMACPP_URL,
    AUTOTUNE_OPENAI_URL, AUTOTUNE_ROUTER_CONFIG; models and memory, AUTOTUNE_DEFAULT_MODEL,
    AUTOTUNE_PROFILE, AUTOTUNE_MEMORY_BUDGET, AUTOTUNE_KEEP_ALIVE, AUTOTUNE_THREADS,
    AUTOTUNE_MODELS_DIR; admission, AUTOTUNE_MAX_CONCURRENT, AUTOTUNE_MAX_QUEUED,
    AUTOTUNE_WAIT_TIMEOUT, AUTOTUNE_MAX_BODY_BYTES; who may call it, AUTOTUNE_API_KEY,
    AUTOTUNE_ALLOWED_HOSTS (host names besides loopback and the listening address),
    AUTOTUNE_CORS_ORIGINS; and AUTOTUNE_HOME, where conversations, telemetry and caches are
    kept. Each is checked before anything starts.
    """
    from autotune.server.app import create_app, is_loopback
    from autotune.server.runner import serve_on

    updates: dict[str, Any] = {
        k: v for k, v in (("host", host), ("port", port), ("profile", profile)) if v is not None
    }
    if ctx.obj and ctx.obj.get("backend"):
        updates["backend"] = ctx.obj["backend"]
    if ollama:
        updates["serve_ollama"] = True  # its port is this server's own, never an engine's
    settings = _settings(updates)
    if not is_loopback(settings.host) and not settings.api_key:
        raise fail(
            f"Refusing to listen on {settings.host} without an API key.",
            "Set AUTOTUNE_API_KEY (clients then send 'Authorization: Bearer <key>'), "
            "or keep the default 127.0.0.1.",
            code=2,
        )
    preflight(settings)
    sockets = [_bind(settings)]
    notes: list[str] = []
    if ollama or settings.serve_ollama:
        from autotune.server.ollama_port import bind_ollama_port

        extra, line = bind_ollama_port(port=settings.ollama_port)
        notes.append(line)
        if extra is not None:
            sockets.append(extra)
    if not serve_on(create_app(settings), sockets, on_started=lambda: _banner(settings, notes)):
        raise typer.Exit(3)  # start-up failed; uvicorn has printed why


def register(app: typer.Typer) -> None:
    app.command("serve", cls=PlainCommand)(serve)
