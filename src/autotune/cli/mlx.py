"""``autotune mlx pull|list|resolve``: MLX models on Apple Silicon, by their Ollama names."""

from __future__ import annotations

import platform

import typer

from autotune.cli._common import console, fail, print_json, run
from autotune.cli._help import PlainCommand, PlainGroup
from autotune.cli._tables import Column, print_table
from autotune.ground.units import format_bytes
from autotune.operations.mlx import (
    OLLAMA_TO_MLX,
    is_apple_silicon,
    local_mlx_models,
    ollama_names_for,
    pull_mlx,
    resolve_mlx_repo,
)

__all__ = ["mlx_app", "register"]

mlx_app = typer.Typer(
    name="mlx",
    help="MLX models on Apple Silicon: pull, list and resolve Ollama names to mlx-community.",
    no_args_is_help=True,
    cls=PlainGroup,
)


@mlx_app.callback()
def _needs_apple_silicon() -> None:
    if not is_apple_silicon():
        raise fail(
            f"autotune mlx needs Apple Silicon (macOS on arm64); this machine is "
            f"{platform.system()} {platform.machine()}."
        )


@mlx_app.command("resolve", cls=PlainCommand)
def resolve(
    name: str = typer.Argument(..., metavar="NAME", help="An Ollama name (qwen3:8b) or a repo id."),
) -> None:
    """Print the Hugging Face repo that stands for NAME."""
    repo = resolve_mlx_repo(name)
    if repo is None:
        raise fail(
            f"No MLX model is known for {name!r}.",
            hint="Known names: " + ", ".join(sorted(OLLAMA_TO_MLX)) + "; or pass a repo id.",
        )
    typer.echo(repo)


@mlx_app.command("list", cls=PlainCommand)
def list_models(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The MLX models in the Hugging Face cache, with the Ollama names they answer to."""
    models = local_mlx_models()
    if json_out:
        print_json(
            [
                {
                    "repo": m.repo,
                    "names": ollama_names_for(m.repo),
                    "size_bytes": m.size_bytes,
                    "path": str(m.path),
                }
                for m in models
            ]
        )
        return
    if not models:
        console.print("No MLX models yet. Get one with `autotune mlx pull qwen3:8b`.")
        return
    columns = (Column("repo", name=True), Column("Ollama names"), Column("size", right=True))
    rows = [
        [m.repo, ", ".join(ollama_names_for(m.repo)), format_bytes(m.size_bytes)] for m in models
    ]
    print_table(console, columns, rows)


@mlx_app.command("pull", cls=PlainCommand)
def pull(
    name: str = typer.Argument(..., metavar="NAME", help="An Ollama name (qwen3:8b) or a repo id."),
) -> None:
    """Download the MLX model for NAME into the Hugging Face cache."""
    if resolve_mlx_repo(name) is None:
        raise fail(
            f"No MLX model is known for {name!r}.",
            hint="Known names: " + ", ".join(sorted(OLLAMA_TO_MLX)) + "; or pass a repo id.",
        )

    async def go() -> None:
        async for step in pull_mlx(name):
            console.print(step.status)

    run(go)


def register(app: typer.Typer) -> None:
    """Add ``autotune mlx`` to the main command."""
    app.add_typer(mlx_app, name="mlx")
