"""The proof's KV scenarios: conversations the engine forgot, raw llama.cpp against autotune.

Each scenario runs the same conversations on both sides, interleaved turn by turn:

* **raw**: llama.cpp workers started with llama.cpp's own defaults (host-RAM prompt cache
  8 GiB, the model's trained context, one slot), and a client that resends the whole
  history each turn, as OpenAI clients do. When the scenario forgets (a restart, a bigger
  context, another model), the raw side does what a llama-server user must: starts the
  server again.
* **autotune**: autotune's own pipeline with conversation ids and its KV-cache manager;
  "restarting" closes the runtime (its slots are saved) and opens a new one on the same home.

Scenarios: ``resume`` (a ~5,000-token conversation, the engine restarted, one more turn),
``switch`` (4 conversations of ~1,000 tokens taking turns on one model, llama.cpp's default
host-RAM cache: parity expected), ``switch-bounded`` (the same with that cache bounded below
their total), ``grow`` (a conversation that outgrows its context: raw restarts with the
bigger context, autotune reloads to the next bucket and restores), ``swap-model`` (two models
that cannot both be loaded, alternating). Timings are the engine's own (``prompt_n``,
``cache_n``) plus wall time to the first content token; autotune's disk writes are counted.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from autotune.backends.worker_process import start_worker, stop_worker
from autotune.bench.report import percentile
from autotune.ground.config import Settings
from autotune.ground.types import Chunk
from autotune.pipeline import ChatInput, Reply
from autotune.runtime import Runtime, open_runtime

__all__ = ["KV_SCENARIOS", "KvProof", "KvSample", "run_kv_proof"]

Messages = list[dict[str, Any]]
Progress = Callable[[str, int, int], None]

KV_SCENARIOS = ("resume", "switch", "switch-bounded", "grow", "swap-model")
#: The host-RAM prompt cache both sides get in ``switch-bounded`` (MiB): a quarter of what
#: four ~1,000-token conversations of the bundled model hold (23 KB a token).
BOUNDED_CACHE_MIB = 20


def _document(words: int, topic: str) -> str:
    facts = [
        f"Record {i} of the {topic} log: unit {i % 13} reported {i * 7 % 101} readings, "
        f"status {'ok' if i % 5 else 'check'}."
        for i in range(words // 14 + 1)
    ]
    return " ".join(facts)


@dataclass
class KvSample:
    """One turn on one side."""

    side: str
    scenario: str
    turn: int
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    prefilled: int | None = None
    cached: int | None = None
    error: str | None = None
    #: From the (re)start of the engine to the first token: the restart and the TTFT.
    restart_ms: float | None = None
    #: A model load autotune ran inside this request (part of its TTFT).
    load_ms: float | None = None

    def restarted(self, began: float, asked: float) -> KvSample:
        """Note the restart that began at ``began``; the request was sent at ``asked``."""
        if self.ttft_ms is not None:
            self.restart_ms = (asked - began) * 1000 + self.ttft_ms
        return self


@dataclass
class KvProof:
    """One scenario's figures, raw and autotune."""

    name: str
    description: str
    raw: dict[str, Any]
    autotune: dict[str, Any]
    verdict: str
    disk_bytes_per_turn: float | None
    samples: list[KvSample] = field(default_factory=list)


# ---------------------------------------------------------------------------- the two sides


class _Raw:
    """llama.cpp with its own defaults; the client resends whole histories."""

    def __init__(self, path: str, name: str, **spec: Any) -> None:
        self.path, self.name, self.spec = path, name, spec
        self.proc: Any = None
        self.http: httpx.AsyncClient | None = None

    async def start(self, **spec: Any) -> None:
        await self.stop()
        self.spec.update(spec)
        self.proc, url = await asyncio.to_thread(
            start_worker, {"path": self.path, "alias": self.name, **self.spec}
        )
        # A fresh connection per request: llama-server drops kept-alive connections after
        # streamed replies without a word (the next request then fails with "Server
        # disconnected"; docs/ENGINES.md). autotune's own client retries; this one need not.
        self.http = httpx.AsyncClient(
            base_url=url, timeout=900, limits=httpx.Limits(max_keepalive_connections=0)
        )

    async def stop(self) -> None:
        if self.http is not None:
            await self.http.aclose()
            self.http = None
        if self.proc is not None:
            await asyncio.to_thread(stop_worker, self.proc)
            self.proc = None

    async def ask(self, scenario: str, turn: int, messages: Messages) -> KvSample:
        assert self.http is not None
        sample = KvSample("raw", scenario, turn)
        body = {"model": self.name, "messages": messages, "max_tokens": 8, "temperature": 0}
        reply = Reply()
        start = time.perf_counter()
        async with self.http.stream(
            "POST", "/v1/chat/completions", json={**body, "stream": True}
        ) as response:
            if response.status_code >= 400:
                await response.aread()
                sample.error = f"HTTP {response.status_code}"
                return sample
            async for line in response.aiter_lines():
                if line.startswith("data: {") and reply.add(Chunk(json.loads(line[6:]))):
                    sample.ttft_ms = sample.ttft_ms or (time.perf_counter() - start) * 1000
        _timings(sample, reply.extra.get("timings"))
        return sample


