"""``autotune tune``: measure load-time settings on this machine and store the best per profile."""

from __future__ import annotations

import asyncio
import time

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from autotune.cli._common import console, err_console, fail, print_json, run
from autotune.ground.config import get_settings
from autotune.ground.serialize import to_jsonable
from autotune.ground.units import format_bytes

__all__ = ["register"]


def tune(
    ctx: typer.Context,
    model: str = typer.Argument(None, help="Model to tune (default: the default model)."),
    budget: float = typer.Option(120.0, "--budget", min=10, help="Seconds the sweep may take."),
    show: bool = typer.Option(False, "--show", help="List stored results instead of measuring."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Sweep batch, threads and flash attention on this machine; the planner uses the winners."""
    from autotune.store.db import Database
    from autotune.store.tuning import TuningStore

    settings = get_settings()
    if show:
        store = TuningStore(Database(settings.db_path))
        rows = store.rows()
        store.db.close()
        if json_out:
            print_json({"results": rows})
        elif not rows:
            console.print("Nothing tuned yet: run `autotune tune MODEL`.")
        else:
            _show(rows)
        return
    model = model or settings.default_model

    async def job() -> tuple[str, str, object]:
        from autotune.backends.registry import open_backends
        from autotune.bench.sweep import sweep
        from autotune.hardware.profile import detect_hardware

        backends = await open_backends(settings, requested=(ctx.obj or {}).get("backend"))
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
                    progress=lambda label, frac: bar.update(
                        task, description=label, completed=frac
                    ),
                )
            return backend.name, name, result
        finally:
            await backends.aclose()

    engine, name, result = run(job)
    from autotune.bench.sweep import SweepResult
    from autotune.store.db import Database
    from autotune.store.tuning import TuningStore

    assert isinstance(result, SweepResult)
    if not result.chosen:
        raise fail(f"Tuning {name} failed: {'; '.join(result.notes)}")
    store = TuningStore(Database(settings.db_path))
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
    store.db.close()
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
    table = Table(
        title=f"{name}: {len(result.trials)} settings measured in {result.elapsed:.0f}s",
        title_justify="left",
    )
    for col in ("settings", "prefill tok/s", "decode tok/s", "RSS", ""):
        table.add_column(col, justify="left" if col in ("settings", "") else "right")
    winners = {id(t) for t in result.chosen.values()}
    for t in result.trials:
        mark = "defaults" if t is result.baseline else ""
        if id(t) in winners:
            mark = (mark + " chosen").strip()
        table.add_row(
            t.candidate.label(),
            f"{t.prefill_tps or 0:.0f}",
            f"{t.decode_tps or 0:.1f}",
            format_bytes(t.rss_bytes),
            t.error or mark,
        )
    console.print(table)
    if result.defaults_best:
        console.print("The engine's defaults are already the best here; stored them as measured.")
    for note in result.notes:
        console.print(f"• {note}")
    console.print(
        f"Stored for profiles {', '.join(result.chosen)}; the planner uses them from "
        "now on (`autotune tune --show`)."
    )


def _show(rows: list[dict[str, object]]) -> None:
    table = Table(title="Stored tuning results", title_justify="left")
    for col in (
        "engine",
        "model",
        "profile",
        "settings",
        "prefill tok/s",
        "decode tok/s",
        "vs defaults",
        "measured",
    ):
        table.add_column(col)
    for r in rows:
        s = r["settings"]
        assert isinstance(s, dict)
        text = " ".join(f"{k}={v}" for k, v in s.items() if v is not None)
        base = (r["baseline_prefill_tps"] or 0) * (r["baseline_decode_tps"] or 0)
        mine = (r["prefill_tps"] or 0) * (r["decode_tps"] or 0)
        gain = (
            "defaults"
            if r["defaults_best"]
            else (f"{(mine / base) ** 0.5 - 1:+.0%}" if base else "—")
        )
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(r["measured_at"])))  # type: ignore[arg-type]
        table.add_row(
            str(r["backend"]),
            str(r["model"]),
            str(r["profile"]),
            text,
            f"{r['prefill_tps'] or 0:.0f}",
            f"{r['decode_tps'] or 0:.1f}",
            gain,
            when,
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("tune")(tune)
