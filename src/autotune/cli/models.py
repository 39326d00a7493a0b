"""``autotune ls``, ``ps`` and ``recommend``: local models, loaded models, and what to pull."""

from __future__ import annotations

import time
from typing import Any

import typer

from autotune.cli._common import console, err_console, print_json, run
from autotune.cli._help import PlainCommand
from autotune.cli._tables import Column, details_table, print_table
from autotune.ground.config import get_settings
from autotune.ground.profiles import PROFILES
from autotune.ground.serialize import to_jsonable
from autotune.ground.types import ModelMeta, RunningModel
from autotune.ground.units import format_bytes
from autotune.operations.inventory import (
    Fit,
    LocalListing,
    ModelRow,
    Serve,
    ask_serve,
    local_models,
    machine_budget,
    profile_fits,
    recommendations,
    running_models,
    score,
)
from autotune.runtime import open_backends

__all__ = ["register"]

_VERDICT_STYLE = {
    "fits comfortably": "green",
    "tight": "yellow",
    "swap risk": "red",
    "will not fit": "bold red",
}


#: ``ls`` columns, most important first (a narrow terminal keeps the leading ones).
_LS_COLUMNS = (
    Column("model", name=True),
    Column("verdict"),
    Column("size", right=True),
    Column("max ctx", right=True),
    Column("profile"),
    Column("engine", name=True),
    Column("quant"),
    Column("params", right=True),
    Column("trained ctx", right=True),
)


