"""Download progress as Rich bars, one per file, for the chat's `/pull` and `autotune pull`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

__all__ = ["show_pull"]


async def show_pull(steps: AsyncIterator[Any], console: Console) -> None:
    """A bar per step that has a size (a file); other steps as a dim line, except the final
    "success", which the caller words itself."""
    tasks: dict[str, Any] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        async for step in steps:
            if step.total:
                if step.status not in tasks:
                    tasks[step.status] = progress.add_task(step.status[:40], total=step.total)
                progress.update(tasks[step.status], completed=step.completed or 0, total=step.total)
            elif step.status != "success":
                progress.console.print(Text(step.status, style="dim"))
