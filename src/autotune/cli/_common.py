"""What every command shares: the consoles, JSON output, running async code, readable errors."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from autotune.ground.serialize import to_jsonable

__all__ = ["console", "err_console", "fail", "print_json", "run", "to_jsonable"]

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
