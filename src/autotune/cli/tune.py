"""``autotune tune``: measure load-time settings on this machine and store the best per profile.

Two measurements: the load-time settings sweep (threads, batch, flash attention, KV type) and
then speculative decoding (none vs each n-gram mode vs a draft model with the target's
vocabulary, when one is on disk), on input-copying edits and on free chat.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
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
    from autotune.bench.sweep import SpecSweep, SweepResult
    from autotune.ground.tuned import SpecCandidate
    from autotune.store.tuning import TuningStore

__all__ = ["register"]


def tune(
    ctx: typer.Context,
    model: str = typer.Argument(
        None, metavar="MODEL", help="Model to tune (default: AUTOTUNE_DEFAULT_MODEL)."
    ),
    budget: float = typer.Option(
        120.0, "--budget", min=10, metavar="SECONDS", help="Seconds the sweep may take."
    ),
    speculation: bool = typer.Option(
        True,
        "--speculation/--no-speculation",
        help="Also measure speculative decoding (n-gram modes, a draft model).",
    ),
    spec_budget: float = typer.Option(
        120.0,
        "--spec-budget",
        min=10,
        metavar="SECONDS",
        help="Seconds the speculative decoding measurement may take.",
    ),
    draft: str = typer.Option(
        None,
        "--draft",
        metavar="MODEL",
        help="Also measure this draft model (it must share MODEL's vocabulary).",
    ),
    show: bool = typer.Option(False, "--show", help="List stored results instead of measuring."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Sweep batch, threads and flash attention on this machine; the planner uses the winners.

    Then measures speculative decoding against none on edits and on free chat, and keeps a
    mode only where it pays. Runs on the embedded engine; results are stored in the database
    under AUTOTUNE_HOME.
    """
    settings = get_settings()
    if show:
        _show_stored(settings, json_out=json_out)
        return
    requested = (ctx.obj or {}).get("backend")
    plan = _Plan(budget, spec_budget if speculation else None, draft)
    engine, name, result, spec = run(
        lambda: _measure(settings, model or settings.default_model, plan, requested)
    )
    if not result.chosen:
        raise fail(f"Tuning {name} failed: {'; '.join(result.notes)}")
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
                "speculation": None if spec is None else _spec_json(spec),
            }
        )
        return
    _print_sweep(name, result)
    if spec is not None:
        _print_speculation(spec)


@dataclass(frozen=True)
class _Plan:
    """What to measure: the sweep's budget, speculation's (None: not measured), a draft."""

    budget: float
    spec_budget: float | None
    draft: str | None


async def _measure(
    settings: Settings, model: str, plan: _Plan, requested: str | None
) -> tuple[str, str, SweepResult, SpecSweep | None]:
    """Resolve ``model`` and sweep it on an engine that lets autotune choose load settings;
    the winners are stored for the planner."""
    from autotune.bench.sweep import sweep, sweep_speculation
    from autotune.operations.sweep import tune_target
    from autotune.runtime import open_runtime

    runtime = await open_runtime(settings, backend=requested, start_sampler=False)
    try:
        target = await tune_target(
            runtime, model, draft=plan.draft, speculation=plan.spec_budget is not None
        )
        hw = runtime.hardware
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        ) as bar:
            task = bar.add_task("measuring the defaults…", total=1.0)

            def progress(label: str, frac: float) -> None:
                bar.update(task, description=label, completed=frac)

            result = await sweep(
                target.meta,
                physical_cores=hw.physical_cores,
                logical_cores=hw.logical_cores,
                budget=plan.budget,
                progress=progress,
            )
            spec = None
            if plan.spec_budget is not None and result.chosen:
                spec = await sweep_speculation(
                    target.meta,
                    _winner_settings(result),
                    _spec_candidates(target.drafts),
                    budget=plan.spec_budget,
                    progress=progress,
                )
                if not target.drafts:
                    spec.notes.append(
                        "no draft model with this model's vocabulary is on disk (--draft MODEL "
                        "names one); n-gram modes need none"
                    )
        if result.chosen:
            _store(runtime.tuning, target.engine, target.name, result, spec)
        return target.engine, target.name, result, spec
    finally:
        await runtime.aclose()


