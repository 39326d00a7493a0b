"""The ``autotune`` command: global options, the command groups, and readable errors."""

from __future__ import annotations

import sys

import typer
from pydantic import ValidationError

from autotune import __version__
from autotune.cli import chat, hardware, mlx, models, proof, recall, serve, telemetry, tune
from autotune.cli._common import err_console
from autotune.ground.config import BACKEND_CHOICES
from autotune.ground.errors import BackendError

__all__ = ["app", "main"]

app = typer.Typer(
    name="autotune",
    help="Make local LLMs answer sooner, use less memory, never swap, and remember.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _known_backend(value: str | None) -> str | None:
    """``--backend`` / ``AUTOTUNE_BACKEND`` is one of the engines autotune knows."""
    if value is not None and value.strip().lower() not in BACKEND_CHOICES:
        raise typer.BadParameter(
            f"unknown backend {value!r}; choose one of {', '.join(BACKEND_CHOICES)}."
        )
    return value.strip().lower() if value is not None else None


def _version(value: bool) -> None:
    if value:
        typer.echo(f"autotune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    backend: str = typer.Option(
        None,
        "--backend",
        "-b",
        envvar="AUTOTUNE_BACKEND",
        callback=_known_backend,
        help="Engine: auto, embedded, ollama, lmstudio, llamacpp, openai, router, mlx or hf.",
        show_default="auto",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    ctx.obj = {"backend": backend}


hardware.register(app)
models.register(app)
serve.register(app)
telemetry.register(app)
chat.register(app)
proof.register(app)
mlx.register(app)
tune.register(app)
recall.register(app)


def main() -> None:
    """Console-script entry point: turns known failures into one readable line."""
    try:
        app()
    except BackendError as exc:
        err_console.print(f"[bold red]error:[/] {exc.message}")
        if exc.hint:
            err_console.print(f"  {exc.hint}")
        sys.exit(1)
    except ValidationError as exc:
        for problem in exc.errors():
            where = ".".join(str(p) for p in problem["loc"]) or "setting"
            err_console.print(f"[bold red]error:[/] AUTOTUNE_{where.upper()}: {problem['msg']}")
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
