"""The start-up checks of ``autotune serve`` that need no engine: a memory budget this machine
can honour, and an engine choice (or router config) that can be built."""

from __future__ import annotations

import asyncio

from autotune.backends.registry import check_not_itself, make_backend, serving_addresses
from autotune.ground.config import Settings
from autotune.ground.units import MiB, format_bytes
from autotune.hardware.profile import detect_hardware
from autotune.models.bundled import BUNDLED_NAME, bundled_model_path
from autotune.models.estimate import estimate_memory
from autotune.models.gguf import GGUFError, read_gguf_meta

__all__ = ["check_engines", "check_memory_budget", "smallest_model_bytes"]

#: When the bundled model is not installed: about the smallest GGUF chat model (~100 MiB of
#: weights, as SmolLM2-135M at 4 bits) plus llama.cpp's fixed overhead and a small context.
_FALLBACK_FLOOR = 160 * MiB


def smallest_model_bytes() -> tuple[int, str]:
    """(bytes, what) the smallest useful model needs: the bundled model's estimate at 512
    tokens of context, or a fixed floor when it is not installed."""
    path = bundled_model_path()
    if path is not None:
        try:
            meta = read_gguf_meta(path, BUNDLED_NAME)
            return estimate_memory(meta, 512).total, f"{BUNDLED_NAME} at 512 tokens"
        except (GGUFError, ValueError):
            pass
    return _FALLBACK_FLOOR, "a small GGUF chat model"


def check_memory_budget(budget: int | None) -> str | None:
    """Why ``AUTOTUNE_MEMORY_BUDGET`` cannot work on this machine, or None when it can.

    Above RAM + swap (+ discrete VRAM, which the budget may span) it would defeat the no-swap
    guard; below the smallest model's need nothing could ever load.
    """
    if budget is None:
        return None
    hardware = detect_hardware()
    vram = sum(g.memory_total for g in hardware.gpus if not g.unified)
    ceiling = hardware.ram_total + hardware.swap_total + vram
    shown = f"AUTOTUNE_MEMORY_BUDGET={format_bytes(budget)}"
    if hardware.ram_total and budget > ceiling:
        machine = (
            f"{format_bytes(hardware.ram_total)} RAM + {format_bytes(hardware.swap_total)} swap"
        )
        if vram:
            machine += f" + {format_bytes(vram)} GPU memory"
        return f"{shown} is more than this machine's {machine}"
    floor, what = smallest_model_bytes()
    if budget < floor:
        return f"{shown} is less than the smallest model needs: {format_bytes(floor)} for {what}"
    return None


def check_engines(settings: Settings) -> None:
    """The engine choice and a router config, checked the way start-up will use them (no I/O:
    the backend objects are built and closed again), and an engine URL that is ``serve``'s
    own address; raises BackendError saying why not."""
    check_not_itself(settings, settings.backend, serving_addresses(settings))
    names = []
    if settings.backend in ("auto", "router") and settings.router_config is not None:
        names = ["router"]
    elif settings.backend not in ("auto", "embedded"):
        names = [settings.backend]
    for name in names:
        backend = make_backend(name, settings)  # raises BackendError with the readable reason
        asyncio.run(backend.aclose())
