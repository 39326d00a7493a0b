"""``autotune ls``, ``ps`` and ``recommend``: local models, loaded models, and what to pull."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import typer
from rich.table import Table

from autotune.backends.registry import BackendSet, open_backends
from autotune.cli._common import console, err_console, print_json, run
from autotune.ground.config import get_settings
from autotune.ground.errors import BackendError
from autotune.ground.serialize import to_jsonable
from autotune.ground.types import ModelMeta, RunningModel
from autotune.ground.units import format_bytes

__all__ = ["register"]

_VERDICT_STYLE = {
    "fits comfortably": "green",
    "tight": "yellow",
    "swap risk": "red",
    "will not fit": "bold red",
}


@dataclass
class _Row:
    name: str
    engines: list[str]
    size_bytes: int | None = None
    path: str | None = None
    meta: ModelMeta | None = None
    fit: Any = None
    problem: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _budget() -> tuple[int, Any]:
    from autotune.hardware.profile import detect_hardware, effective_budget

    profile = detect_hardware()
    return effective_budget(profile, get_settings().memory_budget), profile


async def _collect_local(
    backends: BackendSet, *, explicit: bool = False
) -> tuple[list[_Row], list[dict[str, str]]]:
    from autotune.models.discovery import discover
    from autotune.models.gguf import GGUFError, read_gguf_meta

    if explicit:  # an engine the user named must answer, or we say why and how to start it
        await backends.primary.list_models()
    inventory, found = await asyncio.gather(
        backends.inventory(fresh=True), asyncio.to_thread(discover)
    )
    rows: dict[str, _Row] = {}
    for engine in backends.order:
        for entry in inventory.get(engine, []):
            row = rows.setdefault(entry.name, _Row(entry.name, []))
            if engine not in row.engines:
                row.engines.append(engine)
            row.size_bytes = row.size_bytes or entry.size_bytes
            row.path = row.path or entry.path
    skipped = [{"path": str(s.path), "reason": s.reason} for s in found.skipped]
    by_name = {m.name: m for m in found.models}
    cold = [r for r in rows.values() if r.name in by_name]
    if cold:
        with err_console.status(f"Reading model metadata ({len(cold)} files)…"):
            for row in cold:
                local = by_name[row.name]
                try:
                    row.meta = await asyncio.to_thread(read_gguf_meta, local.path, local.name)
                except GGUFError as exc:
                    row.problem = str(exc)
                    skipped.append({"path": str(local.path), "reason": str(exc)})
    for row in rows.values():
        if row.meta is None and row.problem is None:
            backend = backends.get(row.engines[0])
            if backend is not None and backend.capabilities.running_models:
                with contextlib.suppress(BackendError):
                    row.meta = await backend.model_meta(row.name)
    return [r for r in rows.values() if r.problem is None], skipped


def ls(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """List every local model across engines, scored against this machine's memory."""
    from autotune.models.fit import assess_fit

    budget, _ = _budget()

    async def job() -> tuple[list[_Row], list[dict[str, str]]]:
        requested = (ctx.obj or {}).get("backend")
        backends = await open_backends(requested=requested)
        try:
            return await _collect_local(backends, explicit=requested not in (None, "auto"))
        finally:
            await backends.aclose()

    rows, skipped = run(job)
    for row in rows:
        if row.meta is not None and row.meta.block_count:
            try:
                row.fit = assess_fit(row.meta, budget)
            except ValueError as exc:  # metadata too thin to estimate: list it, unscored
                row.extra["note"] = str(exc)
    rows.sort(key=lambda r: (r.size_bytes or 0, r.name))
    if json_out:
        print_json(
            {"budget_bytes": budget, "skipped": skipped, "models": [_ls_json(r) for r in rows]}
        )
        return
    table = Table(title=f"Local models (budget {format_bytes(budget)})", title_justify="left")
    for col in (
        "model",
        "engine",
        "size",
        "quant",
        "params",
        "trained ctx",
        "verdict",
        "max ctx",
        "profile",
    ):
        table.add_column(
            col, justify="right" if col in ("size", "params", "trained ctx", "max ctx") else "left"
        )
    for r in rows:
        m, f = r.meta, r.fit
        verdict = f"[{_VERDICT_STYLE.get(f.verdict.value, '')}]{f.verdict.value}[/]" if f else "—"
        table.add_row(
            r.name,
            ", ".join(r.engines),
            format_bytes(r.size_bytes),
            (m.quantization if m else None) or "—",
            f"{m.parameter_count / 1e9:.2f}B" if m and m.parameter_count else "—",
            f"{m.context_length:,}" if m and m.context_length else "—",
            verdict,
            f"{f.max_context:,}" if f and f.max_context else "—",
            f.recommended_profile if f else "—",
        )
    console.print(table if rows else "No local models found.")
    for s in skipped:
        err_console.print(f"[yellow]skipped[/] {s['path']}: {s['reason']}")


