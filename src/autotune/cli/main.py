"""The ``autotune`` command: global options, the command groups, and readable errors."""

from __future__ import annotations

import asyncio
import sys

import typer
from pydantic import ValidationError

from autotune import __version__
from autotune.cli import (
    chat,
    doctor,
    hardware,
    kv,
    mlx,
    models,
    proof,
    pull,
    recall,
    serve,
    telemetry,
    tune,
)
from autotune.cli._common import err_console
from autotune.cli._help import PlainGroup
from autotune.ground.config import BACKEND_CHOICES
from autotune.ground.errors import BackendError, ModelNotFound

__all__ = ["app", "main"]

app = typer.Typer(
    name="autotune",
    help="Make local LLMs answer sooner, use less memory, never swap, and remember.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    cls=PlainGroup,
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
        metavar="ENGINE",
        show_envvar=True,
        help="Engine: auto (the default: every engine that answers, and the embedded one), "
        "embedded, ollama, lmstudio, llamacpp, openai, router, mlx or hf.",
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
kv.register(app)
doctor.register(app)
pull.register(app)


def _how_to_get(model: str) -> list[str]:
    """How to get a well-known model, and whether it fits this machine (nothing for a name
    the catalog does not know)."""
    from autotune.operations.inventory import getting

    return asyncio.run(getting(model))


def _report(exc: BackendError) -> None:
    """The error in one line, its hint, and for a well-known model how to get it."""
    message, extra = exc.message, []
    if isinstance(exc, ModelNotFound):
        extra = _how_to_get(exc.model)
        if extra:  # not unknown at all: only not here yet
            message = f"{exc.model} is not on this machine yet (no engine here has it)."
    err_console.print(f"[bold red]error:[/] {message}")
    for line in ([exc.hint] if exc.hint else []) + extra:
        err_console.print(f"  {line}")


def main() -> None:
    """Console-script entry point: turns known failures into one readable line."""
    try:
        app()
    except BackendError as exc:
        _report(exc)
        sys.exit(1)
    except ValidationError as exc:
        for problem in exc.errors():
            where = ".".join(str(p) for p in problem["loc"]) or "setting"
            err_console.print(f"[bold red]error:[/] AUTOTUNE_{where.upper()}: {problem['msg']}")
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
