"""``autotune chat`` and ``autotune run MODEL`` (a memory pre-flight, then the chat)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NoReturn

import typer

from autotune.cli._common import console, err_console, fail
from autotune.cli._common import run as run_async
from autotune.cli._help import PlainCommand
from autotune.ground.config import PROFILE_CHOICES, get_settings
from autotune.ground.errors import NotSupported
from autotune.ground.profiles import PROFILES
from autotune.ground.types import ModelMeta
from autotune.ground.units import format_bytes
from autotune.models.estimate import MemoryEstimate, estimate_memory
from autotune.models.fit import (
    COMFORTABLE_FRACTION,
    MIN_CONTEXT,
    TIGHT_FRACTION,
    Verdict,
    max_context_that_fits,
    profile_context,
    verdict_for,
)

if TYPE_CHECKING:
    from autotune.chat.repl import ChatOptions, FitCheck
    from autotune.runtime import Runtime

__all__ = ["Preflight", "analyse", "choose_profile", "register"]


# --------------------------------------------------------------------------- pure analysis


def _share(total: int, budget: int) -> str:
    return f"{total / budget:.0%}" if budget > 0 else "∞"


def _kv_estimate(meta: ModelMeta, n_ctx: int, kv: str) -> MemoryEstimate:
    return estimate_memory(meta, n_ctx, cache_type_k=kv, cache_type_v=kv)


def choose_profile(meta: ModelMeta, budget: int) -> tuple[str, str]:
    """The profile ``--profile auto`` picks, and why (the rule of ``autotune ls``).

    quality when it fits comfortably (≤ 70 % of the budget) at its context, else balanced
    when that does, else fast.
    """
    tried: list[str] = []
    for name in ("quality", "balanced"):
        n_ctx = profile_context(meta, name)
        total = _kv_estimate(meta, n_ctx, PROFILES[name].kv_cache_type).total
        if verdict_for(total, budget) is Verdict.COMFORTABLE:
            why = (
                f"fits comfortably at its {n_ctx:,}-token context "
                f"({format_bytes(total)}, {_share(total, budget)} of the budget)"
            )
            return name, why + (f"; {'; '.join(tried)}" if tried else "")
        tried.append(f"{name} would use {_share(total, budget)} at {n_ctx:,} tokens")
    return "fast", (
        f"{'; '.join(tried)} (above the {COMFORTABLE_FRACTION:.0%} comfort line); "
        "fast uses the least memory"
    )


@dataclass(frozen=True)
class Preflight:
    """What loading a model at a profile's context costs, against the memory budget."""

    model: str
    engine: str
    profile: str
    profile_reason: str
    n_ctx: int
    kv_type: str
    estimate: MemoryEstimate
    budget: int
    budget_source: str
    ram_available: int
    ram_total: int
    verdict: Verdict
    #: The largest context out of the swap-risk zone (≤ 90 % of the budget), when the
    #: verdict is swap risk or will not fit; None when even 512 tokens are too many.
    suggested_context: int | None
    suggested_estimate: MemoryEstimate | None
    min_estimate: MemoryEstimate

    @property
    def ok(self) -> bool:
        return self.verdict in (Verdict.COMFORTABLE, Verdict.TIGHT)

    def lines(self) -> list[tuple[str, str]]:
        """(label, value) rows of the report."""
        e = self.estimate
        return [
            ("model", f"{self.model} on {self.engine}"),
            ("weights", format_bytes(e.weights)),
            ("KV cache", f"{format_bytes(e.kv_cache)} at {self.n_ctx:,} tokens ({self.kv_type})"),
            ("compute", format_bytes(e.compute)),
            ("overhead", format_bytes(e.overhead)),
            (
                "total",
                f"{format_bytes(e.total)} of a {format_bytes(self.budget)} budget "
                f"({_share(e.total, self.budget)}; {self.budget_source})",
            ),
            (
                "RAM",
                f"{format_bytes(self.ram_available)} available of {format_bytes(self.ram_total)}",
            ),
            ("verdict", self.verdict.value),
            ("profile", f"{self.profile}: {self.profile_reason}"),
        ]

    def problem(self) -> str | None:
        """None when the load is safe, else one sentence with the numbers."""
        if self.ok:
            return None
        e = self.estimate
        text = (
            f"{self.model} needs {format_bytes(e.total)} at a {self.n_ctx:,}-token context "
            f"({self.kv_type} KV) but the memory budget is {format_bytes(self.budget)} "
            f"({_share(e.total, self.budget)}: {self.verdict.value})"
        )
        if self.suggested_context is not None and self.suggested_estimate is not None:
            return (
                f"{text}; a {self.suggested_context:,}-token context needs "
                f"{format_bytes(self.suggested_estimate.total)} and fits."
            )
        return (
            f"{text}; even a {MIN_CONTEXT}-token context needs "
            f"{format_bytes(self.min_estimate.total)}."
        )


