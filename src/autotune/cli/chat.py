"""``autotune chat`` and ``autotune run MODEL`` (a memory pre-flight, then the chat)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NoReturn

import typer

from autotune.cli._common import console, err_console, fail
from autotune.cli._common import run as run_async
from autotune.cli._help import PlainCommand
from autotune.ground.config import PROFILE_CHOICES, get_settings
from autotune.operations.preflight import Preflight, cap_memory, fit_check, preflight
from autotune.tuning.preflight import MIN_CONTEXT

if TYPE_CHECKING:
    from autotune.chat.repl import ChatOptions
    from autotune.runtime import Runtime

__all__ = ["register"]


# --------------------------------------------------------------------------- helpers


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
                runtime, options, interactive=interactive, check_fit=fit_check(runtime)
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
                cap_memory(runtime, found.suggested_estimate.total)
                console.print(f"Context capped at {n:,} tokens for this chat.")
            elif context:
                cap_memory(runtime, found.estimate.total)
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
