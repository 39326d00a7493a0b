"""The proof: the raw engine and autotune, side by side on the same engine, per scenario
(what each scenario sends: :mod:`.proof_scenarios`; the figures and verdicts:
:mod:`.proof_figures`).

For the embedded engine, the raw side is a llama.cpp worker started with llama.cpp's own
defaults (read back from its ``/props``, never assumed), called the way a plain client
would; the autotune side is autotune's own pipeline (the product, not a shortcut) with its
own worker of the same model file. Requests are interleaved — raw, autotune, raw, … with
the order alternating per run — so drift hits both sides. Timings come from the engine's
own counters (llama.cpp ``timings``: ``prompt_ms``, ``cache_n``, ``predicted_per_second``)
plus wall-clock time to the first content token.

The ``edit``, ``quote`` and ``chat`` scenarios (chosen by name; the default run keeps the
original four) show decoding speed: answers that copy their input, where speculative decoding
pays, and free chat, where it must not cost — with the share of drafted tokens accepted.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import psutil

from autotune.backends.openai_compat import once_more_if_stale
from autotune.backends.worker_process import start_worker, stop_worker
from autotune.bench.proof_figures import (
    ProofResult,
    Sample,
    ScenarioResult,
    figures,
    guard_table,
    verdict,
)
from autotune.bench.proof_scenarios import DEFAULT_SCENARIOS, SCENARIOS, Messages, Scenario
from autotune.ground.types import Chunk, ModelMeta
from autotune.pipeline import ChatInput, Reply
from autotune.runtime import Runtime
from autotune.tuning.planner import context_need

__all__ = [
    "DEFAULT_SCENARIOS",
    "SCENARIOS",
    "ProofResult",
    "Sample",
    "Scenario",
    "guard_table",
    "run_proof",
]


class _RawSide:
    """A plain OpenAI-compatible client of a llama.cpp server with default launch settings."""

    def __init__(self, url: str, model: str) -> None:
        self.url = url
        self.model = model
        self.http = httpx.AsyncClient(base_url=url, timeout=300)

    async def props(self) -> dict[str, Any]:
        props = (await self.http.get("/props")).json()
        settings = props.get("default_generation_settings", {})
        return {
            "n_ctx": settings.get("n_ctx") or props.get("n_ctx"),
            "total_slots": props.get("total_slots"),
            "source": "/props",
        }

    async def ask(self, messages: Messages, max_tokens: int, index: int) -> Sample:
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": 0,
            "seed": 1,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        return await once_more_if_stale(
            lambda: self._ask_once(body, index), (httpx.RemoteProtocolError,)
        )

    async def _ask_once(self, body: dict[str, Any], index: int) -> Sample:
        sample = Sample("raw", index)
        reply = Reply()
        start = time.perf_counter()
        async with self.http.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code >= 400:
                await response.aread()
                sample.error = f"HTTP {response.status_code}: {response.text[:160]}"
                return sample
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    text = reply.add(Chunk(json.loads(line[6:])))
                    if text and sample.ttft_ms is None:
                        sample.ttft_ms = (time.perf_counter() - start) * 1000
        if reply.extra.get("timings"):
            _fill(sample, reply.extra["timings"], reply.usage or {})
        return sample

    async def aclose(self) -> None:
        await self.http.aclose()


def _fill(sample: Sample, timings: dict[str, Any], usage: dict[str, Any]) -> None:
    sample.prefill_ms = timings.get("prompt_ms")
    sample.cached_tokens = timings.get("cache_n")
    sample.prompt_tokens = usage.get("prompt_tokens") or (
        (timings.get("prompt_n") or 0) + (timings.get("cache_n") or 0)
    )
    sample.decode_tps = timings.get("predicted_per_second")
    sample.completion_tokens = timings.get("predicted_n")
    sample.drafted = timings.get("draft_n")
    sample.accepted = timings.get("draft_n_accepted")


async def _tuned_ask(
    runtime: Runtime, model: str, messages: Messages, max_tokens: int, index: int, profile: str
) -> Sample:
    sample = Sample("autotune", index)
    start = time.perf_counter()
    try:
        run = await runtime.pipeline.start(
            ChatInput(
                messages=messages,
                model=model,
                profile=profile,
                source="proof",
                params={"max_tokens": max_tokens, "temperature": 0, "seed": 1},
            )
        )
        async for _ in run:
            if run.reply.text and sample.ttft_ms is None:
                sample.ttft_ms = (time.perf_counter() - start) * 1000
    except Exception as exc:  # a failure is a figure too
        sample.error = f"{type(exc).__name__}: {exc}"
        return sample
    stats = run.stats
    if stats is not None:
        raw = stats.raw.get("timings") or {}
        _fill(sample, raw, stats.raw.get("usage") or {})
        sample.load_ms = stats.load_ms
    return sample


def _rss(pid: int | None) -> int | None:
    try:
        return int(psutil.Process(pid).memory_info().rss) if pid else None
    except psutil.Error:
        return None


async def run_proof(
    runtime: Runtime,
    model: str,
    *,
    runs: int = 3,
    scenarios: list[str] | None = None,
    with_cold: bool = False,
    with_noswap: bool = False,
    profile: str = "balanced",
    progress: Callable[[str, int, int], None] | None = None,
) -> ProofResult:
    """Run every scenario ``runs`` times on both sides; see the module docstring."""
    backend, name = await runtime.backends.resolve(model)
    meta = await backend.model_meta(name)
    if meta.path is None or not backend.capabilities.load_control:
        from autotune.ground.errors import NotSupported

        raise NotSupported(
            "The proof compares against a raw llama.cpp worker and needs the embedded engine.",
            hint="Run it with --backend embedded (a model file on disk).",
        )
    chosen = [SCENARIOS[s] for s in (scenarios or DEFAULT_SCENARIOS)]
    total = runs * sum(len(s.requests()) for s in chosen) * 2 + (runs * 2 if with_cold else 0)
    done = 0
    swap_before = int(psutil.swap_memory().used)

    def tick(label: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(label, done, total)

    raw_proc, raw_url = await asyncio.to_thread(start_worker, {"path": meta.path, "alias": name})
    raw = _RawSide(raw_url, name)
    results: list[ScenarioResult] = []
    notes: list[str] = []
    try:
        raw_settings = await raw.props()
        for scenario in chosen:
            samples: list[Sample] = []
            requests = scenario.requests()
            for run_index in range(runs):
                for i, messages in enumerate(requests):
                    sides = ("raw", "autotune") if (run_index + i) % 2 == 0 else ("autotune", "raw")
                    for side in sides:
                        if side == "raw":
                            samples.append(await raw.ask(messages, scenario.max_tokens, i))
                        else:
                            samples.append(
                                await _tuned_ask(
                                    runtime, name, messages, scenario.max_tokens, i, profile
                                )
                            )
                        tick(f"{scenario.name} · {side}")
            tuned_settings = await _tuned_state(runtime, backend, name)
            results.append(
                _result(
                    scenario.name,
                    scenario.description,
                    samples,
                    meta,
                    raw_settings,
                    tuned_settings,
                    raw_proc.pid,
                    decode=scenario.decode,
                )
            )
        if with_cold:
            results.append(await _cold(runtime, backend, name, meta, runs, tick, raw_settings))
            raw.http = httpx.AsyncClient(base_url=raw.url, timeout=300)
    finally:
        await raw.aclose()
        await asyncio.to_thread(stop_worker, raw_proc)
    swap_after = int(psutil.swap_memory().used)
    if swap_after > swap_before:
        notes.append(f"Swap grew by {swap_after - swap_before:,} bytes during the proof.")
    guard = guard_table(meta, context_need(3000, 256)) if with_noswap else []
    tuned_state = await _tuned_state(runtime, backend, name)
    return ProofResult(
        model=name,
        engine=f"{backend.name} (llama.cpp via xllamacpp)",
        runs=runs,
        raw_settings=raw_settings,
        autotune_settings={k: v for k, v in tuned_state.items() if k != "pid"},
        scenarios=results,
        swap_before=swap_before,
        swap_after=swap_after,
        guard=guard,
        notes=notes,
    )


async def _tuned_state(runtime: Runtime, backend: Any, model: str) -> dict[str, Any]:
    """The autotune side's load settings (its plan) and its engine process's RSS."""
    loaded = runtime.pipeline.state.current(backend, model)
    state: dict[str, Any] = {**(loaded.as_dict() if loaded else {}), "source": "autotune plan"}
    for running in await backend.running_models():
        if running.name == model:
            state["pid"] = running.settings.get("pid")
    return state


def _result(
    name: str,
    description: str,
    samples: list[Sample],
    meta: ModelMeta,
    raw_settings: dict[str, Any],
    tuned_settings: dict[str, Any],
    raw_pid: int | None,
    *,
    decode: bool = False,
) -> ScenarioResult:
    tuned_pid = tuned_settings.get("pid")
    raw_fig = figures(
        [s for s in samples if s.side == "raw"], meta, raw_settings.get("n_ctx"), _rss(raw_pid)
    )
    tuned_fig = figures(
        [s for s in samples if s.side == "autotune"],
        meta,
        tuned_settings.get("n_ctx"),
        _rss(tuned_pid),
    )
    return ScenarioResult(
        name, description, raw_fig, tuned_fig, verdict(raw_fig, tuned_fig, decode=decode), samples
    )


async def _cold(
    runtime: Runtime,
    backend: Any,
    name: str,
    meta: ModelMeta,
    runs: int,
    tick: Callable[[str], None],
    raw_settings: dict[str, Any],
) -> ScenarioResult:
    """Cold start: a fresh raw worker vs autotune loading the model after an unload."""
    messages = [{"role": "user", "content": "Say hello."}]
    samples: list[Sample] = []
    for i in range(runs):
        start = time.perf_counter()
        proc, url = await asyncio.to_thread(start_worker, {"path": meta.path, "alias": name})
        loaded = time.perf_counter()
        side = _RawSide(url, name)
        sample = await side.ask(messages, 8, i)
        if sample.ttft_ms is not None:
            sample.ttft_ms += (loaded - start) * 1000  # the load is part of a cold start
        sample.load_ms = (loaded - start) * 1000
        samples.append(sample)
        await side.aclose()
        await asyncio.to_thread(stop_worker, proc)
        tick("cold · raw")
        await backend.unload(name)
        samples.append(await _tuned_ask(runtime, name, messages, 8, i, "balanced"))
        tick("cold · autotune")
    tuned = await _tuned_state(runtime, backend, name)
    return _result(
        "cold",
        "first request after the model was unloaded (load included)",
        samples,
        meta,
        raw_settings,
        tuned,
        None,
    )