def _ls_json(r: _Row) -> dict[str, Any]:
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


async def _served_models() -> tuple[list[RunningModel], str | None]:
    """Models a running ``autotune serve`` holds in its embedded engine."""
    settings = get_settings()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = f"http://{host}:{settings.port}/api/running_models"
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    try:
        async with httpx.AsyncClient(timeout=settings.probe_timeout + 0.7) as client:
            reply = await client.get(url, headers=headers)
        data = reply.json()
    except (httpx.HTTPError, ValueError):
        return [], None
    if reply.status_code != 200 or not isinstance(data, dict):
        return [], None
    out = []
    for item in data.get("models", []):
        if isinstance(item, dict) and item.get("backend") == "embedded":
            fields = {k: item.get(k) for k in RunningModel.__dataclass_fields__ if k in item}
            model = RunningModel(**fields)
            model.backend = f"autotune serve :{settings.port}"
            out.append(model)
    return out, url


def ps(
    ctx: typer.Context,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show models loaded in memory across engines, including a running ``autotune serve``."""

    upstreams: list[dict[str, Any]] = []

    async def job() -> tuple[list[RunningModel], dict[str, str]]:
        requested = (ctx.obj or {}).get("backend")
        explicit = requested not in (None, "auto")
        backends = await open_backends(requested=requested)
        found: list[RunningModel] = []
        errors: dict[str, str] = {}
        try:
            for name in backends.order:
                backend = backends.backends[name]
                if backend.upstream_states() is not None:
                    await backend.health()  # reads each upstream's state now
                    upstreams.extend(
                        {"backend": name, **u} for u in backend.upstream_states() or []
                    )
                if name == "embedded" or not backend.capabilities.running_models:
                    continue  # this process's embedded engine has loaded nothing
                try:
                    found.extend(await backend.running_models())
                except BackendError as exc:
                    if explicit:
                        raise  # the engine the user named must answer
                    errors[name] = str(exc)
        finally:
            await backends.aclose()
        served, _ = await _served_models()
        return found + served, errors

    models, errors = run(job)
    if json_out:
        print_json({"models": to_jsonable(models), "errors": errors, "upstreams": upstreams})
        return
    if upstreams:
        utable = Table(title="Router upstreams", title_justify="left")
        for col in (
            "name",
            "url",
            "kind",
            "state",
            "running",
            "waiting",
            "KV used",
            "cache hits",
            "served",
            "failed",
        ):
            utable.add_column(col)
        for u in upstreams:
            state = "[green]up[/]" if u["state"] == "up" else "[red]down[/]"
            pct = lambda v: "—" if v is None else f"{v:.0%}"  # noqa: E731
            utable.add_row(
                u["name"],
                u["url"],
                u["kind"],
                state,
                str(u["running"] or "—"),
                str(u["waiting"] or "—"),
                pct(u["kv_usage"]),
                pct(u["prefix_hit_rate"]),
                str(u["served"]),
                str(u["failed"]),
            )
        console.print(utable)
    if not models:
        console.print("No models are loaded.")
    else:
        table = Table(title="Loaded models", title_justify="left")
        for col in ("model", "engine", "RAM", "VRAM", "context", "quant", "loaded", "until"):
            table.add_column(col)
        now = time.time()
        for m in models:
            table.add_row(
                m.name,
                m.backend,
                format_bytes(m.size_bytes),
                format_bytes(m.vram_bytes) if m.vram_bytes else "—",
                f"{m.context_length:,}" if m.context_length else "—",
                m.quantization or "—",
                _ago(now - m.loaded_at) if m.loaded_at else "—",
                "forever" if m.expires_at is None else _ago(m.expires_at - now, future=True),
            )
        console.print(table)
    for name, problem in errors.items():
        err_console.print(f"[yellow]{name}[/]: {problem}")


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


def recommend(
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    limit: int = typer.Option(10, "--limit", "-n", help="How many to show (0 = all)."),
    context: int = typer.Option(8192, "--context", help="Context tokens to plan for."),
) -> None:
    """Rank well-known open models to pull for this machine: fit, quality and honest speed."""
    from autotune.models.catalog import recommend as rank

    budget, profile = _budget()
    recs = rank(
        budget,
        profile.memory_bandwidth_gbs,
        bandwidth_source=profile.bandwidth_source,
        context_tokens=context,
        memory_for=_catalog_memory,
    )
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
    table = Table(
        title=f"What to pull (budget {format_bytes(budget)}, {context:,}-token context)",
        title_justify="left",
    )
    for col in ("#", "model", "quant", "memory", "fit", "quality", "speed", "note"):
        table.add_column(col)
    for r in shown:
        quality = (
            f"{r.quality_source.name} {r.quality_source.score:g}" if r.quality_source else "unknown"
        )
        style = _VERDICT_STYLE.get(r.fit, "")
        table.add_row(
            str(r.rank),
            r.tag or r.name,
            r.quant,
            format_bytes(r.memory_bytes),
            f"[{style}]{r.fit}[/]",
            quality,
            r.speed_text,
            ", ".join(r.labels),
        )
    console.print(table)
    console.print(
        f"Speed is an upper bound: decoding reads every active weight once per token, so "
        f"tokens/s ≤ {profile.memory_bandwidth_gbs:g} GB/s ÷ bytes per token. "
        f"Bandwidth: {profile.bandwidth_source}."
    )
    console.print(
        "Quality: published MMLU of the model or its base checkpoint; `--json` cites each source."
    )


def _catalog_memory(model: Any, quant: str, ctx: int) -> int:
    """The shared estimator (weights + KV + compute + overhead) for a catalog entry."""
    from autotune.models.catalog import catalog_meta
    from autotune.models.estimate import estimate_memory

    return estimate_memory(catalog_meta(model, quant), ctx).total


def show(
    ctx: typer.Context,
    model: str = typer.Argument(..., help="A model name, e.g. smollm2:135m or qwen3:8b."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a model's architecture and how it fits this machine under each profile."""
    from autotune.ground.profiles import PROFILES
    from autotune.models.fit import assess_fit, profile_context

    async def job() -> tuple[str, ModelMeta]:
        backends = await open_backends(requested=(ctx.obj or {}).get("backend"))
        try:
            backend, name = await backends.resolve(model)
            return backend.name, await backend.model_meta(name)
        finally:
            await backends.aclose()

    engine, meta = run(job)
    budget, _ = _budget()
    fits = {}
    if meta.block_count:
        for name, p in PROFILES.items():
            n_ctx = profile_context(meta, name)
            fits[name] = assess_fit(
                meta,
                budget,
                n_ctx=n_ctx,
                cache_type_k=p.kv_cache_type,
                cache_type_v=p.kv_cache_type,
            )
    if json_out:
        profiles = {
            k: {
                "n_ctx": f.n_ctx,
                "verdict": f.verdict.value,
                "estimate": {**to_jsonable(f.estimate), "total": f.estimate.total},
                "reason": f.reason,
            }
            for k, f in fits.items()
        }
        print_json(
            {
                "engine": engine,
                "meta": to_jsonable(meta),
                "budget_bytes": budget,
                "profiles": profiles,
            }
        )
        return
    table = Table(show_header=False, box=None, padding=(0, 2))
    kv = meta.head_count_kv
    kv_text = f"{min(kv)}–{max(kv)} (per layer)" if isinstance(kv, list) else str(kv or "—")
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
    if fits:
        ptable = Table(
            title=f"Fit per profile (budget {format_bytes(budget)})", title_justify="left"
        )
        for col in ("profile", "context", "KV", "memory", "verdict"):
            ptable.add_column(col)
        for name, f in fits.items():
            style = _VERDICT_STYLE.get(f.verdict.value, "")
            verdict = f"[{style}]{f.verdict.value}[/]"
            kv = PROFILES[name].kv_cache_type
            ptable.add_row(name, f"{f.n_ctx:,}", kv, format_bytes(f.estimate.total), verdict)
        console.print(ptable)


def register(app: typer.Typer) -> None:
    app.command("ls")(ls)
    app.command("show")(show)
    app.command("ps")(ps)
    app.command("recommend")(recommend)
