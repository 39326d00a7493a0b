"""Which load-time settings to try, and which measured result is best per profile (pure).

The sweep is a coordinate descent from llama.cpp's defaults: threads first, then batch /
micro-batch, then flash attention, each dimension keeping the best value found so far. A
result is scored by the geometric mean of prefill and decode speed (both matter to time to
first token and to reading speed); peak memory breaks near-ties. A change must beat the
defaults by more than the measurement noise to be kept, so "the defaults are already best"
is a real outcome, not a rounding artefact.

Speculative decoding is judged on its own (:func:`choose_speculation`): a mode is chosen only
when it speeds up work that copies its input by a clear margin *and* leaves free chat no more
than 3 % slower, each measured against no speculation in the same minutes. Otherwise the
choice is "none", with the figures that say why.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

from autotune.ground.tuned import Candidate, SpecChoice, SpecTrial, Trial

__all__ = [
    "CHAT_MAX_LOSS",
    "COPY_MIN_GAIN",
    "NOISE",
    "best",
    "choose_speculation",
    "dimensions",
    "is_better",
    "score",
]

#: A result must be this much faster (fraction) to count as better than another.
NOISE = 0.03
#: Speculation must decode input-copying work this much faster (fraction) to be chosen...
COPY_MIN_GAIN = 0.10
#: ...and may make free chat at most this much slower.
CHAT_MAX_LOSS = 0.03


def score(trial: Trial) -> float:
    """Geometric mean of prefill and decode tokens/s; 0 for a failed trial."""
    if trial.error or not trial.prefill_tps or not trial.decode_tps:
        return 0.0
    return math.sqrt(trial.prefill_tps * trial.decode_tps)


def is_better(a: Trial, b: Trial, noise: float = NOISE) -> bool:
    """``a`` beats ``b`` by more than the noise, or ties on speed and uses less memory."""
    sa, sb = score(a), score(b)
    if sb == 0:
        return sa > 0
    if sa > sb * (1 + noise):
        return True
    if sa >= sb * (1 - noise) and a.rss_bytes and b.rss_bytes:
        return a.rss_bytes < b.rss_bytes * (1 - noise)
    return False


def best(trials: list[Trial], baseline: Trial) -> Trial:
    """The best trial, or the baseline when nothing beats it beyond the noise."""
    winner = baseline
    for trial in trials:
        if trial is not baseline and is_better(trial, winner):
            winner = trial
    return winner


def dimensions(
    physical_cores: int, logical_cores: int
) -> Iterator[tuple[str, list[dict[str, object]]]]:
    """The dimensions swept in order, each as alternatives to try against the best so far."""
    threads = sorted({physical_cores, logical_cores, max(1, physical_cores - 1)})
    yield "threads", [{"n_threads": t} for t in threads]
    yield (
        "batch",
        [
            {"n_batch": 2048, "n_ubatch": 512},
            {"n_batch": 1024, "n_ubatch": 256},
            {"n_batch": 512, "n_ubatch": 512},
            {"n_batch": 2048, "n_ubatch": 1024},
        ],
    )
    yield "flash_attn", [{"flash_attn": None}, {"flash_attn": True}, {"flash_attn": False}]


def apply(candidate: Candidate, change: dict[str, object]) -> Candidate:
    return replace(candidate, **change)  # type: ignore[arg-type]


def choose_speculation(trials: list[SpecTrial]) -> SpecChoice:
    """The mode with the largest gain on copying work among those that keep free chat within
    :data:`CHAT_MAX_LOSS`, if that gain reaches :data:`COPY_MIN_GAIN`; else "none"."""
    measured = [t for t in trials if t.error is None and t.copy_gain is not None]
    if not measured:
        return SpecChoice("none", "not measured: no speculative mode ran to the end")
    eligible = [
        t
        for t in measured
        if (t.copy_gain or 0) >= COPY_MIN_GAIN
        and (t.chat_gain is None or t.chat_gain >= -CHAT_MAX_LOSS)
    ]
    if eligible:
        win = max(eligible, key=lambda t: t.copy_gain or 0)
        return SpecChoice(
            win.candidate.mode,
            f"{win.candidate.label()}: copying work {_pct(win.copy_gain)}, "
            f"free chat {_pct(win.chat_gain)}",
            win.candidate.draft,
            win.candidate.draft_path,
            win.copy_gain,
            win.chat_gain,
            win.acceptance,
        )
    top = max(measured, key=lambda t: t.copy_gain or 0)
    return SpecChoice(
        "none",
        f"does not pay on this machine: the best, {top.candidate.label()}, decoded copying "
        f"work {_pct(top.copy_gain)} and free chat {_pct(top.chat_gain)} (needs at least "
        f"+{COPY_MIN_GAIN:.0%} and no worse than -{CHAT_MAX_LOSS:.0%})",
        copy_gain=top.copy_gain,
        chat_gain=top.chat_gain,
    )


def _pct(gain: float | None) -> str:
    return "unmeasured" if gain is None else f"{gain:+.0%}"
