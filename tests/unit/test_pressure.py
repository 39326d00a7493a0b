"""Memory-pressure tiers: the pure thresholds, and the live reading through psutil (no fakes)."""

from __future__ import annotations

import math

import psutil
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autotune.hardware.pressure import THRESHOLDS, Tier, memory_pressure, pressure_tier


@pytest.mark.parametrize(
    ("used", "tier"),
    [
        (0.0, Tier.NORMAL),
        (0.7999, Tier.NORMAL),
        (0.80, Tier.ELEVATED),
        (0.8799, Tier.ELEVATED),
        (0.88, Tier.HIGH),
        (0.9299, Tier.HIGH),
        (0.93, Tier.CRITICAL),
        (1.0, Tier.CRITICAL),
        (1.2, Tier.CRITICAL),  # a racing sampler may overshoot
        (-0.1, Tier.NORMAL),
    ],
)
def test_tier_boundaries(used: float, tier: Tier) -> None:
    assert pressure_tier(used) is tier


def test_nan_is_a_bug_not_a_tier() -> None:
    with pytest.raises(ValueError, match="NaN"):
        pressure_tier(math.nan)


def test_tiers_are_ordered_and_labelled() -> None:
    assert Tier.NORMAL < Tier.ELEVATED < Tier.HIGH < Tier.CRITICAL
    assert Tier.HIGH.label == "high"
    assert [t for t, _ in THRESHOLDS] == [Tier.CRITICAL, Tier.HIGH, Tier.ELEVATED]


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_more_memory_used_never_lowers_the_tier(a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert pressure_tier(low) <= pressure_tier(high)


def test_live_memory_pressure_matches_psutil() -> None:
    tier, used = memory_pressure()
    assert 0.0 <= used <= 1.0
    assert tier is pressure_tier(used)
    vm = psutil.virtual_memory()
    assert used == pytest.approx(1 - vm.available / vm.total, abs=0.05)
