"""``autotune proof``: the raw engine and autotune side by side on this machine, honestly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from autotune.bench.proof import DEFAULT_SCENARIOS, SCENARIOS, ProofResult
from autotune.cli._common import console, err_console, print_json, progress_bar, run
from autotune.cli._help import PlainCommand
from autotune.cli._tables import Column, print_table
from autotune.cli.proof_kv import KV_SCENARIOS, run_kv
from autotune.ground.config import Settings, get_settings
from autotune.ground.serialize import to_jsonable
from autotune.ground.units import format_bytes

__all__ = ["register", "result_rows"]

_HEADER = [
    "scenario",
    "side",
    "TTFT median ms",
    "TTFT p90 ms",
    "prefill median ms",
    "load median ms",
    "tok/s median",
    "drafts accepted",
    "cached",
    "context",
    "KV cache",
    "engine RSS",
    "errors",
]


def _f(stats: dict[str, float], key: str = "median", fmt: str = "{:.1f}") -> str:
    value = stats.get(key)
    return "—" if value is None else fmt.format(value)


def result_rows(result: ProofResult) -> list[list[str]]:
    """One row per scenario and side, for the table and the Markdown report."""
    rows = []
    for s in result.scenarios:
        for side in ("raw", "autotune"):
            f = getattr(s, side)
            rows.append(
                [
                    s.name,
                    "raw engine" if side == "raw" else "autotune",
                    _f(f.ttft_ms),
                    _f(f.ttft_ms, "p90"),
                    _f(f.prefill_ms),
                    _f(f.load_ms),
                    _f(f.decode_tps),
                    "—" if f.acceptance is None else f"{f.acceptance:.0%}",
                    "—" if f.cached_share is None else f"{f.cached_share:.0%}",
                    str(f.n_ctx or "—"),
                    format_bytes(f.kv_bytes),
                    format_bytes(f.rss_bytes),
                    str(f.errors),
                ]
            )
    return rows


def _markdown(result: ProofResult) -> str:
    lines = [
        f"# autotune proof: {result.model}",
        "",
        f"Engine: {result.engine}. {result.runs} runs per scenario, raw and autotune interleaved.",
        f"Raw engine settings (from the engine): {json.dumps(result.raw_settings)}.",
        f"autotune settings (its plan): {json.dumps(result.autotune_settings)}.",
        "",
        "| " + " | ".join(_HEADER) + " |",
        "|" + "---|" * len(_HEADER),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in result_rows(result)]
    lines += ["", "## Verdicts", ""]
    lines += [f"- **{s.name}** ({s.description}): {s.verdict}" for s in result.scenarios]
    if result.guard:
        lines += [
            "",
            "## What the memory guard does (pure planner decisions for this model)",
            "",
            "| case | RAM used | available | context | KV | batch | refused |",
            "|---|---|---|---|---|---|---|",
        ]
        for g in result.guard:
            lines.append(
                f"| {g['case']} | {g['ram_used']:.0%} | {format_bytes(g['available_bytes'])} | "
                f"{g['n_ctx']} | {g['kv']} | {g['batch'] or 'default'} | "
                f"{'yes: ' + g['refused'] if g['refused'] else 'no'} |"
            )
    lines += [
        "",
        f"Swap used before/after: {format_bytes(result.swap_before)} / "
        f"{format_bytes(result.swap_after)}.",
    ]
    lines += [f"- {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def proof(
    ctx: typer.Context,
    model: str = typer.Option(
        None,
        "--model",
        "-m",
        metavar="MODEL",
        help="Model to prove on (default: AUTOTUNE_DEFAULT_MODEL, the bundled smollm2:135m).",
    ),
    runs: int = typer.Option(
        3, "--runs", "-r", min=1, max=50, metavar="N", help="Runs per scenario."
    ),
    scenario: list[str] = typer.Option(
        None,
        "--scenario",
        "--scenarios",
        metavar="NAME[,NAME]",
        help=f"Only these scenarios ({', '.join([*SCENARIOS, *KV_SCENARIOS])}); repeatable or "
        f"comma-separated. Default: {', '.join(DEFAULT_SCENARIOS)}.",
    ),
    with_kv: bool = typer.Option(
        False,
        "--with-kv",
        "--with-resume",
        help="Add the KV scenarios: resume, agent, switch, switch-bounded, grow, swap-model.",
    ),
    with_cold: bool = typer.Option(False, "--with-cold", help="Add a cold-start scenario."),
    with_noswap: bool = typer.Option(
        False, "--with-noswap", help="Add swap figures and what the guard does at each tier."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    report: Path = typer.Option(
        None,
        "--report",
        metavar="DIR",
        help="Write JSON, a Markdown table and PNG charts to this folder.",
    ),
) -> None:
    """Measure the raw engine and autotune side by side, per scenario, on this machine.

    Runs on the embedded engine unless --backend names another; reads AUTOTUNE_THREADS and
    AUTOTUNE_MEMORY_BUDGET like the server does.
    """
    names = _scenario_names(scenario)
    settings = get_settings()
    model = model or settings.default_model
    kv_names = [n for n in names if n in KV_SCENARIOS] or (list(KV_SCENARIOS) if with_kv else [])
    main_names = [n for n in names if n in SCENARIOS]
    out: dict[str, Any] = {}
    result = None
    if main_names or not names:
        backend = (ctx.obj or {}).get("backend") or "embedded"
        result = run(
            lambda: _run_main(settings, backend, model, runs, main_names, with_cold, with_noswap)
        )
        out = to_jsonable(result)
        if report is not None:
            _write_report(result, out, report)
    if kv_names:
        out["kv"] = run_kv(settings, model, runs, kv_names, report, quiet=json_out)
    if json_out:
        print_json(out)
    elif result is not None:
        _print_result(result)


def _scenario_names(given: list[str] | None) -> list[str]:
    """The scenarios asked for (repeated or comma-separated), each checked."""
    names = [n.strip() for item in given or [] for n in item.split(",") if n.strip()]
    known = [*SCENARIOS, *KV_SCENARIOS]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise typer.BadParameter(f"unknown scenario {unknown[0]!r}; choose from {known}")
    return names


async def _run_main(
    settings: Settings,
    backend: str,
    model: str,
    runs: int,
    names: list[str],
    with_cold: bool,
    with_noswap: bool,
) -> ProofResult:
    from autotune.bench.proof import run_proof
    from autotune.runtime import open_runtime

    runtime = await open_runtime(settings, backend=backend)
    try:
        with progress_bar("starting the raw engine…") as progress:
            return await run_proof(
                runtime,
                model,
                runs=runs,
                scenarios=names or None,
                with_cold=with_cold,
                with_noswap=with_noswap,
                progress=progress,
            )
    finally:
        await runtime.aclose()


def _write_report(result: ProofResult, data: dict[str, Any], report: Path) -> None:
    from autotune.bench.charts import write_charts

    report.mkdir(parents=True, exist_ok=True)
    (report / "proof.json").write_text(json.dumps(data, indent=2) + "\n")
    (report / "proof.md").write_text(_markdown(result))
    charts = write_charts(result, report)
    err_console.print(f"report: {report / 'proof.md'}, {', '.join(str(c) for c in charts)}")


def _print_result(result: ProofResult) -> None:
    columns = [Column(h, right=h not in ("scenario", "side")) for h in _HEADER]
    title = f"autotune proof — {result.model}, {result.runs} runs"
    print_table(console, columns, result_rows(result), title=title)
    for s in result.scenarios:
        console.print(f"• [bold]{s.name}[/]: {s.verdict}")
    if result.guard:
        console.print("Memory guard (planner decisions for this model):")
        for g in result.guard:
            what = (
                f"refuses: {g['refused']}"
                if g["refused"]
                else (f"context {g['n_ctx']}, KV {g['kv']}, batch {g['batch'] or 'default'}")
            )
            console.print(
                f"  {g['case']:>11} (RAM {g['ram_used']:.0%} used, "
                f"{format_bytes(g['available_bytes'])} free): {what}"
            )
    console.print(
        f"Swap before/after: {format_bytes(result.swap_before)} / {format_bytes(result.swap_after)}"
    )


def register(app: typer.Typer) -> None:
    app.command("proof", cls=PlainCommand)(proof)
