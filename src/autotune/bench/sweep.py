"""Measures prefill and decode speed and memory of load-time settings on the embedded engine.

Each candidate gets a fresh llama.cpp worker: a prefill test (a ~400-token prompt sent with
``cache_prompt: false`` so it is computed in full every time) and a decode test (32 tokens
with ``ignore_eos``), timed by the engine's own ``timings``, plus the worker's RSS. The
sweep stops before a trial that would overrun the time budget.

Speculative decoding is measured after that (:func:`sweep_speculation`), on the winner's
settings: an engine without speculation stays loaded while each mode gets its own fresh
engine, and the two are asked the same prompts in turn — input-copying edits and free chat,
the order alternating — so a busy machine slows both sides alike. Prompts are computed in
full every time (``cache_prompt: false``), so the time to the first token compares too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import psutil

from autotune.backends.openai_compat import post_chat
from autotune.backends.worker_process import start_worker, stop_worker
from autotune.bench.texts import chat_prompts, edit_prompts
from autotune.ground.tuned import Candidate, SpecCandidate, SpecChoice, SpecTrial, Trial
from autotune.ground.types import ModelMeta
from autotune.tuning.calibrate import apply, best, choose_speculation, dimensions, is_better

__all__ = ["SPEC_ORDER", "SpecSweep", "SweepResult", "sweep", "sweep_speculation"]

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


#: The n-gram modes in the order they are measured (the likeliest winners first, so a short
#: budget still measures them); draft models come after.
SPEC_ORDER = ("ngram_mod", "ngram_simple", "ngram_map_k", "ngram_map_k4v", "ngram_cache")
#: Tokens generated per request: enough for drafts to show, short enough for a budget.
_COPY_TOKENS = 160
_CHAT_TOKENS = 96


@dataclass
class SpecSweep:
    """Every speculative mode measured, and the choice."""

    trials: list[SpecTrial]
    choice: SpecChoice
    elapsed: float
    budget: float
    notes: list[str] = field(default_factory=list)


def _trial_spec(base: dict[str, object], candidate: SpecCandidate | None) -> dict[str, object]:
    spec = dict(base)
    if candidate is not None and candidate.mode != "none":
        spec["speculative"] = candidate.mode
        if candidate.draft_path:
            spec["draft_path"] = candidate.draft_path
    return spec


async def _ask_timed(
    http: httpx.AsyncClient, messages: object, max_tokens: int
) -> tuple[dict[str, float], str]:
    """One greedy request, its prompt computed in full (no prompt cache, so both engines do the
    same work); the engine's decode figures plus the wall-clock time to the first token (the
    time to the answer less the engine's decode time)."""
    started = time.perf_counter()
    reply = await post_chat(
        http,
        "/v1/chat/completions",
        {
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "seed": 1,
            "cache_prompt": False,
        },
    )
    reply.raise_for_status()
    wall_ms = (time.perf_counter() - started) * 1000
    data = reply.json()
    t = data["timings"]
    figures = {
        "decode_tps": float(t.get("predicted_per_second") or 0.0),
        "first_token_ms": max(0.0, wall_ms - float(t.get("predicted_ms") or 0.0)),
        "drafted": float(t.get("draft_n") or 0),
        "accepted": float(t.get("draft_n_accepted") or 0),
    }
    return figures, str(data["choices"][0]["message"].get("content") or "")


async def _spec_trial(
    candidate: SpecCandidate,
    base_http: httpx.AsyncClient,
    base_pid: int,
    spec: dict[str, object],
    rounds: int,
) -> SpecTrial:
    """One mode against the loaded engine without speculation, prompts interleaved."""
    trial = SpecTrial(candidate)
    started = time.monotonic()
    try:
        proc, url = await asyncio.to_thread(start_worker, spec)
    except Exception as exc:
        trial.error = str(exc)
        trial.seconds = time.monotonic() - started
        return trial
    try:
        async with httpx.AsyncClient(base_url=url, timeout=600) as http:
            await _ask_timed(http, [{"role": "user", "content": "Hi"}], 2)  # warm-up
            watch = _Contention([base_pid, proc.pid, os.getpid()])
            await _paired_rounds(trial, {"base": base_http, "spec": http}, rounds, watch)
        trial.rss_bytes = _rss(proc.pid)
        trial.base_rss_bytes = _rss(base_pid)
    except Exception as exc:  # a mode the engine cannot run is a result, not a crash
        trial.error = f"{type(exc).__name__}: {exc}"
    finally:
        await asyncio.to_thread(stop_worker, proc)
        trial.seconds = time.monotonic() - started
    return trial


#: Other processes (and a hypervisor's steal) may use this many CPU-seconds per second while
#: a pair of requests runs; above it the pair is measured again, up to :data:`_PAIR_TRIES`.
_OTHERS_MAX_CPU = 0.25
_PAIR_TRIES = 3