class _Tuned:
    """autotune's pipeline on its own home; ``restart`` closes and reopens the runtime."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime: Runtime | None = None
        #: KV bytes written by runtimes already closed (their shutdown saves included).
        self.written = 0
        #: Turns asked (the unmeasured ones too), for bytes written per turn.
        self.asks = 0

    async def start(self) -> Runtime:
        await self.stop()
        self.runtime = await open_runtime(self.settings, start_sampler=False)
        return self.runtime

    async def stop(self) -> None:
        if self.runtime is not None:
            kv = self.runtime.pipeline.kv
            await self.runtime.aclose()  # saves every slot first
            self.written += kv.bytes_written if kv is not None else 0
            self.runtime = None

    def bytes_written(self) -> int:
        kv = self.runtime.pipeline.kv if self.runtime else None
        return self.written + (kv.bytes_written if kv is not None else 0)

    async def ask(
        self, scenario: str, turn: int, conversation: str, text: str, **extra: Any
    ) -> KvSample:
        assert self.runtime is not None
        self.asks += 1
        sample = KvSample("autotune", scenario, turn)
        start = time.perf_counter()
        try:
            run = await self.runtime.pipeline.start(
                ChatInput(
                    messages=[{"role": "user", "content": text}],
                    conversation_id=conversation,
                    source="proof",
                    params={"max_tokens": 8, "temperature": 0, **extra.pop("params", {})},
                    **extra,
                )
            )
            async for _ in run:
                if run.reply.text and sample.ttft_ms is None:
                    sample.ttft_ms = (time.perf_counter() - start) * 1000
        except Exception as exc:  # a failure is a figure too
            sample.error = f"{type(exc).__name__}: {exc}"
            return sample
        _timings(sample, run.stats.raw.get("timings") if run.stats else None)
        sample.load_ms = run.record.load_ms
        return sample


def _timings(sample: KvSample, timings: Any) -> None:
    if isinstance(timings, dict):
        sample.prefilled = timings.get("prompt_n")
        sample.cached = timings.get("cache_n")
        sample.prompt_tokens = (sample.prefilled or 0) + (sample.cached or 0)


# ---------------------------------------------------------------------------- scenarios


@dataclass
class _Context:
    model: str
    path: str
    second: tuple[str, str] | None
    home: Path
    base: Settings
    progress: Progress | None
    samples: list[KvSample] = field(default_factory=list)
    done: int = 0
    total: int = 0

    def tick(self, label: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(label, self.done, self.total)


class _Conversation:
    """A conversation as both sides hold it: its id (autotune), its history (the raw client)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.history: Messages = []

    def raw_turn(self, text: str) -> Messages:
        self.history.append({"role": "user", "content": text})
        return list(self.history)

    def answered(self, text: str = "Noted.") -> None:
        self.history.append({"role": "assistant", "content": text})


async def _turn(
    ctx: _Context,
    raw: _Raw,
    tuned: _Tuned,
    conv: _Conversation,
    text: str,
    turn: int,
    scenario: str,
    measured: bool = True,
) -> None:
    """One turn on both sides, the order alternating by turn."""
    order = (0, 1) if turn % 2 == 0 else (1, 0)
    for side in order:
        if side == 0:
            sample = await raw.ask(scenario, turn, conv.raw_turn(text))
        else:
            sample = await tuned.ask(scenario, turn, conv.name, text)
        if measured:
            ctx.samples.append(sample)
        ctx.tick(f"{scenario}: turn {turn}")
    conv.answered()


async def _resume(ctx: _Context, raw: _Raw, tuned: _Tuned, runs: int) -> None:
    for run in range(runs):
        conv = _Conversation(f"resume-{run}")
        document = _document(2900, f"turbine {run}")
        await raw.start()
        await tuned.start()
        await _turn(
            ctx,
            raw,
            tuned,
            conv,
            f"Here is a log.\n{document}\nSummarise it.",
            0,
            "resume",
            measured=False,
        )
        await _after_restart(ctx, raw, tuned, conv, "Which units reported 'check'?", run + 1)