def analyse(
    meta: ModelMeta,
    *,
    engine: str,
    budget: int,
    budget_source: str,
    ram_available: int,
    ram_total: int,
    profile: str,
    n_ctx: int | None = None,
) -> Preflight:
    """The pre-flight for ``meta`` under ``profile`` (``auto`` or a name) at ``n_ctx``.

    ``n_ctx`` defaults to the profile's context (its cap, or the trained context if smaller):
    the most the conversation may grow to. Raises ValueError when the metadata is too thin.
    """
    if profile == "auto":
        name, reason = choose_profile(meta, budget)
    else:
        name, reason = profile, "chosen with --profile"
    kv = PROFILES[name].kv_cache_type
    context = n_ctx or profile_context(meta, name)
    estimate = _kv_estimate(meta, context, kv)
    verdict = verdict_for(estimate.total, budget)
    suggested = None
    if verdict in (Verdict.SWAP_RISK, Verdict.WONT_FIT):
        safe = max_context_that_fits(
            meta, int(budget * TIGHT_FRACTION), cache_type_k=kv, cache_type_v=kv
        )
        if safe is not None and safe < context:
            suggested = safe
    return Preflight(
        model=meta.name,
        engine=engine,
        profile=name,
        profile_reason=reason,
        n_ctx=context,
        kv_type=kv,
        estimate=estimate,
        budget=budget,
        budget_source=budget_source,
        ram_available=ram_available,
        ram_total=ram_total,
        verdict=verdict,
        suggested_context=suggested,
        suggested_estimate=_kv_estimate(meta, suggested, kv) if suggested else None,
        min_estimate=_kv_estimate(meta, min(MIN_CONTEXT, context), kv),
    )


# --------------------------------------------------------------------------- I/O


async def preflight(
    runtime: Runtime, model: str, profile: str, *, n_ctx: int | None = None
) -> Preflight | None:
    """The pre-flight for ``model`` on the engine serving it; None when memory is not ours to
    plan (a remote engine) or the engine gives no architecture metadata."""
    from autotune.hardware.profile import effective_budget, safety_reserve

    backend, name = await runtime.backends.resolve(model)
    if backend.capabilities.remote:
        return None
    try:
        meta = await backend.model_meta(name)
    except NotSupported:
        return None
    if not meta.block_count:
        return None
    sample = runtime.pipeline.sampler.latest
    hardware = replace(runtime.hardware, ram_available=sample.ram_available)
    settings = runtime.settings
    budget = effective_budget(hardware, settings.memory_budget)
    source = (
        "AUTOTUNE_MEMORY_BUDGET"
        if settings.memory_budget is not None
        else f"available RAM minus a {format_bytes(safety_reserve(sample.ram_total))} reserve"
    )
    try:
        return analyse(
            meta,
            engine=backend.name,
            budget=budget,
            budget_source=source,
            ram_available=sample.ram_available,
            ram_total=sample.ram_total,
            profile=profile,
            n_ctx=n_ctx,
        )
    except ValueError:
        return None