def ls(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List every local model across engines, scored against this machine's memory.

    Reads the memory budget (AUTOTUNE_MEMORY_BUDGET), the engines' addresses
    (AUTOTUNE_OLLAMA_URL, AUTOTUNE_LMSTUDIO_URL, AUTOTUNE_LLAMACPP_URL, AUTOTUNE_OPENAI_URL)
    and the model folders (OLLAMA_MODELS, AUTOTUNE_MODELS_DIR).
    """
    budget, _ = machine_budget()

    async def job() -> LocalListing:
        requested = (ctx.obj or {}).get("backend")
        backends = await open_backends(requested=requested)
        try:
            with err_console.status("Reading model metadata…"):
                return await local_models(backends, explicit=requested not in (None, "auto"))
        finally:
            await backends.aclose()

    listing = run(job)
    rows, skipped = listing.rows, listing.skipped
    score(rows, budget)
    rows.sort(key=lambda r: (r.size_bytes or 0, r.name))
    if json_out:
        print_json(
            {"budget_bytes": budget, "skipped": skipped, "models": [_ls_json(r) for r in rows]}
        )
        return
    if rows:
        title = f"Local models (budget {format_bytes(budget)})"
        print_table(console, _LS_COLUMNS, [_ls_cells(r) for r in rows], title=title)
    else:
        console.print("No local models found.")
    for s in skipped:
        err_console.print(f"[yellow]skipped[/] {s['path']}: {s['reason']}")


def _ls_cells(r: ModelRow) -> list[str]:
    """One ``ls`` row, in :data:`_LS_COLUMNS` order."""
    m, f = r.meta, r.fit
    return [
        r.name,
        _verdict(f.verdict.value) if f else "—",
        format_bytes(r.size_bytes),
        f"{f.max_context:,}" if f and f.max_context else "—",
        f.recommended_profile if f else "—",
        ", ".join(r.engines),
        (m.quantization if m else None) or "—",
        f"{m.parameter_count / 1e9:.2f}B" if m and m.parameter_count else "—",
        f"{m.context_length:,}" if m and m.context_length else "—",
    ]


def _verdict(value: str) -> str:
    return f"[{_VERDICT_STYLE.get(value, '')}]{value}[/]"


def _ls_json(r: ModelRow) -> dict[str, Any]:
    m, f = r.meta, r.fit
    return {
        "name": r.name,
        "engines": r.engines,
        "size_bytes": r.size_bytes,
        "path": r.path,
        "architecture": m.architecture if m else None,
        "quantization": m.quantization if m else None,
        "parameter_count": m.parameter_count if m else None,
        "context_length": m.context_length if m else None,
        "verdict": f.verdict.value if f else None,
        "max_context": f.max_context if f else None,
        "recommended_profile": f.recommended_profile if f else None,
        "estimate": to_jsonable(f.estimate) | {"total": f.estimate.total} if f else None,
        "reason": f.reason if f else None,
    }


def ps(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show models loaded in memory across engines, including a running autotune serve.

    A running server is found at AUTOTUNE_HOST and AUTOTUNE_PORT (with AUTOTUNE_API_KEY when
    it has one); engines at AUTOTUNE_OLLAMA_URL, AUTOTUNE_LMSTUDIO_URL, AUTOTUNE_LLAMACPP_URL
    or AUTOTUNE_OPENAI_URL. The router (AUTOTUNE_ROUTER_CONFIG) is shown as the running serve
    sees it: its upstreams, their load and their counters.
    """

    async def job() -> tuple[list[RunningModel], dict[str, str], Serve]:
        requested = (ctx.obj or {}).get("backend")
        backends = await open_backends(requested=requested)
        try:
            found, errors, routers = await running_models(
                backends, explicit=requested not in (None, "auto")
            )
        finally:
            await backends.aclose()
        served = await ask_serve(get_settings())
        if routers and not served.answered:
            errors["router"] = (
                f"no autotune serve answers at {served.url}; the router runs inside it "
                "(start `autotune serve`, or set AUTOTUNE_HOST/AUTOTUNE_PORT to where it runs)"
            )
        return found + served.models, errors, served

    models, errors, served = run(job)
    if json_out:
        print_json({"models": to_jsonable(models), "errors": errors, "upstreams": served.upstreams})
        return
    if served.upstreams:
        _print_upstreams(served.upstreams)
    if models:
        _print_running(models)
    else:
        console.print("No models are loaded.")
    for name, problem in errors.items():
        err_console.print(f"[yellow]{name}[/]: {problem}")


_UPSTREAM_COLUMNS = (
    Column("name", name=True),
    Column("state"),
    Column("in flight", right=True),
    Column("running", right=True),
    Column("waiting", right=True),
    Column("KV used", right=True),
    Column("cache hits", right=True),
    Column("tok/s", right=True),
    Column("served", right=True),
    Column("failed", right=True),
    Column("kind"),
    Column("url", name=True),
)


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _count(value: float | None) -> str:
    """A count as a whole number; 0 is 0, only an unknown count is "—"."""
    return "—" if value is None else str(round(value))


def _rate(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _upstream_row(u: dict[str, Any]) -> list[str]:
    limit = u.get("limit")
    return [
        u["name"],
        "[green]up[/]" if u["state"] == "up" else "[red]down[/]",
        f"{_count(u.get('in_flight'))}/{limit}" if limit else _count(u.get("in_flight")),
        _count(u.get("running")),
        _count(u.get("waiting")),
        _pct(u.get("kv_usage")),
        _pct(u.get("prefix_hit_rate")),
        _rate(u.get("tokens_per_second")),
        _count(u.get("served")),
        _count(u.get("failed")),
        u["kind"],
        u["url"],
    ]


def _print_upstreams(upstreams: list[dict[str, Any]]) -> None:
    rows = [_upstream_row(u) for u in upstreams]
    print_table(
        console, _UPSTREAM_COLUMNS, rows, title="Router upstreams (as autotune serve sees them)"
    )
    windows = [float(u["rate_seconds"]) for u in upstreams if u.get("rate_seconds")]
    if windows:
        console.print(f"[dim]cache hits and tok/s: the last {max(windows):.0f} s of readings[/]")


_RUNNING_COLUMNS = (
    Column("model", name=True),
    Column("RAM", right=True),
    Column("context", right=True),
    Column("until"),
    Column("engine", name=True),
    Column("VRAM", right=True),
    Column("quant"),
    Column("loaded"),
)


def _print_running(models: list[RunningModel]) -> None:
    now = time.time()
    rows = [
        [
            m.name,
            format_bytes(m.size_bytes),
            f"{m.context_length:,}" if m.context_length else "—",
            "forever" if m.expires_at is None else _ago(m.expires_at - now, future=True),
            m.backend,
            format_bytes(m.vram_bytes) if m.vram_bytes else "—",
            m.quantization or "—",
            _ago(now - m.loaded_at) if m.loaded_at else "—",
        ]
        for m in models
    ]
    print_table(console, _RUNNING_COLUMNS, rows, title="Loaded models")


def _ago(seconds: float, *, future: bool = False) -> str:
    seconds = max(0, int(seconds))
    text = (
        f"{seconds}s"
        if seconds < 120
        else f"{seconds // 60}m"
        if seconds < 7200
        else f"{seconds // 3600}h"
    )
    return f"in {text}" if future else f"{text} ago"


_RECOMMEND_COLUMNS = (
    Column("#", right=True),
    Column("model", name=True),
    Column("quant"),
    Column("fit"),
    Column("speed"),
    Column("memory", right=True),
    Column("quality"),
    Column("note"),
)


def recommend(
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    limit: int = typer.Option(10, "--limit", "-n", metavar="N", help="How many to show (0 = all)."),
    context: int = typer.Option(
        8192, "--context", metavar="TOKENS", help="Context tokens to plan for."
    ),
) -> None:
    """Rank well-known open models to pull for this machine: fit, quality and honest speed.

    Reads the memory budget (AUTOTUNE_MEMORY_BUDGET).
    """
    budget, profile = machine_budget()
    recs = recommendations(budget, profile, context)
    shown = recs if limit <= 0 else recs[:limit]
    if json_out:
        print_json(
            {
                "budget_bytes": budget,
                "bandwidth_gbs": profile.memory_bandwidth_gbs,
                "bandwidth_source": profile.bandwidth_source,
                "context_tokens": context,
                "recommendations": to_jsonable(shown),
            }
        )
        return
    rows = [
        [
            str(r.rank),
            r.tag or r.name,
            r.quant,
            _verdict(r.fit),
            r.speed_text,
            format_bytes(r.memory_bytes),
            f"{r.quality_source.name} {r.quality_source.score:g}"
            if r.quality_source
            else "unknown",
            ", ".join(r.labels),
        ]
        for r in shown
    ]
    title = f"What to pull (budget {format_bytes(budget)}, {context:,}-token context)"
    print_table(console, _RECOMMEND_COLUMNS, rows, title=title)
    console.print(
        f"Speed is an upper bound: decoding reads every active weight once per token, so "
        f"tokens/s ≤ {profile.memory_bandwidth_gbs:g} GB/s ÷ bytes per token. "
        f"Bandwidth: {profile.bandwidth_source}."
    )
    console.print(
        "Quality: published MMLU of the model or its base checkpoint; `--json` cites each source."
    )


def show(
    ctx: typer.Context,
    model: str = typer.Argument(
        ..., metavar="MODEL", help="A model name, e.g. smollm2:135m or qwen3:8b."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a model's architecture and how it fits this machine under each profile.

    Reads the memory budget (AUTOTUNE_MEMORY_BUDGET) and the engines' addresses
    (AUTOTUNE_OLLAMA_URL and the others, as for ls).
    """

    async def job() -> tuple[str, ModelMeta]:
        backends = await open_backends(requested=(ctx.obj or {}).get("backend"))
        try:
            backend, name = await backends.resolve(model)
            return backend.name, await backend.model_meta(name)
        finally:
            await backends.aclose()

    engine, meta = run(job)
    budget, _ = machine_budget()
    fits = profile_fits(meta, budget)
    if json_out:
        print_json(
            {
                "engine": engine,
                "meta": to_jsonable(meta),
                "budget_bytes": budget,
                "profiles": {
                    k: {
                        "n_ctx": f.n_ctx,
                        "verdict": f.verdict.value,
                        "estimate": {**to_jsonable(f.estimate), "total": f.estimate.total},
                        "reason": f.reason,
                    }
                    for k, f in fits.items()
                },
            }
        )
        return
    _print_meta(meta, engine)
    if fits:
        _print_fits(fits, budget)


def _print_meta(meta: ModelMeta, engine: str) -> None:
    heads = meta.head_count_kv
    kv_text = (
        f"{min(heads)}–{max(heads)} (per layer)" if isinstance(heads, list) else str(heads or "—")
    )
    table = details_table()
    for label, value in (
        ("model", f"{meta.name} ({engine})"),
        ("architecture", meta.architecture or "—"),
        ("parameters", f"{meta.parameter_count / 1e9:.2f}B" if meta.parameter_count else "—"),
        ("quantization", meta.quantization or "—"),
        ("file", f"{format_bytes(meta.size_bytes)} {meta.path or ''}".strip()),
        ("layers / KV heads", f"{meta.block_count or '—'} / {kv_text}"),
        ("trained context", f"{meta.context_length:,}" if meta.context_length else "—"),
        ("sliding window", f"{meta.sliding_window:,}" if meta.sliding_window else "none"),
    ):
        table.add_row(label, value)
    console.print(table)


_FIT_COLUMNS = (
    Column("profile"),
    Column("context", right=True),
    Column("KV"),
    Column("memory", right=True),
    Column("verdict"),
)


def _print_fits(fits: dict[str, Fit], budget: int) -> None:
    rows = [
        [
            name,
            f"{f.n_ctx:,}",
            PROFILES[name].kv_cache_type,
            format_bytes(f.estimate.total),
            _verdict(f.verdict.value),
        ]
        for name, f in fits.items()
    ]
    title = f"Fit per profile (budget {format_bytes(budget)})"
    print_table(console, _FIT_COLUMNS, rows, title=title)


def register(app: typer.Typer) -> None:
    app.command("ls", cls=PlainCommand)(ls)
    app.command("show", cls=PlainCommand)(show)
    app.command("ps", cls=PlainCommand)(ps)
    app.command("recommend", cls=PlainCommand)(recommend)