async def _after_restart(
    ctx: _Context, raw: _Raw, tuned: _Tuned, conv: _Conversation, text: str, turn: int
) -> None:
    """Both engines stop, then each side restarts and asks. TTFT runs from the request (raw:
    llama-server has loaded the model at its start; autotune loads it inside the request,
    and restores the conversation's KV); ``restart_ms`` also counts the restart."""
    await raw.stop()
    await tuned.stop()
    for side in (0, 1) if turn % 2 == 0 else (1, 0):
        began = time.perf_counter()
        if side == 0:
            await raw.start()
            asked = time.perf_counter()
            sample = await raw.ask("resume", turn, conv.raw_turn(text))
        else:
            await tuned.start()
            asked = time.perf_counter()
            sample = await tuned.ask("resume", turn, conv.name, text)
        ctx.samples.append(sample.restarted(began, asked))
        ctx.tick(f"resume: turn {turn}")
    conv.answered()


async def _switch(
    ctx: _Context, raw: _Raw, tuned: _Tuned, runs: int, scenario: str, bounded: bool
) -> None:
    spec = {"cache_ram_mib": BOUNDED_CACHE_MIB} if bounded else {}
    if bounded:
        update = {"prompt_cache_mib": BOUNDED_CACHE_MIB}
        tuned.settings = tuned.settings.model_copy(update=update)
    await raw.start(**spec)
    await tuned.start()
    convs = [_Conversation(f"{scenario}-{k}") for k in range(4)]
    for k, conv in enumerate(convs):
        text = f"Conversation {k}. " + _document(950, f"station {k}") + "\nAcknowledge."
        await _turn(ctx, raw, tuned, conv, text, 0, scenario, measured=False)
    for rnd in range(1, runs + 1):
        for k, conv in enumerate(convs):
            await _turn(ctx, raw, tuned, conv, f"Round {rnd}: one status?", rnd * 4 + k, scenario)


async def _grow(ctx: _Context, raw: _Raw, tuned: _Tuned, runs: int) -> None:
    """Both sides with the same settings: a first part that fits 2,048 tokens, then a second
    that does not. A raw user must relaunch llama-server with a bigger -c; autotune reloads
    to the next bucket inside the request. Both waits run from that moment."""
    for run in range(runs):
        conv = _Conversation(f"grow-{run}")
        await raw.start(n_ctx=2048)
        await tuned.start()
        first = f"Log part one.\n{_document(800, f'pump {run}')}\nAcknowledge."
        await _turn(ctx, raw, tuned, conv, first, 0, "grow", measured=False)
        more = f"Log part two.\n{_document(1100, f'valve {run}')}\nAcknowledge."
        began = time.perf_counter()
        await raw.start(n_ctx=4096)
        asked = time.perf_counter()
        sample = await raw.ask("grow", run + 1, conv.raw_turn(more))
        ctx.samples.append(sample.restarted(began, asked))
        # The same request on both sides: a 4,096-token context (Ollama's num_ctx), so
        # autotune keeps the whole history rather than compacting it into 2,048. Its
        # reload happens inside the request: its TTFT is its restart too.
        asked = time.perf_counter()
        sample = await tuned.ask("grow", run + 1, conv.name, more, min_context=4096)
        ctx.samples.append(sample.restarted(asked, asked))
        ctx.tick("grow: turn 1")
        ctx.tick("grow: turn 1")
        conv.answered()


async def _swap_model(ctx: _Context, raw: _Raw, tuned: _Tuned, runs: int) -> None:
    assert ctx.second is not None
    other_name, other_path = ctx.second
    raw_other = _Raw(other_path, other_name)
    budget = await _one_model_budget(tuned, [ctx.model, other_name])
    tuned.settings = tuned.settings.model_copy(update={"memory_budget": budget})
    await tuned.start()
    convs = {ctx.model: _Conversation("swap-a"), other_name: _Conversation("swap-b")}
    texts = {m: f"Model {m}. " + _document(900, m) + "\nAcknowledge." for m in convs}
    try:
        for turn in range(runs * 2 + 2):
            model = ctx.model if turn % 2 == 0 else other_name
            side = raw if model == ctx.model else raw_other
            away = raw_other if model == ctx.model else raw
            await away.stop()  # only one fits: the raw user stops one server, starts the other
            await side.start()
            conv = convs[model]
            text = texts[model] if turn < 2 else f"Turn {turn}: a status?"
            raw_sample = await side.ask("swap-model", turn, conv.raw_turn(text))
            tuned_sample = await tuned.ask("swap-model", turn, conv.name, text, model=model)
            if turn >= 2:
                ctx.samples += [raw_sample, tuned_sample]
            ctx.tick("swap-model")
            ctx.tick("swap-model")
            conv.answered()
    finally:
        await raw_other.stop()


async def _one_model_budget(tuned: _Tuned, models: list[str]) -> int:
    """A memory budget that holds either model at a 4,096-token context, never both."""
    from autotune.ground.types import LoadSettings
    from autotune.models.estimate import load_estimate

    runtime = tuned.runtime or await tuned.start()
    sizes = []
    for name in models:
        backend, resolved = await runtime.backends.resolve(name)
        sizes.append(load_estimate(await backend.model_meta(resolved), LoadSettings(n_ctx=4096)))
    return max(sizes) + min(sizes) // 2


