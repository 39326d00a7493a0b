"""Measures prefill and decode speed and memory of load-time settings on the embedded engine.

Each candidate gets a fresh llama.cpp worker: a prefill test (a ~400-token prompt sent with
``cache_prompt: false`` so it is computed in full every time) and a decode test (32 tokens
with ``ignore_eos``), timed by the engine's own ``timings``, plus the worker's RSS. The
sweep stops before a trial that would overrun the time budget.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import psutil

from autotune.backends.openai_compat import post_chat
from autotune.backends.worker_process import start_worker, stop_worker
from autotune.ground.tuned import Candidate, Trial
from autotune.ground.types import ModelMeta
from autotune.tuning.calibrate import apply, best, dimensions, is_better

__all__ = ["SweepResult", "sweep"]

_PREFILL_TEXT = " ".join(
    f"Item {i}: the {w} service handled {i * 37 % 1000} requests with a median latency of "
    f"{i * 13 % 90 + 10} milliseconds."
    for i, w in enumerate(["billing", "search", "upload", "auth", "cache", "queue"] * 5)
)
_REPEATS = 2


@dataclass
class SweepResult:
    """Every trial, the defaults' trial, and the choice per profile."""

    trials: list[Trial]
    baseline: Trial
    chosen: dict[str, Trial]
    defaults_best: bool
    elapsed: float
    budget: float
    notes: list[str] = field(default_factory=list)


async def _measure(meta: ModelMeta, candidate: Candidate, n_ctx: int, deadline: float) -> Trial:
    """One candidate on a fresh worker; gives up (recorded as an error) at ``deadline``."""
    trial = Trial(candidate)
    spec: dict[str, object] = {
        "path": meta.path,
        "alias": meta.name,
        "n_ctx": n_ctx,
        "cache_type_k": candidate.cache_type,
        "cache_type_v": candidate.cache_type,
    }
    for key in ("n_threads", "n_batch", "n_ubatch", "flash_attn"):
        value = getattr(candidate, key)
        if value is not None:
            spec[key] = value
    started = time.monotonic()
    try:
        proc, url = await asyncio.to_thread(start_worker, spec)
    except Exception as exc:
        trial.error = str(exc)
        trial.seconds = time.monotonic() - started
        return trial
    try:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        await asyncio.wait_for(_speed_tests(trial, url, proc.pid), timeout=remaining)
    except (asyncio.TimeoutError, TimeoutError):  # distinct classes before Python 3.11
        trial.error = "stopped: the time budget ran out during this trial"
    except Exception as exc:  # a setting the engine rejects is a result, not a crash
        trial.error = f"{type(exc).__name__}: {exc}"
    finally:
        await asyncio.to_thread(stop_worker, proc)
        trial.seconds = time.monotonic() - started
    return trial


async def _speed_tests(trial: Trial, url: str, pid: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:

        async def ask(body: dict[str, object]) -> dict[str, float]:
            reply = await post_chat(http, "/v1/chat/completions", body)
            reply.raise_for_status()
            return dict(reply.json()["timings"])

        await ask({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        prefill, decode = [], []
        for _ in range(_REPEATS):
            t = await ask(
                {
                    "messages": [{"role": "user", "content": _PREFILL_TEXT}],
                    "max_tokens": 1,
                    "cache_prompt": False,
                }
            )
            prefill.append(t["prompt_per_second"])
            t = await ask(
                {
                    "messages": [{"role": "user", "content": "Count slowly."}],
                    "max_tokens": 32,
                    "ignore_eos": True,
                    "temperature": 0,
                }
            )
            decode.append(t["predicted_per_second"])
            trial.samples.append({"prefill_tps": prefill[-1], "decode_tps": decode[-1]})
        trial.prefill_tps = statistics.median(prefill)
        trial.decode_tps = statistics.median(decode)
        trial.rss_bytes = int(psutil.Process(pid).memory_info().rss)


async def sweep(
    meta: ModelMeta,
    *,
    physical_cores: int,
    logical_cores: int,
    budget: float = 120.0,
    n_ctx: int = 4096,
    progress: Callable[[str, float], None] | None = None,
) -> SweepResult:
    """Coordinate descent over threads, batch and flash attention within ``budget`` seconds."""
    start = time.monotonic()
    notes: list[str] = []

    def left() -> float:
        return budget - (time.monotonic() - start)

    def report(label: str) -> None:
        if progress:
            progress(label, min(1.0, (time.monotonic() - start) / budget))

    report("defaults")
    deadline = start + budget
    baseline = await _measure(meta, Candidate(), n_ctx, deadline)
    trials = [baseline]
    if baseline.error:
        return SweepResult(
            trials,
            baseline,
            {},
            True,
            time.monotonic() - start,
            budget,
            [f"the defaults did not load: {baseline.error}"],
        )
    current = baseline
    per_trial = baseline.seconds
    stopped = False
    for name, alternatives in dimensions(physical_cores, logical_cores):
        for change in alternatives:
            candidate = apply(current.candidate, change)
            if candidate in {t.candidate for t in trials}:
                continue
            if left() < per_trial * 1.2 + 2:
                stopped = True
                break
            report(f"{name}: {candidate.label()}")
            trial = await _measure(meta, candidate, n_ctx, deadline)
            trials.append(trial)
            per_trial = max(per_trial, trial.seconds)
            if is_better(trial, current):
                current = trial
        if stopped:
            notes.append(f"stopped at {name}: the {budget:g}s budget was nearly used")
            break
    winner = best(trials, baseline)
    chosen = {"balanced": winner, "quality": winner}
    # fast uses a q8_0 KV cache, which needs flash attention: measure that variant if time allows
    fast_candidate = apply(winner.candidate, {"cache_type": "q8_0", "flash_attn": True})
    if left() >= per_trial * 1.2 + 2:
        report(f"fast: {fast_candidate.label()}")
        fast = await _measure(meta, fast_candidate, n_ctx, deadline)
        trials.append(fast)
        chosen["fast"] = fast if not fast.error else winner
    else:
        notes.append(
            "fast profile: q8_0 variant not measured (budget); using the f16 winner's "
            "threads and batch"
        )
        chosen["fast"] = winner
    report("done")
    return SweepResult(
        trials, baseline, chosen, winner is baseline, time.monotonic() - start, budget, notes
    )
