"""``autotune telemetry``: the last requests (engine timings, memory) and notable events."""

from __future__ import annotations

import time

import typer
from rich.table import Table

from autotune.cli._common import console, print_json
from autotune.ground.config import get_settings
from autotune.ground.units import format_bytes

__all__ = ["register"]


def _clock(ts: float | None) -> str:
    return time.strftime("%m-%d %H:%M:%S", time.localtime(ts)) if ts else "—"


def _num(value: float | None, fmt: str = "{:.0f}") -> str:
    return "—" if value is None else fmt.format(value)


def telemetry(
    events: bool = typer.Option(False, "--events", help="Show notable events instead of runs."),
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=1000, help="How many to show."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show the last requests with the engine's own timings, or the notable events.

    Prompt text is never stored in telemetry.
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
        return
    if not rows:
        console.print("No events recorded yet." if events else "No requests recorded yet.")
        return
    if events:
        table = Table(title=f"Last {len(rows)} events", title_justify="left")
        for col in ("time", "event", "model", "detail"):
            table.add_column(col)
        for e in rows:
            detail = ", ".join(f"{k}={v}" for k, v in e["detail"].items())
            table.add_row(_clock(e["at"]), e["kind"], e["model"] or "—", detail)
        console.print(table)
        return
    table = Table(title=f"Last {len(rows)} requests", title_justify="left")
    for col in (
        "time",
        "model",
        "engine",
        "profile",
        "status",
        "TTFT ms",
        "tok/s",
        "prompt",
        "cached",
        "reload",
        "ctx",
        "RAM Δ",
        "swap Δ",
    ):
        table.add_column(
            col,
            justify="right"
            if col not in ("time", "model", "engine", "profile", "status")
            else "left",
        )
    for r in rows:
        ram = (r["ram_after"] - r["ram_before"]) if r["ram_after"] and r["ram_before"] else None
        table.add_row(
            _clock(r["started_at"]),
            r["model"] or "—",
            r["backend"] or "—",
            r["profile"] or "—",
            r["status"],
            _num(r["ttft_ms"]),
            _num(r["tokens_per_s"], "{:.1f}"),
            _num(r["prompt_tokens"]),
            _num(r["cached_tokens"]),
            {True: "yes", False: "no", None: "—"}[r["reloaded"]],
            _num(r["n_ctx"]),
            format_bytes(ram) if ram is not None else "—",
            format_bytes(r["swap_delta"]) if r["swap_delta"] else "—",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("telemetry")(telemetry)
