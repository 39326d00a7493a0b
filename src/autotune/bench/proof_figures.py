"""The proof's figures: each request's sample, each side's medians and spread, the verdict of a
scenario, and the no-swap guard's table. Pure: no engine, no clock."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from autotune.bench.report import percentile
from autotune.ground.profiles import get_profile
from autotune.ground.types import ModelMeta
from autotune.hardware.pressure import Tier
from autotune.models.estimate import estimate_memory, kv_cache_bytes, load_estimate
from autotune.tuning.planner import MemoryState, PlanInput, plan

__all__ = [
    "ProofResult",
    "Sample",
    "ScenarioResult",
    "SideFigures",
    "figures",
    "guard_table",
    "verdict",
]


@dataclass
class Sample:
    """One request on one side."""

    side: str  # "raw" | "autotune"
    index: int
    ttft_ms: float | None = None
    prefill_ms: float | None = None
    load_ms: float | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    decode_tps: float | None = None
    completion_tokens: int | None = None
    #: Speculative decoding: tokens drafted, and how many the model accepted.
    drafted: int | None = None
    accepted: int | None = None
    error: str | None = None


@dataclass
class SideFigures:
    """One side of one scenario: medians, p90s and spread, plus memory."""

    n: int
    errors: int
    ttft_ms: dict[str, float]
    prefill_ms: dict[str, float]
    load_ms: dict[str, float]
    decode_tps: dict[str, float]
    cached_share: float | None
    n_ctx: int | None
    kv_bytes: int | None
    rss_bytes: int | None
    #: Share of drafted tokens accepted (None: nothing drafted, speculation off).
    acceptance: float | None = None


@dataclass
class ScenarioResult:
    name: str
    description: str
    raw: SideFigures
    autotune: SideFigures
    verdict: str
    samples: list[Sample] = field(default_factory=list)


@dataclass
class ProofResult:
    model: str
    engine: str
    runs: int
    raw_settings: dict[str, Any]
    autotune_settings: dict[str, Any]
    scenarios: list[ScenarioResult]
    swap_before: int
    swap_after: int
    guard: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _stats(values: list[float]) -> dict[str, float]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {}
    return {
        "median": percentile(vals, 50),
        "p90": percentile(vals, 90),
        "min": min(vals),
        "max": max(vals),
        "stdev": statistics.stdev(vals) if len(vals) > 1 else 0.0,
    }


def figures(
    samples: list[Sample], meta: ModelMeta, n_ctx: int | None, rss: int | None
) -> SideFigures:
    ok = [s for s in samples if s.error is None]
    prompts = sum(s.prompt_tokens or 0 for s in ok)
    cached = sum(s.cached_tokens or 0 for s in ok)
    kv = kv_cache_bytes(meta, n_ctx) if n_ctx and meta.block_count else None
    return SideFigures(
        n=len(samples),
        errors=len(samples) - len(ok),
        ttft_ms=_stats([s.ttft_ms for s in ok if s.ttft_ms is not None]),
        prefill_ms=_stats([s.prefill_ms for s in ok if s.prefill_ms is not None]),
        load_ms=_stats([s.load_ms for s in ok if s.load_ms is not None]),
        decode_tps=_stats([s.decode_tps for s in ok if s.decode_tps is not None]),
        cached_share=cached / prompts if prompts else None,
        n_ctx=n_ctx,
        kv_bytes=kv,
        rss_bytes=rss,
        acceptance=_acceptance(ok),
    )


def _acceptance(samples: list[Sample]) -> float | None:
    drafted = sum(s.drafted or 0 for s in samples)
    return sum(s.accepted or 0 for s in samples) / drafted if drafted else None


def _decode_verdict(raw: SideFigures, tuned: SideFigures) -> str | None:
    """Decoding speed against the raw engine, and the drafts accepted, in words."""
    r, t = raw.decode_tps.get("median"), tuned.decode_tps.get("median")
    if not (r and t):
        return None
    ratio = t / r
    drafts = "" if tuned.acceptance is None else f", {tuned.acceptance:.0%} of drafts accepted"
    if abs(ratio - 1) < 0.03:
        return f"decoding no faster ({t:.0f} vs {r:.0f} tok/s raw{drafts})"
    if ratio > 1:
        return f"decoding {ratio:.2f}× the raw engine's ({t:.0f} vs {r:.0f} tok/s{drafts})"
    return f"autotune decodes {1 - ratio:.0%} slower ({t:.0f} vs {r:.0f} tok/s raw{drafts})"


def verdict(raw: SideFigures, tuned: SideFigures, *, decode: bool = False) -> str:
    """One plain sentence, saying so where autotune is slower or no better."""
    parts = []
    said = _decode_verdict(raw, tuned) if decode else None
    if said:
        parts.append(said)
    r, t = raw.ttft_ms.get("median"), tuned.ttft_ms.get("median")
    if r and t:
        change = (t - r) / r
        if abs(change) < 0.05:
            parts.append(f"time to first token is no better ({t:.0f} vs {r:.0f} ms raw)")
        elif change < 0:
            parts.append(f"first token {-change:.0%} sooner ({t:.0f} vs {r:.0f} ms)")
        else:
            parts.append(
                f"autotune is slower to the first token ({t:.0f} vs {r:.0f} ms, +{change:.0%})"
            )
    if raw.kv_bytes and tuned.kv_bytes:
        saved = 1 - tuned.kv_bytes / raw.kv_bytes
        if saved > 0.05:
            parts.append(f"KV cache {saved:.0%} smaller ({tuned.n_ctx} vs {raw.n_ctx} tokens held)")
        elif saved < -0.05:
            parts.append(f"KV cache {-saved:.0%} larger ({tuned.n_ctx} vs {raw.n_ctx} tokens)")
    if raw.errors or tuned.errors:
        parts.append(f"errors: raw {raw.errors}, autotune {tuned.errors}")
    text = "; ".join(parts)
    return text[:1].upper() + text[1:] + "." if parts else "No figures."


def guard_table(meta: ModelMeta, need_tokens: int = 3000) -> list[dict[str, Any]]:
    """What the planner's pressure tiers and no-swap guard would do for this model (pure)."""
    from autotune.backends.embedded import EmbeddedBackend

    profile = get_profile("balanced")
    caps = EmbeddedBackend.capabilities
    full = estimate_memory(meta, 8192).total

    rows = []
    cases = [
        ("normal", Tier.NORMAL, 0.50, 16 * 1024**3),
        ("elevated", Tier.ELEVATED, 0.82, 16 * 1024**3),
        ("high", Tier.HIGH, 0.90, 16 * 1024**3),
        ("critical", Tier.CRITICAL, 0.95, 16 * 1024**3),
        ("little free", Tier.NORMAL, 0.50, int(full * 0.6)),
        ("none free", Tier.NORMAL, 0.50, int(full * 0.1)),
    ]
    for label, _tier, used, available in cases:
        p = plan(
            PlanInput(
                profile=profile,
                capabilities=caps,
                meta=meta,
                need_tokens=need_tokens,
                memory=MemoryState(available=available, used_fraction=used),
                estimator=load_estimate,
            )
        )
        rows.append(
            {
                "case": label,
                "ram_used": used,
                "available_bytes": available,
                "n_ctx": p.load.n_ctx if p.load else None,
                "kv": p.load.cache_type_k if p.load else None,
                "batch": p.load.n_batch if p.load else None,
                "refused": p.refused,
                "reasons": [d.reason for d in p.decisions if d.key in ("ctx", "kv", "batch")],
            }
        )
    return rows
