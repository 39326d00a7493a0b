"""``autotune serve``: the OpenAI-compatible server on 127.0.0.1:8765 by default."""

from __future__ import annotations

import typer

from autotune.cli._common import console, fail
from autotune.cli._help import PlainCommand
from autotune.ground.config import get_settings

__all__ = ["register"]


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
    AUTOTUNE_WAIT_TIMEOUT, AUTOTUNE_MAX_BODY_BYTES, AUTOTUNE_CORS_ORIGINS; and AUTOTUNE_HOME,
    where conversations, telemetry and caches are kept.
    """
    import uvicorn

    from autotune.server.app import create_app, is_loopback, server_config

    updates = {k: v for k, v in (("host", host), ("port", port), ("profile", profile)) if v}
    if ctx.obj and ctx.obj.get("backend"):
        updates["backend"] = ctx.obj["backend"]
    settings = get_settings().model_validate({**get_settings().model_dump(), **updates})
    if not is_loopback(settings.host) and not settings.api_key:
        raise fail(
            f"Refusing to listen on {settings.host} without an API key.",
            "Set AUTOTUNE_API_KEY (clients then send 'Authorization: Bearer <key>'), "
            "or keep the default 127.0.0.1.",
            code=2,
        )
    url = f"http://{settings.host}:{settings.port}"
    console.print(f"[bold]autotune[/] serving on [cyan]{url}/v1[/] (profile {settings.profile})")
    console.print(
        f"  try: curl {url}/v1/chat/completions -H 'Content-Type: application/json' "
        f'-d \'{{"model": "{settings.default_model}", '
        '"messages": [{"role": "user", "content": "Hello"}]}\''
    )
    console.print(f"  health: {url}/health   metrics: {url}/metrics   Ctrl-C stops")
    if ollama or settings.serve_ollama:
        from autotune.server.ollama_port import serve_with_ollama_port

        serve_with_ollama_port(
            create_app(settings),
            server_config(settings),
            say=lambda line: console.print(f"  {line}"),
            port=settings.ollama_port,
        )
        return
    uvicorn.run(create_app(settings), **server_config(settings))


def register(app: typer.Typer) -> None:
    app.command("serve", cls=PlainCommand)(serve)
