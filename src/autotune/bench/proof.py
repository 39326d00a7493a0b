"""The proof: the raw engine and autotune, side by side on the same engine, per scenario.

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
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psutil

from autotune.backends.openai_compat import once_more_if_stale
from autotune.backends.worker_process import start_worker, stop_worker
from autotune.bench.report import percentile
from autotune.bench.texts import chat_prompts, edit_prompts, quote_prompts
from autotune.ground.profiles import get_profile
from autotune.ground.types import Chunk, ModelMeta
from autotune.hardware.pressure import Tier
from autotune.models.estimate import estimate_memory, kv_cache_bytes, load_estimate
from autotune.pipeline import ChatInput, Reply
from autotune.runtime import Runtime
from autotune.tuning.planner import MemoryState, PlanInput, context_need, plan

__all__ = [
    "DEFAULT_SCENARIOS",
    "SCENARIOS",
    "ProofResult",
    "Sample",
    "Scenario",
    "guard_table",
    "run_proof",
]

Messages = list[dict[str, Any]]

_SYSTEM = (
    "You are the support assistant of Northwind Cloud, a hosting company. Policies you must "
    "follow: answer in at most two sentences; never promise refunds, route them to billing; "
    "for outages, point to status.northwind.example; servers are in Frankfurt, Dublin and "
    "Virginia; plans are Starter (2 vCPU, 4 GB), Pro (8 vCPU, 32 GB) and Scale (32 vCPU, 128 "
    "GB); backups run nightly at 02:00 UTC and are kept 14 days on Pro and 30 days on Scale; "
    "support hours are 24/7 for Scale and 08:00-20:00 CET for the others; escalate security "
    "incidents to security@northwind.example within one hour; IPv6 is available in every "
    "region; the API rate limit is 600 requests per minute per token; DNS changes propagate "
    "within 5 minutes; custom domains need a CNAME to edge.northwind.example. "
) * 3
_SHORT = [
    "What is the capital of France?",
    "Give me a synonym for quick.",
    "How many legs does a spider have?",
    "Name a prime number above 50.",
    "What colour is the sky on a clear day?",
    "Translate 'good morning' into Spanish.",
]
_TURNS = [
    ("Which regions do you have?", "We run servers in Frankfurt, Dublin and Virginia."),
    ("How long are backups kept on Pro?", "Backups on Pro are kept for 14 days."),
    ("Is IPv6 available?", "Yes, IPv6 is available in every region."),
    ("What is the API rate limit?", "The limit is 600 requests per minute per token."),
    ("When do backups run?", "Backups run nightly at 02:00 UTC."),
    ("Can I get a refund for last month?", "Refunds are handled by our billing team."),
]
_DOC_SENTENCES = [
    "The ingestion service reads events from the queue in batches of 500.",
    "Each batch is validated against the schema registry before it is written.",
    "Invalid events go to a dead-letter topic with the validation error attached.",
    "The writer flushes to object storage every 30 seconds or 64 megabytes, whichever is first.",
    "Compaction merges small files into 512 megabyte Parquet files every hour.",
    "Retention is 90 days for raw events and two years for the compacted tables.",
    "A watermark tracks the last fully written offset per partition.",
    "On restart the service resumes from the watermark, so events are never lost.",
    "Metrics are exported on port 9102 and scraped by Prometheus every 15 seconds.",
    "Alerts fire when the consumer lag exceeds 50,000 events for five minutes.",
]
_DOC = " ".join(
    f"Section {i // 10 + 1}.{i % 10 + 1}: {s}" for i, s in enumerate(_DOC_SENTENCES * 6)
)
_DOC_QUESTIONS = [
    "Summarise how the ingestion service avoids losing events.",
    "How often does compaction run, and how large are the files?",
    "When do alerts fire?",
]


def _short() -> list[Messages]:
    return [[{"role": "user", "content": q}] for q in _SHORT]


def _multiturn() -> list[Messages]:
    out: list[Messages] = []
    history: Messages = [{"role": "system", "content": _SYSTEM}]
    for question, answer in _TURNS:
        history = [*history, {"role": "user", "content": question}]
        out.append(history)
        history = [*history, {"role": "assistant", "content": answer}]
    return out


def _longdoc() -> list[Messages]:
    base = [{"role": "system", "content": "Answer from the document only.\n\n" + _DOC}]
    return [[*base, {"role": "user", "content": q}] for q in _DOC_QUESTIONS]


def _sustained() -> list[Messages]:
    topics = [
        "rivers",
        "volcanoes",
        "bridges",
        "comets",
        "forests",
        "deserts",
        "glaciers",
        "islands",
    ]
    return [[{"role": "user", "content": f"Write two sentences about {t}."}] for t in topics]


def _edit() -> list[Messages]:
    return edit_prompts(3, offset=4)  # other files than `autotune tune` measures on


def _quote() -> list[Messages]:
    return quote_prompts(3, offset=2)


def _chat() -> list[Messages]:
    return chat_prompts(4, offset=5)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    requests: Callable[[], list[Messages]]
    max_tokens: int = 16
    #: The verdict compares decoding speed (answers long enough for it to matter).
    decode: bool = False


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("short", "short prompts, one turn each", _short),
        Scenario("multiturn", "6-turn conversation behind a long system prompt", _multiturn),
        Scenario("longdoc", "a ~1,000-token document, then follow-up questions", _longdoc),
        Scenario("sustained", "8 back-to-back calls on different topics", _sustained, 24),
        Scenario("edit", "a code file with a small change; the whole file back", _edit, 192, True),
        Scenario("quote", "a pasted document; answer by quoting it", _quote, 128, True),
        Scenario("chat", "free chat: explanations that copy nothing", _chat, 128, True),
    )
}
#: What ``autotune proof`` runs when no scenario is named.
DEFAULT_SCENARIOS = ("short", "multiturn", "longdoc", "sustained")


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


def _figures(
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
    raw_fig = _figures(
        [s for s in samples if s.side == "raw"], meta, raw_settings.get("n_ctx"), _rss(raw_pid)
    )
    tuned_fig = _figures(
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
