"""Memory-pressure tiers: how close this machine is to swapping, from the share of RAM in use.

``pressure_tier`` is pure (a fraction in, a :class:`Tier` out); ``memory_pressure`` reads the
live figure through psutil, where "used" means ``1 − available / total`` — the memory the
OS could not hand to a new allocation without reclaiming or swapping.
"""

from __future__ import annotations

import enum
import math

__all__ = ["THRESHOLDS", "Tier", "memory_pressure", "pressure_tier"]


class Tier(enum.IntEnum):
    """Pressure tiers, ordered so that ``Tier.HIGH > Tier.ELEVATED``."""

    NORMAL = 0
    ELEVATED = 1
    HIGH = 2
    CRITICAL = 3

    @property
    def label(self) -> str:
        return self.name.lower()


#: Lower bound (inclusive) of the used fraction for each tier above NORMAL.
THRESHOLDS: tuple[tuple[Tier, float], ...] = (
    (Tier.CRITICAL, 0.93),
    (Tier.HIGH, 0.88),
    (Tier.ELEVATED, 0.80),
)


def pressure_tier(used_fraction: float) -> Tier:
    """NORMAL below 80% used, ELEVATED from 80%, HIGH from 88%, CRITICAL from 93%.

    Fractions outside 0–1 are accepted (a racing sampler can overshoot) and land in the
    nearest tier; NaN is a caller bug and raises ``ValueError``.
    """
    if math.isnan(used_fraction):
        raise ValueError("used_fraction is NaN")
    for tier, lower in THRESHOLDS:
        if used_fraction >= lower:
            return tier
    return Tier.NORMAL


def memory_pressure() -> tuple[Tier, float]:
    """The live tier and used fraction (``1 − available/total``) of this machine's RAM."""
    import psutil

    vm = psutil.virtual_memory()
    used = 1.0 - (vm.available / vm.total) if vm.total else 0.0
    used = min(1.0, max(0.0, used))
    return pressure_tier(used), used