class _Contention:
    """CPU time used by everything but the engines and autotune itself while a pair ran."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(pid) for pid in pids]
        self._start = (0.0, 0.0, 0.0)

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(
            getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal")
        )

    def _ours(self) -> float:
        total = 0.0
        for proc in self.procs:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def start(self) -> None:
        self._start = (time.monotonic(), self._busy(), self._ours())

    def others_per_second(self) -> float:
        wall, busy, ours = self._start
        elapsed = max(time.monotonic() - wall, 1e-3)
        return max(0.0, (self._busy() - busy) - (self._ours() - ours)) / elapsed


async def _paired_rounds(
    trial: SpecTrial, sides: dict[str, httpx.AsyncClient], rounds: int, watch: _Contention
) -> None:
    """Every mode gets the same prompts (each on a fresh engine, so its n-gram state starts
    empty); the engine without speculation keeps no n-gram state to learn from. A pair that
    other processes disturbed is measured again."""
    copy = edit_prompts(rounds)
    chat = chat_prompts(rounds)
    figures: dict[tuple[str, str], list[dict[str, float]]] = {}
    texts: dict[tuple[str, str, int], str] = {}
    for r in range(rounds):
        for kind, messages, tokens in (
            ("copy", copy[r], _COPY_TOKENS),
            ("chat", chat[r], _CHAT_TOKENS),
        ):
            order = ("base", "spec") if r % 2 == 0 else ("spec", "base")
            for _ in range(_PAIR_TRIES):
                watch.start()
                pair = {side: await _ask_timed(sides[side], messages, tokens) for side in order}
                others = watch.others_per_second()
                if others <= _OTHERS_MAX_CPU:
                    break
            trial.disturbed += others > _OTHERS_MAX_CPU
            for side, (got, text) in pair.items():
                texts[side, kind, r] = text
                figures.setdefault((side, kind), []).append(got)
                sample: dict[str, float | str] = {"side": side, "kind": kind, "round": r}
                trial.samples.append({**sample, "others_cpu": others, **got})

    def median(side: str, kind: str, key: str = "decode_tps") -> float | None:
        values = [f[key] for f in figures.get((side, kind), []) if f[key]]
        return statistics.median(values) if values else None

    trial.copy_tps, trial.base_copy_tps = median("spec", "copy"), median("base", "copy")
    trial.chat_tps, trial.base_chat_tps = median("spec", "chat"), median("base", "chat")
    trial.copy_gain = _paired_gain(figures, "copy")
    trial.chat_gain = _paired_gain(figures, "chat")
    trial.first_token_ms = median("spec", "copy", "first_token_ms")
    trial.base_first_token_ms = median("base", "copy", "first_token_ms")
    spec_samples = [f for (side, _), fs in figures.items() if side == "spec" for f in fs]
    trial.drafted = int(sum(f["drafted"] for f in spec_samples))
    trial.accepted = int(sum(f["accepted"] for f in spec_samples))
    pairs = [(kind, r) for kind in ("copy", "chat") for r in range(rounds)]
    trial.answers = len(pairs)
    trial.same_answers = sum(texts["spec", k, r] == texts["base", k, r] for k, r in pairs)


def _paired_gain(figures: dict[tuple[str, str], list[dict[str, float]]], kind: str) -> float | None:
    """The median over prompts of (speed with speculation / speed without) - 1."""
    pairs = zip(figures.get(("spec", kind), []), figures.get(("base", kind), []), strict=False)
    ratios = [
        s["decode_tps"] / b["decode_tps"] for s, b in pairs if s["decode_tps"] and b["decode_tps"]
    ]
    return statistics.median(ratios) - 1 if ratios else None


def _rss(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


async def _bounded(trial: Awaitable[SpecTrial], candidate: SpecCandidate, left: float) -> SpecTrial:
    """The trial, or an error once the budget's remaining seconds are spent (its engine is
    stopped either way)."""
    started = time.monotonic()
    try:
        return await asyncio.wait_for(trial, timeout=left)
    except (asyncio.TimeoutError, TimeoutError):  # distinct classes before Python 3.11
        error = "stopped: the time budget ran out during this trial"
        return SpecTrial(candidate, error=error, seconds=time.monotonic() - started)


async def sweep_speculation(
    meta: ModelMeta,
    settings: dict[str, object],
    candidates: list[SpecCandidate],
    *,
    budget: float = 120.0,
    rounds: int = 2,
    progress: Callable[[str, float], None] | None = None,
) -> SpecSweep:
    """Measure each candidate against no speculation within ``budget`` seconds; see the
    module docstring. ``settings`` are the load settings every engine gets (the winner's)."""
    start = time.monotonic()
    base_spec: dict[str, object] = {"path": meta.path, "alias": meta.name, **settings}
    trials: list[SpecTrial] = []
    notes: list[str] = []

    def report(label: str) -> None:
        if progress:
            progress(label, min(1.0, (time.monotonic() - start) / budget))

    report("speculation: loading the engine without it")
    try:
        base_proc, base_url = await asyncio.to_thread(start_worker, _trial_spec(base_spec, None))
    except Exception as exc:
        choice = SpecChoice("none", f"not measured: the model did not load ({exc})")
        return SpecSweep([], choice, time.monotonic() - start, budget, [choice.reason])
    per_trial = 0.0
    try:
        async with httpx.AsyncClient(base_url=base_url, timeout=600) as base_http:
            await _ask_timed(base_http, [{"role": "user", "content": "Hi"}], 2)
            for i, candidate in enumerate(candidates):
                left = budget - (time.monotonic() - start)
                if left < max(per_trial * 1.1, 5.0):
                    skipped = ", ".join(c.label() for c in candidates[i:])
                    notes.append(f"speculation: not measured within the budget: {skipped}")
                    break
                report(f"speculation: {candidate.label()}")
                trial = await _bounded(
                    _spec_trial(
                        candidate,
                        base_http,
                        base_proc.pid,
                        _trial_spec(base_spec, candidate),
                        rounds,
                    ),
                    candidate,
                    left,
                )
                trials.append(trial)
                per_trial = max(per_trial, trial.seconds)
    finally:
        await asyncio.to_thread(stop_worker, base_proc)
    report("done")
    return SpecSweep(trials, choose_speculation(trials), time.monotonic() - start, budget, notes)
