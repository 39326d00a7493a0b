"""Verdicts on whether a model fits a memory budget, the largest context that does, and a profile.

Pure: the numbers come from :func:`autotune.models.estimate.estimate_memory`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from autotune.ground.profiles import PROFILES
from autotune.ground.types import ModelMeta
from autotune.ground.units import format_bytes
from autotune.models.estimate import MemoryEstimate, estimate_memory

__all__ = [
    "COMFORTABLE_FRACTION",
    "CONTEXT_STEP",
    "MAX_UNKNOWN_CONTEXT",
    "MIN_CONTEXT",
    "SWAP_RISK_FRACTION",
    "TIGHT_FRACTION",
    "Fit",
    "Verdict",
    "assess_fit",
    "max_context_that_fits",
    "profile_context",
    "verdict_for",
]

#: A model "fits comfortably" when its estimate uses at most 70 % of the budget: the rest is
#: headroom for the OS, the app and estimate error.
COMFORTABLE_FRACTION = 0.70
#: Up to 90 %: it fits, but a browser tab could push the machine into swap.
TIGHT_FRACTION = 0.90
#: Up to 100 % of the budget: "swap risk"; above it: "will not fit".
SWAP_RISK_FRACTION = 1.00

#: Context sizes are offered in steps of 256 tokens (llama.cpp pads the KV cache to 256).
CONTEXT_STEP = 256
#: Below 512 tokens a chat model is not usable; ``max_context`` is None then.
MIN_CONTEXT = 512
#: Search ceiling when the trained context is unknown.
MAX_UNKNOWN_CONTEXT = 1 << 20


class Verdict(str, Enum):
    """How a model's estimated memory compares with the budget."""

    COMFORTABLE = "fits comfortably"
    TIGHT = "tight"
    SWAP_RISK = "swap risk"
    WONT_FIT = "will not fit"


@dataclass(frozen=True)
class Fit:
    """A verdict with its estimate, the largest context that fits and a profile to use."""

    verdict: Verdict
    estimate: MemoryEstimate
    n_ctx: int
    #: Largest context (multiple of 256, ≤ trained) within the budget; None if even 512 is not.
    max_context: int | None
    recommended_profile: str  # "fast" | "balanced" | "quality"
    reason: str


def verdict_for(total: int, budget: int) -> Verdict:
    """The verdict for ``total`` bytes against a ``budget``: the thresholds above."""
    if budget <= 0:
        return Verdict.WONT_FIT
    share = total / budget
    if share <= COMFORTABLE_FRACTION:
        return Verdict.COMFORTABLE
    if share <= TIGHT_FRACTION:
        return Verdict.TIGHT
    if share <= SWAP_RISK_FRACTION:
        return Verdict.SWAP_RISK
    return Verdict.WONT_FIT


def profile_context(meta: ModelMeta, profile: str) -> int:
    """The profile's context cap, never above the model's trained context."""
    cap = PROFILES[profile].context_cap
    return min(cap, meta.context_length) if meta.context_length else cap


def max_context_that_fits(meta: ModelMeta, budget_bytes: int, **kv: Any) -> int | None:
    """Largest context (a multiple of 256, ≤ trained) whose estimate is within the budget.

    ``kv`` goes to :func:`estimate_memory` (``cache_type_k``, ``cache_type_v``, ``n_parallel``,
    ``n_batch``, ``n_ubatch``, ``flash_attn``). None when even 512 tokens do not fit.
    """
    trained = meta.context_length or MAX_UNKNOWN_CONTEXT

    def fits(n_ctx: int) -> bool:
        return estimate_memory(meta, n_ctx, **kv).total <= budget_bytes

    if trained < MIN_CONTEXT:  # a tiny trained window: offer it whole or not at all
        return trained if fits(trained) else None
    if not fits(MIN_CONTEXT):
        return None
    # Estimates only grow with the context, so bisect over multiples of 256.
    low, high = MIN_CONTEXT // CONTEXT_STEP, trained // CONTEXT_STEP
    if fits(high * CONTEXT_STEP):
        return high * CONTEXT_STEP
    while high - low > 1:
        mid = (low + high) // 2
        if fits(mid * CONTEXT_STEP):
            low = mid
        else:
            high = mid
    return low * CONTEXT_STEP


def _recommend(meta: ModelMeta, budget_bytes: int) -> str:
    for name in ("quality", "balanced"):
        profile = PROFILES[name]
        estimate = estimate_memory(
            meta,
            profile_context(meta, name),
            cache_type_k=profile.kv_cache_type,
            cache_type_v=profile.kv_cache_type,
        )
        if verdict_for(estimate.total, budget_bytes) is Verdict.COMFORTABLE:
            return name
    return "fast"


def assess_fit(
    meta: ModelMeta,
    budget_bytes: int,
    *,
    n_ctx: int | None = None,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
) -> Fit:
    """The verdict for ``meta`` at ``n_ctx`` (default: the recommended profile's context).

    Recommends quality when it fits comfortably at its cap, else balanced when that does,
    else fast.
    """
    profile = _recommend(meta, budget_bytes)
    if n_ctx is None:
        n_ctx = profile_context(meta, profile)
    estimate = estimate_memory(meta, n_ctx, cache_type_k=cache_type_k, cache_type_v=cache_type_v)
    verdict = verdict_for(estimate.total, budget_bytes)
    max_ctx = max_context_that_fits(
        meta, budget_bytes, cache_type_k=cache_type_k, cache_type_v=cache_type_v
    )
    share = f" ({estimate.total / budget_bytes:.0%})" if budget_bytes > 0 else ""
    reach = (
        f"up to {max_ctx:,} tokens fit"
        if max_ctx is not None
        else f"not even {MIN_CONTEXT} tokens fit"
    )
    reason = (
        f"Needs {format_bytes(estimate.total)} at {n_ctx:,} tokens "
        f"(weights {format_bytes(estimate.weights)}, KV {format_bytes(estimate.kv_cache)}, "
        f"compute {format_bytes(estimate.compute)}, overhead {format_bytes(estimate.overhead)}) "
        f"of a {format_bytes(budget_bytes)} budget{share}; {reach}."
    )
    return Fit(
        verdict=verdict,
        estimate=estimate,
        n_ctx=n_ctx,
        max_context=max_ctx,
        recommended_profile=profile,
        reason=reason,
    )