def _fit_check(runtime: Runtime) -> FitCheck:
    async def check(model: str, profile: str) -> str | None:
        found = await preflight(runtime, model, profile)
        return found.problem() if found is not None else None

    return check


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def _check_profile(profile: str | None) -> None:
    if profile is not None and profile not in ("auto", *PROFILE_CHOICES):
        raise fail(
            f"Unknown profile {profile!r}.",
            f"Choose auto, {', '.join(PROFILE_CHOICES)}.",
            code=2,
        )


def _print_report(found: Preflight, *, to_stderr: bool) -> None:
    out = err_console if to_stderr else console
    out.print(f"[bold]Pre-flight for {found.model}[/]")
    for label, value in found.lines():
        style = ""
        if label == "verdict":
            style = "green" if found.ok else "bold red"
        out.print(f"  {label:<9} [{style}]{value}[/]" if style else f"  {label:<9} {value}")


async def _confirm(question: str) -> bool:
    return bool(await asyncio.to_thread(typer.confirm, question, default=True))


def _cap_memory(runtime: Runtime, total: int) -> None:
    """Hold this chat's loads to ``total`` bytes: the planner's no-swap guard then caps every
    load at the context those bytes allow, so the context never grows past the accepted one."""
    runtime.pipeline.settings = runtime.settings.model_copy(update={"memory_budget": total})


# --------------------------------------------------------------------------- commands

_MODEL_HELP = "Model to chat with (default: AUTOTUNE_DEFAULT_MODEL, the bundled smollm2:135m)."
_PROFILE_HELP = "Tuning profile: fast, balanced, quality, or auto (the one that fits)."


#: Options ``chat`` and ``run`` share.
_SYSTEM_OPTION = typer.Option(
    None, "--system", "-s", metavar="TEXT", help="System prompt for the conversation."
)
_NO_SWAP_OPTION = typer.Option(
    False, "--no-swap", help="Refuse a model the memory check calls a swap risk."
)
_VERBOSE_OPTION = typer.Option(
    False, "--verbose", "-v", help="Show each reply's plan and any recalled memories."
)
_MAX_TOKENS_OPTION = typer.Option(
    None, "--max-tokens", min=1, metavar="N", help="Cap each reply at this many tokens."
)


def chat(
    ctx: typer.Context,
    model: str = typer.Option(None, "--model", "-m", metavar="MODEL", help=_MODEL_HELP),
    profile: str = typer.Option(None, "--profile", "-p", metavar="PROFILE", help=_PROFILE_HELP),
    system: str = _SYSTEM_OPTION,
    conv_id: str = typer.Option(None, "--conv-id", metavar="ID", help="Resume this conversation."),
    no_swap: bool = _NO_SWAP_OPTION,
    verbose: bool = _VERBOSE_OPTION,
    max_tokens: int = _MAX_TOKENS_OPTION,
) -> None:
    """Chat in the terminal; piped input is read line by line and answered in plain text.

    Reads AUTOTUNE_DEFAULT_MODEL, AUTOTUNE_PROFILE, AUTOTUNE_MEMORY_BUDGET, AUTOTUNE_KEEP_ALIVE
    and AUTOTUNE_THREADS; conversations are kept in the database under AUTOTUNE_HOME.
    """
    from autotune.chat.repl import ChatOptions

    _check_profile(profile)
    settings = get_settings()

    async def prepare(runtime: Runtime, interactive: bool) -> ChatOptions:
        chosen = profile
        if chosen == "auto":
            found = await preflight(runtime, model or settings.default_model, "auto")
            chosen = found.profile if found is not None else settings.profile
        return ChatOptions(
            model=model,
            profile=chosen,
            system=system,
            conversation_id=conv_id,
            no_swap=no_swap,
            verbose=verbose,
            max_tokens=max_tokens,
        )

    _session(ctx, prepare)


