"""``autotune serve``: the OpenAI-compatible server on 127.0.0.1:8765 by default."""

from __future__ import annotations

import typer

from autotune.cli._common import console, fail
from autotune.ground.config import get_settings

__all__ = ["register"]


def serve(
    ctx: typer.Context,
    host: str = typer.Option(
        None, "--host", help="Address to listen on.", show_default="127.0.0.1"
    ),
    port: int = typer.Option(None, "--port", "-p", help="Port to listen on.", show_default="8765"),
    profile: str = typer.Option(
        None, "--profile", help="Default profile: fast, balanced, quality."
    ),
) -> None:
    """Serve an OpenAI-compatible API that tunes every request for the engine behind it."""
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
    uvicorn.run(create_app(settings), **server_config(settings))


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
