"""Which load-time settings to try, and which measured result is best per profile (pure).

The sweep is a coordinate descent from llama.cpp's defaults: threads first, then batch /
micro-batch, then flash attention, each dimension keeping the best value found so far. A
result is scored by the geometric mean of prefill and decode speed (both matter to time to
first token and to reading speed); peak memory breaks near-ties. A change must beat the
defaults by more than the measurement noise to be kept, so "the defaults are already best"
is a real outcome, not a rounding artefact.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace

from autotune.ground.tuned import Candidate, Trial

__all__ = [
    "NOISE",
    "best",
    "dimensions",
    "is_better",
    "score",
]

#: A result must be this much faster (fraction) to count as better than another.
NOISE = 0.03


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
