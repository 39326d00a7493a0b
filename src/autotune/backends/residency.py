"""What the embedded engine keeps in memory, decided (pure): which idle models to unload to
make room for a load, and how much host RAM llama.cpp may keep for finished prompts.

:mod:`autotune.backends.embedded` acts on these; each decision carries its reason, which
goes into the engine's load and unload events (telemetry, the dashboard, the chat's notice
of an eviction). No I/O, no clock: the callers pass what they know.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from autotune.ground.decision import Decision
from autotune.ground.units import MiB, format_bytes

__all__ = [
    "LLAMA_CACHE_RAM_MIB",
    "Resident",
    "Room",
    "WorkerState",
    "make_room",
    "prompt_cache",
]

#: llama-server's own ``--cache-ram`` default, MiB: outside every estimate autotune makes.
LLAMA_CACHE_RAM_MIB = 8192
#: Share of the headroom left under the budget after a load that the prompt cache may take.
CACHE_SHARE = 4


class WorkerState(str, Enum):
    """Where an engine worker is in its life (it exists once its model answers)."""

    #: Loaded and answering; no request runs on it: it may be unloaded to make room.
    READY = "ready"
    #: Serving at least one request: never unloaded, never reloaded under it.
    BUSY = "busy"
    #: Being stopped: its slots are offered to the KV manager first.
    STOPPING = "stopping"
    #: Stopped by autotune.
    STOPPED = "stopped"
    #: Its process exited on its own (a crash, the OS's OOM killer).
    DEAD = "dead"


@dataclass(frozen=True)
class Resident:
    """A model the engine holds: its memory estimate, when it last served, its state."""

    name: str
    estimate: int
    last_used: float
    state: WorkerState = WorkerState.READY


@dataclass(frozen=True)
class Room:
    """Whether a load fits, and the models to unload first (in order), with why."""

    victims: tuple[str, ...]
    decision: Decision
    #: None when the load fits (after the unloads); else why it cannot, and what to do.
    refusal: str | None = None
    hint: str | None = None


def make_room(name: str, needed: int, budget: int, residents: Sequence[Resident]) -> Room:
    """The idle models to unload, least recently used first (by name on a tie), so that
    ``needed`` bytes for ``name`` fit in ``budget`` beside ``residents`` (the models held
    now, ``name``'s own worker already gone); a refusal when no unload can make it fit
    (nothing is unloaded then: a load that fails anyway should not cost the other models)."""
    if needed > budget:
        return _refused(
            f"{name} needs about {format_bytes(needed)} but the memory budget is "
            f"{format_bytes(budget)}.",
            "Use a smaller context or profile, a smaller quantisation, or raise "
            "AUTOTUNE_MEMORY_BUDGET.",
        )
    used = sum(r.estimate for r in residents)
    idle = sorted(
        (r for r in residents if r.state is WorkerState.READY),
        key=lambda r: (r.last_used, r.name),
    )
    victims: list[Resident] = []
    while used + needed > budget:
        if not idle:
            return _refused(
                f"{name} needs about {format_bytes(needed)} and the loaded models are busy.",
                "Retry when the running requests finish.",
            )
        victim = idle.pop(0)
        victims.append(victim)
        used -= victim.estimate
    names = tuple(v.name for v in victims)
    if not victims:
        reason = f"{format_bytes(needed)} fits beside the loaded models"
    else:
        freed = sum(v.estimate for v in victims)
        reason = (
            f"{format_bytes(needed)} needed: the least recently used idle "
            f"{'model frees' if len(victims) == 1 else 'models free'} {format_bytes(freed)} "
            f"under the {format_bytes(budget)} budget"
        )
    return Room(names, Decision("unload", list(names), reason))


def _refused(problem: str, hint: str) -> Room:
    return Room((), Decision("unload", [], problem), refusal=problem, hint=hint)


def prompt_cache(
    *, planned: int | None, configured: int | None, budget: int, loaded: int, estimate: int
) -> Decision:
    """How much host RAM (MiB) llama-server may keep for finished prompts' KV (``--cache-ram``).

    A size the plan asked for wins, then ``AUTOTUNE_PROMPT_CACHE_MIB``; otherwise a quarter of
    the headroom left under the budget after this load, at most llama.cpp's own 8 GiB (its
    default, outside every estimate, would make a machine near its budget swap). The
    worker's estimate includes it, so eviction sees it too."""
    if planned is not None:
        return Decision("cache_ram_mib", planned, "the plan's size for this load")
    if configured is not None:
        return Decision("cache_ram_mib", configured, "AUTOTUNE_PROMPT_CACHE_MIB")
    headroom = budget - loaded - estimate
    mib = int(max(0, min(LLAMA_CACHE_RAM_MIB * MiB, headroom // CACHE_SHARE)) // MiB)
    reason = (
        f"a quarter of the {format_bytes(max(0, headroom))} left under the budget after this "
        f"load (at most llama.cpp's {LLAMA_CACHE_RAM_MIB} MiB)"
    )
    return Decision("cache_ram_mib", mib, reason)