def _session(
    ctx: typer.Context, prepare: Callable[[Runtime, bool], Awaitable[ChatOptions | int]]
) -> NoReturn:
    """Open the runtime, let ``prepare`` choose the options (or refuse with an exit status),
    chat, close; exits with the chat's status."""
    from autotune.chat.repl import run_chat
    from autotune.runtime import open_runtime

    interactive = _interactive()

    async def job() -> int:
        runtime = await open_runtime(
            get_settings(), backend=(ctx.obj or {}).get("backend"), index_turns=True
        )
        try:
            options = await prepare(runtime, interactive)
            if isinstance(options, int):
                return options
            return await run_chat(
                runtime, options, interactive=interactive, check_fit=_fit_check(runtime)
            )
        finally:
            await runtime.aclose()

    raise typer.Exit(run_async(job))


def run(
    ctx: typer.Context,
    model: str = typer.Argument(
        ..., metavar="MODEL", help="Model to run, e.g. smollm2:135m or qwen3:8b."
    ),
    profile: str = typer.Option("auto", "--profile", "-p", metavar="PROFILE", help=_PROFILE_HELP),
    context: int = typer.Option(
        None,
        "--context",
        min=MIN_CONTEXT,
        metavar="TOKENS",
        help="Context tokens to plan for (default: the profile's context).",
    ),
    system: str = _SYSTEM_OPTION,
    no_swap: bool = _NO_SWAP_OPTION,
    verbose: bool = _VERBOSE_OPTION,
    max_tokens: int = _MAX_TOKENS_OPTION,
) -> None:
    """Check that MODEL fits in memory (weights, KV cache, overhead), then chat with it.

    When it would swap, the largest context that fits is offered (asked in a terminal,
    refused with the numbers in a script). Reads AUTOTUNE_MEMORY_BUDGET (the budget the check
    uses), AUTOTUNE_PROFILE, AUTOTUNE_KEEP_ALIVE and AUTOTUNE_THREADS; conversations are kept
    in the database under AUTOTUNE_HOME.
    """
    from autotune.chat.repl import ChatOptions

    _check_profile(profile)
    settings = get_settings()

    async def prepare(runtime: Runtime, interactive: bool) -> ChatOptions | int:
        backend, name = await runtime.backends.resolve(model)
        found = await preflight(runtime, name, profile, n_ctx=context)
        chosen = profile if profile != "auto" else settings.profile
        if found is None:
            (console if interactive else err_console).print(
                f"{backend.name} gives no architecture metadata for {name}: it manages the "
                "model's memory itself, so there is no pre-flight."
            )
        else:
            chosen = found.profile
            _print_report(found, to_stderr=not interactive)
            if not found.ok:
                problem = found.problem() or ""
                n = found.suggested_context
                if n is None:
                    err_console.print(f"[bold red]refused:[/] {problem}")
                    err_console.print(
                        "  Try a smaller quantisation or model, free memory, or raise "
                        "AUTOTUNE_MEMORY_BUDGET."
                    )
                    return 1
                if not interactive:
                    err_console.print(f"[bold red]refused:[/] {problem}")
                    err_console.print(f"  Run it with `--context {n}` to use that context.")
                    return 1
                if not await _confirm(f"Use a {n:,}-token context instead?"):
                    err_console.print("Not started.")
                    return 1
                assert found.suggested_estimate is not None
                _cap_memory(runtime, found.suggested_estimate.total)
                console.print(f"Context capped at {n:,} tokens for this chat.")
            elif context:
                _cap_memory(runtime, found.estimate.total)
        return ChatOptions(
            model=name,
            profile=chosen,
            system=system,
            no_swap=no_swap,
            verbose=verbose,
            max_tokens=max_tokens,
            checked=True,
        )

    _session(ctx, prepare)


def register(app: typer.Typer) -> None:
    app.command("chat", cls=PlainCommand)(chat)
    app.command("run", cls=PlainCommand)(run)
