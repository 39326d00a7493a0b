"""What every command shares: the consoles, JSON output, running async code, readable errors."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from autotune.ground.serialize import to_jsonable

__all__ = [
    "console",
    "err_console",
    "fail",
    "print_json",
    "progress_bar",
    "run",
    "to_jsonable",
]

T = TypeVar("T")

console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(value), indent=2, ensure_ascii=False) + "\n")


def fail(message: str, hint: str | None = None, code: int = 1) -> typer.Exit:
    """Print a one-line error (and a hint) to stderr; return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}")
    if hint:
        err_console.print(f"  {hint}")
    return typer.Exit(code)


def run(factory: Callable[[], Awaitable[T]]) -> T:
    """Run one async job to completion from a synchronous command."""
    return asyncio.run(factory())  # type: ignore[arg-type]


@contextmanager
def progress_bar(first: str) -> Iterator[Callable[[str, int, int], None]]:
    """A progress bar on stderr (gone when done); yields ``update(label, done, total)``."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task(first, total=None)

        def update(label: str, done: int, total: int) -> None:
            bar.update(task, description=label, completed=done, total=total)

        yield update
