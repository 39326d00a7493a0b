"""``autotune telemetry``: the last requests (engine timings, memory) and notable events."""

from __future__ import annotations

import time
from typing import Any

import typer

from autotune.cli._common import console, print_json
from autotune.cli._help import PlainCommand
from autotune.cli._tables import Column, print_table
from autotune.ground.config import get_settings
from autotune.ground.units import format_bytes

__all__ = ["register"]


def _clock(ts: float | None) -> str:
    return time.strftime("%m-%d %H:%M:%S", time.localtime(ts)) if ts else "—"


def _num(value: float | None, fmt: str = "{:.0f}") -> str:
    return "—" if value is None else fmt.format(value)


def telemetry(
    events: bool = typer.Option(False, "--events", help="Show notable events instead of runs."),
    limit: int = typer.Option(
        20, "--limit", "-n", min=1, max=1000, metavar="N", help="How many to show."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show the last requests with the engine's own timings, or the notable events.

    Prompt text is never stored in telemetry. Reads the database under AUTOTUNE_HOME.
    """
    from autotune.store.db import Database
    from autotune.store.telemetry import TelemetryStore

    store = TelemetryStore(Database(get_settings().db_path))
    try:
        rows = store.events(limit) if events else store.runs(limit)
    finally:
        store.db.close()
    if json_out:
        print_json({"events": rows} if events else {"runs": rows})
    elif not rows:
        console.print("No events recorded yet." if events else "No requests recorded yet.")
    elif events:
        _print_events(rows)
    else:
        _print_runs(rows)


_EVENT_COLUMNS = (Column("time"), Column("event"), Column("model", name=True), Column("detail"))


def _print_events(rows: list[dict[str, Any]]) -> None:
    cells = [
        [
            _clock(e["at"]),
            e["kind"],
            e["model"] or "—",
            ", ".join(f"{k}={v}" for k, v in e["detail"].items()),
        ]
        for e in rows
    ]
    print_table(console, _EVENT_COLUMNS, cells, title=f"Last {len(rows)} events")


#: Request columns, most important first (a narrow terminal keeps the leading ones).
_RUN_COLUMNS = (
    Column("time"),
    Column("model", name=True),
    Column("status"),
    Column("TTFT ms", right=True),
    Column("tok/s", right=True),
    Column("prompt", right=True),
    Column("cached", right=True),
    Column("reload"),
    Column("ctx", right=True),
    Column("profile"),
    Column("engine", name=True),
    Column("RAM Δ", right=True),
    Column("swap Δ", right=True),
)


def _run_cells(r: dict[str, Any]) -> list[str]:
    """One request, in :data:`_RUN_COLUMNS` order."""
    ram = (r["ram_after"] - r["ram_before"]) if r["ram_after"] and r["ram_before"] else None
    return [
        _clock(r["started_at"]),
        r["model"] or "—",
        r["status"],
        _num(r["ttft_ms"]),
        _num(r["tokens_per_s"], "{:.1f}"),
        _num(r["prompt_tokens"]),
        _num(r["cached_tokens"]),
        {True: "yes", False: "no", None: "—"}[r["reloaded"]],
        _num(r["n_ctx"]),
        r["profile"] or "—",
        r["backend"] or "—",
        format_bytes(ram) if ram is not None else "—",
        format_bytes(r["swap_delta"]) if r["swap_delta"] else "—",
    ]


def _print_runs(rows: list[dict[str, Any]]) -> None:
    cells = [_run_cells(r) for r in rows]
    print_table(console, _RUN_COLUMNS, cells, title=f"Last {len(rows)} requests")


def register(app: typer.Typer) -> None:
    app.command("telemetry", cls=PlainCommand)(telemetry)
