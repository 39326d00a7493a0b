"""``autotune tune``: measure load-time settings on this machine and store the best per profile."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from autotune.cli._common import console, err_console, fail, print_json, run
from autotune.cli._help import PlainCommand
from autotune.cli._tables import Column, print_table
from autotune.ground.config import Settings, get_settings
from autotune.ground.serialize import to_jsonable
from autotune.ground.units import format_bytes

if TYPE_CHECKING:
    from autotune.bench.sweep import SweepResult

__all__ = ["register"]


def tune(
    ctx: typer.Context,
    model: str = typer.Argument(
        None, metavar="MODEL", help="Model to tune (default: AUTOTUNE_DEFAULT_MODEL)."
    ),
    budget: float = typer.Option(
        120.0, "--budget", min=10, metavar="SECONDS", help="Seconds the sweep may take."
    ),
    show: bool = typer.Option(False, "--show", help="List stored results instead of measuring."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Sweep batch, threads and flash attention on this machine; the planner uses the winners.

    Runs on the embedded engine; results are stored in the database under AUTOTUNE_HOME.
    """
    settings = get_settings()
    if show:
        _show_stored(settings, json_out=json_out)
        return
    requested = (ctx.obj or {}).get("backend")
    engine, name, result = run(
        lambda: _measure(settings, model or settings.default_model, budget, requested)
    )
    if not result.chosen:
        raise fail(f"Tuning {name} failed: {'; '.join(result.notes)}")
    _store(settings, engine, name, result)
    if json_out:
        print_json(
            {
                "engine": engine,
                "model": name,
                "elapsed": result.elapsed,
                "budget": result.budget,
                "defaults_best": result.defaults_best,
                "trials": to_jsonable(result.trials),
                "notes": result.notes,
                "chosen": {p: to_jsonable(t) for p, t in result.chosen.items()},
            }
        )
        return
    _print_sweep(name, result)


async def _measure(
    settings: Settings, model: str, budget: float, requested: str | None
) -> tuple[str, str, SweepResult]:
    """Resolve ``model`` and sweep it on an engine that lets autotune choose load settings."""
    from autotune.backends.registry import open_backends
    from autotune.bench.sweep import sweep
    from autotune.hardware.profile import detect_hardware

    backends = await open_backends(settings, requested=requested)
    try:
        backend, name = await backends.resolve(model)
        caps = backend.capabilities
        if not (caps.load_control and caps.kv_cache_type):
            raise fail(
                f"{backend.name} does not let autotune choose load-time settings, so "
                "there is nothing to sweep.",
                "Tuning runs on the embedded engine (--backend embedded).",
            )
        meta = await backend.model_meta(name)
        hw = await asyncio.to_thread(detect_hardware)
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        ) as bar:
            task = bar.add_task("measuring the defaults…", total=1.0)
            result = await sweep(
                meta,
                physical_cores=hw.physical_cores,
                logical_cores=hw.logical_cores,
                budget=budget,
                progress=lambda label, frac: bar.update(task, description=label, completed=frac),
            )
        return backend.name, name, result
    finally:
        await backends.aclose()


def _store(settings: Settings, engine: str, name: str, result: SweepResult) -> None:
    """Keep the winner of each profile, for the planner."""
    from autotune.store.db import Database
    from autotune.store.tuning import TuningStore

    store = TuningStore(Database(settings.db_path))
    try:
        for profile, trial in result.chosen.items():
            store.save(
                engine,
                name,
                profile,
                trial,
                result.baseline,
                defaults_best=result.defaults_best,
                trials=len(result.trials),
            )
    finally:
        store.db.close()


_SWEEP_COLUMNS = (
    Column("settings"),
    Column("prefill tok/s", right=True),
    Column("decode tok/s", right=True),
    Column("RSS", right=True),
    Column(""),
)


def _print_sweep(name: str, result: SweepResult) -> None:
    winners = {id(t) for t in result.chosen.values()}
    rows = []
    for t in result.trials:
        mark = "defaults" if t is result.baseline else ""
        if id(t) in winners:
            mark = (mark + " chosen").strip()
        rows.append(
            [
                t.candidate.label(),
                f"{t.prefill_tps or 0:.0f}",
                f"{t.decode_tps or 0:.1f}",
                format_bytes(t.rss_bytes),
                t.error or mark,
            ]
        )
    title = f"{name}: {len(result.trials)} settings measured in {result.elapsed:.0f}s"
    print_table(console, _SWEEP_COLUMNS, rows, title=title)
    if result.defaults_best:
        console.print("The engine's defaults are already the best here; stored them as measured.")
    for note in result.notes:
        console.print(f"• {note}")
    console.print(
        f"Stored for profiles {', '.join(result.chosen)}; the planner uses them from "
        "now on (`autotune tune --show`)."
    )


def _show_stored(settings: Settings, *, json_out: bool) -> None:
    from autotune.store.db import Database
    from autotune.store.tuning import TuningStore

    store = TuningStore(Database(settings.db_path))
    try:
        rows = store.rows()
    finally:
        store.db.close()
    if json_out:
        print_json({"results": rows})
    elif not rows:
        console.print("Nothing tuned yet: run `autotune tune MODEL`.")
    else:
        cells = [_stored_cells(r) for r in rows]
        print_table(console, _STORED_COLUMNS, cells, title="Stored tuning results")


_STORED_COLUMNS = (
    Column("model", name=True),
    Column("profile"),
    Column("settings"),
    Column("vs defaults", right=True),
    Column("prefill tok/s", right=True),
    Column("decode tok/s", right=True),
    Column("engine", name=True),
    Column("measured"),
)


def _gain(r: dict[str, Any]) -> str:
    """The winner's speed against the defaults: the geometric mean of prefill and decode."""
    if r["defaults_best"]:
        return "defaults"
    base = (r["baseline_prefill_tps"] or 0) * (r["baseline_decode_tps"] or 0)
    mine = (r["prefill_tps"] or 0) * (r["decode_tps"] or 0)
    return f"{(mine / base) ** 0.5 - 1:+.0%}" if base else "—"


def _stored_cells(r: dict[str, Any]) -> list[str]:
    settings = r["settings"]
    return [
        str(r["model"]),
        str(r["profile"]),
        " ".join(f"{k}={v}" for k, v in settings.items() if v is not None),
        _gain(r),
        f"{r['prefill_tps'] or 0:.0f}",
        f"{r['decode_tps'] or 0:.1f}",
        str(r["backend"]),
        time.strftime("%Y-%m-%d %H:%M", time.localtime(float(r["measured_at"]))),
    ]


def register(app: typer.Typer) -> None:
    app.command("tune", cls=PlainCommand)(tune)
