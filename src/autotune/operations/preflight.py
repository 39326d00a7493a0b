"""The memory pre-flight of a load, on the engine that would run it, and the cap a chat may
put on its memory once the user accepted a smaller context (``autotune run``).

The judgement itself is pure (:mod:`autotune.tuning.preflight`); this reads the model's
metadata from its engine and the memory budget from the machine as it is now.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from autotune.ground.errors import NotSupported
from autotune.ground.units import format_bytes
from autotune.hardware.profile import effective_budget, safety_reserve
from autotune.runtime import Runtime
from autotune.tuning.preflight import Preflight, analyse

__all__ = ["FitCheck", "Preflight", "cap_memory", "fit_check", "preflight"]

#: ``(model, profile) → None`` when a load is safe, else one sentence with the numbers.
FitCheck = Callable[[str, str], Awaitable[str | None]]


async def preflight(
    runtime: Runtime, model: str, profile: str, *, n_ctx: int | None = None
) -> Preflight | None:
    """The pre-flight for ``model`` on the engine serving it; None when memory is not ours to
    plan (a remote engine) or the engine gives no architecture metadata."""
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


def fit_check(runtime: Runtime) -> FitCheck:
    """The check a chat runs before each model or profile switch."""

    async def check(model: str, profile: str) -> str | None:
        found = await preflight(runtime, model, profile)
        return found.problem() if found is not None else None

    return check


def cap_memory(runtime: Runtime, total: int) -> None:
    """Hold this runtime's loads to ``total`` bytes: the planner's no-swap guard then caps every
    load at the context those bytes allow, so the context never grows past the accepted one."""
    runtime.pipeline.settings = runtime.settings.model_copy(update={"memory_budget": total})
