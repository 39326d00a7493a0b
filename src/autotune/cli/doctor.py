"""``autotune doctor``: whether this autotune can work here (its data folder, the engines)."""

from __future__ import annotations

import typer

from autotune.cli._common import console, print_json
from autotune.cli._help import PlainCommand
from autotune.cli._tables import details_table
from autotune.ground.config import get_settings
from autotune.ground.units import format_bytes

__all__ = ["register"]


def doctor(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Check the data folder (AUTOTUNE_HOME): that it exists, can be written and has room.

    Exits with status 1 when something stops autotune from storing conversations,
    telemetry or KV files (a full disk, a read-only folder).
    """
    from autotune.operations.storage import check_data_folder

    folder = check_data_folder(get_settings().home, probe_write=True)
    if json_out:
        print_json({"ok": folder.ok, "data_folder": folder.as_dict()})
    else:
        table = details_table()
        mark = "[green]ok[/]" if folder.ok else f"[bold red]{folder.status}[/]"
        free = f", {format_bytes(folder.free_bytes)} free" if folder.free_bytes is not None else ""
        table.add_row("data folder", f"{mark}{free} — {folder.message}")
        console.print(table)
    if not folder.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command(cls=PlainCommand)(doctor)