def _winner_settings(result: SweepResult) -> dict[str, object]:
    """The load settings every speculation trial gets: the balanced winner's, f16 KV."""
    c = result.chosen["balanced"].candidate
    settings: dict[str, object] = {"n_ctx": 4096, "cache_type_k": "f16", "cache_type_v": "f16"}
    for key in ("n_threads", "n_batch", "n_ubatch", "flash_attn"):
        value = getattr(c, key)
        if value is not None:
            settings[key] = value
    return settings


def _spec_candidates(drafts: list[SpecCandidate]) -> list[SpecCandidate]:
    from autotune.bench.sweep import SPEC_ORDER
    from autotune.ground.tuned import SpecCandidate

    return [SpecCandidate(mode) for mode in SPEC_ORDER] + drafts


def _store(
    store: TuningStore, engine: str, name: str, result: SweepResult, spec: SpecSweep | None
) -> None:
    """Keep the winner of each profile, for the planner (speculation: the same measured
    choice for every profile; it is a property of the model and the machine)."""
    for profile, trial in result.chosen.items():
        store.save(
            engine,
            name,
            profile,
            trial,
            result.baseline,
            defaults_best=result.defaults_best,
            trials=len(result.trials),
            speculation=None if spec is None else spec.choice,
        )


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


_SPEC_COLUMNS = (
    Column("speculation"),
    Column("edit tok/s (none)", right=True),
    Column("chat tok/s (none)", right=True),
    Column("drafts accepted", right=True),
    Column("first token ms (none)", right=True),
    Column("same text", right=True),
    Column("RSS", right=True),
    Column(""),
)


def _vs(value: float | None, base: float | None, fmt: str = "{:.1f}") -> str:
    if value is None:
        return "—"
    text = fmt.format(value) + (f" ({fmt.format(base)})" if base is not None else "")
    return text + (f" {value / base - 1:+.0%}" if base else "")


def _print_speculation(spec: SpecSweep) -> None:
    rows = []
    for t in spec.trials:
        chosen = t.candidate.mode == spec.choice.mode and (
            t.candidate.draft_path == spec.choice.draft_path
        )
        rows.append(
            [
                t.candidate.label(),
                _vs(t.copy_tps, t.base_copy_tps),
                _vs(t.chat_tps, t.base_chat_tps),
                "—" if t.acceptance is None else f"{t.accepted}/{t.drafted} ({t.acceptance:.0%})",
                _vs(t.first_token_ms, t.base_first_token_ms, "{:.0f}"),
                f"{t.same_answers}/{t.answers}" if t.answers else "—",
                format_bytes(t.rss_bytes),
                t.error or ("chosen" if chosen else ""),
            ]
        )
    title = f"speculative decoding: {len(spec.trials)} modes in {spec.elapsed:.0f}s, vs none"
    print_table(console, _SPEC_COLUMNS, rows, title=title)
    if spec.choice.mode == "none":
        console.print(f"Speculative decoding stays off: {spec.choice.reason}.")
    else:
        console.print(f"Speculative decoding: {spec.choice.reason}; stored for every profile.")
    for note in spec.notes:
        console.print(f"• {note}")


def _spec_json(spec: SpecSweep) -> dict[str, Any]:
    trials = []
    for t in spec.trials:
        item = to_jsonable(t)
        item.update(copy_gain=t.copy_gain, chat_gain=t.chat_gain, acceptance=t.acceptance)
        trials.append(item)
    return {
        "elapsed": spec.elapsed,
        "budget": spec.budget,
        "trials": trials,
        "choice": to_jsonable(spec.choice),
        "notes": spec.notes,
    }


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
    Column("speculation"),
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
        _spec_cell(r.get("speculation")),
        str(r["backend"]),
        time.strftime("%Y-%m-%d %H:%M", time.localtime(float(r["measured_at"]))),
    ]


def _spec_cell(choice: dict[str, Any] | None) -> str:
    """``ngram_mod (edits +60%)``, ``none (does not pay)`` or ``not measured``."""
    if not choice:
        return "not measured"
    gain = choice.get("copy_gain")
    if choice.get("mode") == "none":
        return "none (does not pay)" if gain is not None else "none"
    label = choice["mode"] if choice["mode"] != "draft" else f"draft {choice.get('draft')}"
    return f"{label} (edits {gain:+.0%})" if gain is not None else label


def register(app: typer.Typer) -> None:
    app.command("tune", cls=PlainCommand)(tune)
