"""The memory pre-flight of a load (pure): what a model costs at a profile's context against
the budget, the verdict, the largest context that fits, and the profile ``auto`` picks."""

from __future__ import annotations

from dataclasses import dataclass

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

__all__ = ["MIN_CONTEXT", "Preflight", "Verdict", "analyse", "choose_profile"]


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