_RUNNERS: dict[str, Callable[..., Awaitable[None]]] = {
    "resume": _resume,
    "switch": lambda ctx, raw, tuned, runs: _switch(ctx, raw, tuned, runs, "switch", False),
    "switch-bounded": lambda ctx, raw, tuned, runs: _switch(
        ctx, raw, tuned, runs, "switch-bounded", True
    ),
    "grow": _grow,
    "swap-model": _swap_model,
}

_DESCRIPTIONS = {
    "resume": "a ~5,000-token conversation; the engine restarts; one more turn",
    "switch": "4 conversations of ~1,000 tokens taking turns; llama.cpp's default RAM cache",
    "switch-bounded": f"the same, both sides' host-RAM prompt cache at {BOUNDED_CACHE_MIB} MiB",
    "grow": "a conversation that outgrows a 2,048-token context (raw: relaunched at 4,096)",
    "swap-model": "two models that cannot both be loaded, alternating",
}

_TURNS = {"resume": 2, "switch": 4, "switch-bounded": 4, "grow": 2, "swap-model": 2}


def _side(samples: list[KvSample]) -> dict[str, Any]:
    ok = [s for s in samples if s.error is None]
    ttft = [s.ttft_ms for s in ok if s.ttft_ms is not None]
    restart = [s.restart_ms for s in ok if s.restart_ms is not None]
    loads = [s.load_ms for s in ok if s.load_ms is not None]
    return {
        "turns": len(samples),
        "errors": len(samples) - len(ok),
        "ttft_median_ms": percentile(ttft, 50) if ttft else None,
        "ttft_p90_ms": percentile(ttft, 90) if ttft else None,
        "prefilled_median": percentile([float(s.prefilled or 0) for s in ok], 50) if ok else None,
        "prompt_median": percentile([float(s.prompt_tokens or 0) for s in ok], 50) if ok else None,
        "restart_to_token_median_ms": percentile(restart, 50) if restart else None,
        "load_median_ms": percentile(loads, 50) if loads else None,
    }


def _verdict(name: str, raw: dict[str, Any], tuned: dict[str, Any]) -> str:
    r, t = raw.get("ttft_median_ms"), tuned.get("ttft_median_ms")
    if not r or not t:
        return "No figures."
    ratio = r / t
    load = tuned.get("load_median_ms")
    if ratio >= 1.05 and load and t > load:
        return (
            f"First token {ratio:.1f}× sooner ({t:.0f} vs {r:.0f} ms raw), {r / (t - load):.0f}× "
            f"with autotune's {load:.0f} ms model load set aside (raw loaded before the clock)."
        )
    if ratio >= 1.05:
        return f"First token {ratio:.1f}× sooner ({t:.0f} vs {r:.0f} ms raw)."
    if ratio > 0.95:
        return f"Parity: no better, no worse ({t:.0f} vs {r:.0f} ms raw)."
    return f"autotune is slower here ({t:.0f} vs {r:.0f} ms raw, {1 / ratio - 1:+.0%})."


async def run_kv_proof(
    settings: Settings,
    model: str,
    model_path: str,
    *,
    runs: int = 3,
    scenarios: list[str] | None = None,
    second: tuple[str, str] | None = None,
    progress: Progress | None = None,
) -> list[KvProof]:
    """Run the KV scenarios; ``second`` is (name, GGUF path) of the model for swap-model."""
    chosen = [s for s in (scenarios or list(KV_SCENARIOS)) if s != "swap-model" or second]
    home = settings.home / "kv-proof"
    base = settings.model_copy(update={"home": home, "default_model": model, "keep_alive": -1})
    ctx = _Context(model, model_path, second, home, base, progress)
    ctx.total = sum(_TURNS[s] * 2 * (runs + 1) for s in chosen)
    results = []
    for name in chosen:
        raw, tuned = _Raw(model_path, model), _Tuned(base)
        before = len(ctx.samples)
        try:
            await tuned.start()
            await _RUNNERS[name](ctx, raw, tuned, runs)
        finally:
            await raw.stop()
            await tuned.stop()
        samples = ctx.samples[before:]
        raw_fig = _side([s for s in samples if s.side == "raw"])
        tuned_fig = _side([s for s in samples if s.side == "autotune"])
        written, turns = tuned.bytes_written(), max(1, tuned.asks)
        results.append(
            KvProof(
                name,
                _DESCRIPTIONS[name],
                raw_fig,
                tuned_fig,
                _verdict(name, raw_fig, tuned_fig),
                written / turns,
                samples,
            )
        )
    return results
