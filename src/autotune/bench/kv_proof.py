"""The proof's KV scenarios: conversations the engine forgot, raw llama.cpp against autotune.

Each scenario runs the same conversations on both sides, interleaved turn by turn, and both
sides are asked the way apps ask: the official ``openai`` client, the whole history every
turn, no autotune header.

* **raw**: llama.cpp workers started with llama.cpp's own defaults (host-RAM prompt cache
  8 GiB, the model's trained context, one slot). When the scenario forgets (a restart, a
  bigger context, another model), the raw side does what a llama-server user must: starts
  the server again.
* **autotune**: ``autotune serve`` as its own process on its own home; "restarting" stops it
  with SIGTERM (its slots are saved) and starts it again (the warm start loads the model
  before the clock, as llama-server does before it answers).
* **floor**: where a scenario resumes, the raw engine is first asked the same turn while it
  still holds the conversation: its own warm follow-up at that context, never restarted —
  what a resume can reach at best on this machine.

Scenarios: ``resume`` (a ~6,000-token conversation, the engine restarted, one more turn),
``agent`` (two sessions sharing a ~4,000-token preamble of system prompt and tool
definitions, the second after a restart), ``switch`` (4 conversations of ~1,000 tokens
taking turns on one model, llama.cpp's default host-RAM cache: parity expected),
``switch-bounded`` (the same with that cache bounded below their total), ``grow`` (a
conversation that outgrows its context: raw restarts with the bigger context, autotune
reloads to the next bucket and restores), ``swap-model`` (two models that cannot both be
loaded, alternating). TTFT is the client's own wall time to the first content token; token
counts are the engine's (``usage``); autotune's disk writes are counted from its events.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx

from autotune.backends.worker_process import start_worker, stop_worker
from autotune.bench.report import percentile
from autotune.ground.config import Settings
from autotune.store.db import Database
from autotune.store.telemetry import TelemetryStore

__all__ = ["KV_SCENARIOS", "KvProof", "KvSample", "run_kv_proof"]

Messages = list[dict[str, Any]]
Progress = Callable[[str, int, int], None]

KV_SCENARIOS = ("resume", "agent", "switch", "switch-bounded", "grow", "swap-model")
#: The host-RAM prompt cache both sides get in ``switch-bounded`` (MiB): a quarter of what
#: four ~1,000-token conversations of the bundled model hold (23 KB a token).
BOUNDED_CACHE_MIB = 20
#: Seconds ``autotune serve`` may take to answer and to finish its warm start.
_SERVE_START = 300


def _document(words: int, topic: str) -> str:
    facts = [
        f"Record {i} of the {topic} log: unit {i % 13} reported {i * 7 % 101} readings, "
        f"status {'ok' if i % 5 else 'check'}."
        for i in range(words // 14 + 1)
    ]
    return " ".join(facts)


def _tools(count: int) -> str:
    """An agent's tool definitions, as JSON schemas in its system prompt."""
    tools = [
        {
            "name": f"tool_{i}",
            "description": f"Reads records of unit {i % 13} from the log store in mode {i % 4}.",
            "parameters": {
                "type": "object",
                "properties": {"unit": {"type": "integer"}, "since": {"type": "string"}},
                "required": ["unit"],
            },
        }
        for i in range(count)
    ]
    return json.dumps(tools, indent=1)


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
    """One scenario's figures, raw and autotune (and the warm floor, where it resumes)."""

    name: str
    description: str
    raw: dict[str, Any]
    autotune: dict[str, Any]
    verdict: str
    disk_bytes_per_turn: float | None
    samples: list[KvSample] = field(default_factory=list)
    floor: dict[str, Any] | None = None


async def _ask_openai(url: str, model: str, messages: Messages, sample: KvSample) -> KvSample:
    """One streamed request with the official client, as an app sends it (a fresh client and
    connection each time: llama-server drops kept-alive connections after streamed replies)."""
    from openai import AsyncOpenAI, OpenAIError

    client = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=900)
    start = time.perf_counter()
    try:
        stream = await client.chat.completions.create(
            model=model,
            messages=cast(Any, messages),
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and sample.ttft_ms is None:
                sample.ttft_ms = (time.perf_counter() - start) * 1000
            if chunk.usage is not None:
                details = chunk.usage.prompt_tokens_details
                sample.prompt_tokens = chunk.usage.prompt_tokens
                sample.cached = (details.cached_tokens if details else 0) or 0
                sample.prefilled = sample.prompt_tokens - sample.cached
    except OpenAIError as exc:  # a failure is a figure too
        sample.error = f"{type(exc).__name__}: {exc}"
    finally:
        await client.close()
    return sample


# ---------------------------------------------------------------------------- the two sides


class _Raw:
    """llama.cpp with its own defaults; the client resends whole histories."""

    def __init__(self, path: str, name: str, **spec: Any) -> None:
        self.path, self.name, self.spec = path, name, spec
        self.proc: Any = None
        self.url = ""

    async def start(self, **spec: Any) -> None:
        await self.stop()
        self.spec.update(spec)
        self.proc, self.url = await asyncio.to_thread(
            start_worker, {"path": self.path, "alias": self.name, **self.spec}
        )

    async def stop(self) -> None:
        if self.proc is not None:
            await asyncio.to_thread(stop_worker, self.proc)
            self.proc = None

    async def ask(
        self, scenario: str, turn: int, messages: Messages, side: str = "raw"
    ) -> KvSample:
        return await _ask_openai(self.url, self.name, messages, KvSample(side, scenario, turn))


class _Served:
    """``autotune serve`` as its own process on its own home; ``start`` waits for its warm
    start, ``stop`` is a SIGTERM (the slots are saved first)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        #: Turns asked (the unmeasured ones too), for bytes written per turn.
        self.asks = 0

    def env(self) -> dict[str, str]:
        s = self.settings
        env = {
            **os.environ,
            "AUTOTUNE_HOME": str(s.home),
            "AUTOTUNE_BACKEND": "embedded",
            "AUTOTUNE_DEFAULT_MODEL": s.default_model,
            "AUTOTUNE_KEEP_ALIVE": "-1",
            "AUTOTUNE_RECALL": "false",
        }
        for name in ("prompt_cache_mib", "memory_budget", "threads", "models_dir"):
            value = getattr(s, name)
            if value is not None:
                env[f"AUTOTUNE_{name.upper()}"] = str(value)
        return env

    async def start(self) -> None:
        await self.stop()
        port = _free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "autotune", "serve"],
            env={**self.env(), "AUTOTUNE_PORT": str(port)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await self._ready()

    async def _ready(self) -> None:
        deadline = time.monotonic() + _SERVE_START
        async with httpx.AsyncClient(base_url=self.url, timeout=5) as http:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"autotune serve stopped (exit {self.proc.returncode})")
                try:
                    health = (await http.get("/health")).json()
                    if not health.get("warming"):
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
        raise RuntimeError("autotune serve did not start")

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(self.proc.wait, 120)
            self.proc = None

    async def ask(
        self, scenario: str, turn: int, messages: Messages, model: str | None = None
    ) -> KvSample:
        self.asks += 1
        sample = KvSample("autotune", scenario, turn)
        await _ask_openai(self.url, model or self.settings.default_model, messages, sample)
        if sample.error is None:
            async with httpx.AsyncClient(base_url=self.url, timeout=30) as http:
                runs = (await http.get("/api/requests", params={"limit": 1})).json()["requests"]
            sample.load_ms = runs[0].get("load_ms") if runs else None
        return sample

    def bytes_written(self) -> int:
        """KV bytes this home's serves wrote (their ``kv_saved`` events)."""
        db = Database(self.settings.db_path)
        try:
            events = TelemetryStore(db).events(100_000)
        finally:
            db.close()
        return sum(int(e["detail"].get("bytes") or 0) for e in events if e["kind"] == "kv_saved")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------- scenarios


@dataclass
class _Context:
    model: str
    path: str
    second: tuple[str, str] | None
    progress: Progress | None
    samples: list[KvSample] = field(default_factory=list)
    done: int = 0
    total: int = 0

    def tick(self, label: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(label, self.done, self.total)


class _Conversation:
    """A conversation's history, as both sides' clients hold it."""

    def __init__(self, system: str | None = None) -> None:
        self.history: Messages = [{"role": "system", "content": system}] if system else []

    def asking(self, text: str) -> Messages:
        """The history with ``text`` appended, as the next request sends it."""
        self.history.append({"role": "user", "content": text})
        return list(self.history)

    def answered(self, text: str = "Noted.") -> None:
        self.history.append({"role": "assistant", "content": text})


async def _turn(
    ctx: _Context,
    raw: _Raw,
    tuned: _Served,
    conv: _Conversation,
    text: str,
    turn: int,
    scenario: str,
    measured: bool = True,
) -> None:
    """One turn on both sides, the order alternating by turn."""
    messages = conv.asking(text)
    for side in (0, 1) if turn % 2 == 0 else (1, 0):
        sample = await (raw if side == 0 else tuned).ask(scenario, turn, messages)
        if measured:
            ctx.samples.append(sample)
        ctx.tick(f"{scenario}: turn {turn}")
    conv.answered()


async def _after_restart(
    ctx: _Context,
    raw: _Raw,
    tuned: _Served,
    conv: _Conversation,
    text: str,
    turn: int,
    scenario: str,
) -> None:
    """The floor first: the raw engine, still warm, answers the turn. Then both engines stop,
    and each side restarts and asks it. TTFT runs from the request (both have loaded the
    model by then); ``restart_ms`` also counts the restart."""
    messages = conv.asking(text)
    ctx.samples.append(await raw.ask(scenario, turn, messages, side="floor"))
    await raw.stop()
    await tuned.stop()
    for side in (0, 1) if turn % 2 == 0 else (1, 0):
        began = time.perf_counter()
        server = raw if side == 0 else tuned
        await server.start()
        asked = time.perf_counter()
        sample = await server.ask(scenario, turn, messages)
        ctx.samples.append(sample.restarted(began, asked))
        ctx.tick(f"{scenario}: turn {turn}")
    conv.answered()


async def _resume(ctx: _Context, raw: _Raw, tuned: _Served, runs: int) -> None:
    for run in range(runs):
        conv = _Conversation()
        document = _document(3500, f"turbine {run}")
        await raw.start()
        await tuned.start()
        first = f"Here is a log.\n{document}\nSummarise it."
        await _turn(ctx, raw, tuned, conv, first, 0, "resume", measured=False)
        question = "Which units reported 'check'?"
        await _after_restart(ctx, raw, tuned, conv, question, run + 1, "resume")


async def _agent(ctx: _Context, raw: _Raw, tuned: _Served, runs: int) -> None:
    """Two sessions of an agent sharing its ~4,000-token preamble; the second after a restart."""
    for run in range(runs):
        preamble = (
            f"You are the log agent of plant {run}. Call a tool when you need records; "
            f"answer in one line.\nTools:\n{_tools(42)}"
        )
        await raw.start()
        await tuned.start()
        first = _Conversation(preamble)
        await _turn(ctx, raw, tuned, first, "Which unit failed first?", 0, "agent", measured=False)
        second = _Conversation(preamble)
        await _after_restart(ctx, raw, tuned, second, "Summarise unit 7.", run + 1, "agent")


async def _switch(
    ctx: _Context, raw: _Raw, tuned: _Served, runs: int, scenario: str, bounded: bool
) -> None:
    spec = {"cache_ram_mib": BOUNDED_CACHE_MIB} if bounded else {}
    if bounded:
        update = {"prompt_cache_mib": BOUNDED_CACHE_MIB}
        tuned.settings = tuned.settings.model_copy(update=update)
    await raw.start(**spec)
    await tuned.start()
    convs = [_Conversation() for _ in range(4)]
    for k, conv in enumerate(convs):
        text = f"Conversation {k}. " + _document(950, f"station {k}") + "\nAcknowledge."
        await _turn(ctx, raw, tuned, conv, text, 0, scenario, measured=False)
    for rnd in range(1, runs + 1):
        for k, conv in enumerate(convs):
            await _turn(ctx, raw, tuned, conv, f"Round {rnd}: one status?", rnd * 4 + k, scenario)


async def _grow(ctx: _Context, raw: _Raw, tuned: _Served, runs: int) -> None:
    """Both sides start small: a first part that fits 2,048 tokens, then a second that does
    not. A raw user must relaunch llama-server with a bigger -c; autotune reloads to the next
    bucket inside the request. Both waits run from that moment."""
    for run in range(runs):
        conv = _Conversation()
        await raw.start(n_ctx=2048)
        await tuned.start()
        first = f"Log part one.\n{_document(700, f'pump {run}')}\nAcknowledge."
        await _turn(ctx, raw, tuned, conv, first, 0, "grow", measured=False)
        messages = conv.asking(f"Log part two.\n{_document(1100, f'valve {run}')}\nAcknowledge.")
        began = time.perf_counter()
        await raw.start(n_ctx=4096)
        asked = time.perf_counter()
        sample = await raw.ask("grow", run + 1, messages)
        ctx.samples.append(sample.restarted(began, asked))
        # autotune's reload happens inside the request: its TTFT is its restart too.
        asked = time.perf_counter()
        sample = await tuned.ask("grow", run + 1, messages)
        ctx.samples.append(sample.restarted(asked, asked))
        ctx.tick("grow: turn 1")
        ctx.tick("grow: turn 1")
        conv.answered()


async def _swap_model(ctx: _Context, raw: _Raw, tuned: _Served, runs: int) -> None:
    assert ctx.second is not None
    other_name, other_path = ctx.second
    raw_other = _Raw(other_path, other_name)
    budget = await asyncio.to_thread(_one_model_budget, ctx, [ctx.path, other_path])
    tuned.settings = tuned.settings.model_copy(update={"memory_budget": budget})
    await tuned.start()
    convs = {ctx.model: _Conversation(), other_name: _Conversation()}
    texts = {m: f"Model {m}. " + _document(900, m) + "\nAcknowledge." for m in convs}
    try:
        for turn in range(runs * 2 + 2):
            model = ctx.model if turn % 2 == 0 else other_name
            side = raw if model == ctx.model else raw_other
            away = raw_other if model == ctx.model else raw
            await away.stop()  # only one fits: the raw user stops one server, starts the other
            await side.start()
            conv = convs[model]
            messages = conv.asking(texts[model] if turn < 2 else f"Turn {turn}: a status?")
            raw_sample = await side.ask("swap-model", turn, messages)
            tuned_sample = await tuned.ask("swap-model", turn, messages, model=model)
            if turn >= 2:
                ctx.samples += [raw_sample, tuned_sample]
            ctx.tick("swap-model")
            ctx.tick("swap-model")
            conv.answered()
    finally:
        await raw_other.stop()


def _one_model_budget(ctx: _Context, paths: list[str]) -> int:
    """A memory budget that holds either model at a 4,096-token context, never both."""
    from autotune.ground.types import LoadSettings
    from autotune.models.estimate import load_estimate
    from autotune.models.gguf import read_gguf_meta

    sizes = [load_estimate(read_gguf_meta(Path(p)), LoadSettings(n_ctx=4096)) for p in paths]
    return max(sizes) + min(sizes) // 2


_RUNNERS: dict[str, Callable[..., Awaitable[None]]] = {
    "resume": _resume,
    "agent": _agent,
    "switch": lambda ctx, raw, tuned, runs: _switch(ctx, raw, tuned, runs, "switch", False),
    "switch-bounded": lambda ctx, raw, tuned, runs: _switch(
        ctx, raw, tuned, runs, "switch-bounded", True
    ),
    "grow": _grow,
    "swap-model": _swap_model,
}

_DESCRIPTIONS = {
    "resume": "a ~6,000-token conversation; the engine restarts; one more turn",
    "agent": "two sessions sharing a ~4,000-token preamble; the second after a restart",
    "switch": "4 conversations of ~1,000 tokens taking turns; llama.cpp's default RAM cache",
    "switch-bounded": f"the same, both sides' host-RAM prompt cache at {BOUNDED_CACHE_MIB} MiB",
    "grow": "a conversation that outgrows a 2,048-token context (raw: relaunched at 4,096)",
    "swap-model": "two models that cannot both be loaded, alternating",
}

_TURNS = {"resume": 2, "agent": 2, "switch": 4, "switch-bounded": 4, "grow": 2, "swap-model": 2}


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


def _verdict(
    name: str, raw: dict[str, Any], tuned: dict[str, Any], floor: dict[str, Any] | None = None
) -> str:
    r, t = raw.get("ttft_median_ms"), tuned.get("ttft_median_ms")
    if not r or not t:
        return "No figures."
    ratio = r / t
    load = tuned.get("load_median_ms")
    if ratio >= 1.05 and load and t > load:
        said = (
            f"First token {ratio:.1f}× sooner ({t:.0f} vs {r:.0f} ms raw), {r / (t - load):.0f}× "
            f"with autotune's {load:.0f} ms model load set aside (raw loaded before the clock)."
        )
    elif ratio >= 1.05:
        said = f"First token {ratio:.1f}× sooner ({t:.0f} vs {r:.0f} ms raw)."
    elif ratio > 0.95:
        said = f"Parity: no better, no worse ({t:.0f} vs {r:.0f} ms raw)."
    else:
        said = f"autotune is slower here ({t:.0f} vs {r:.0f} ms raw, {1 / ratio - 1:+.0%})."
    warm = floor.get("ttft_median_ms") if floor else None
    if warm:
        said += f" {t / warm:.2f}× the warm engine's own follow-up ({warm:.0f} ms, the floor)."
    return said


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
    ctx = _Context(model, model_path, second, progress)
    ctx.total = sum(_TURNS[s] * 2 * (runs + 1) for s in chosen)
    results = []
    for name in chosen:
        home = settings.home / "kv-proof" / name
        shutil.rmtree(home, ignore_errors=True)  # nothing saved or warm-started from before
        base = settings.model_copy(update={"home": home, "default_model": model})
        raw, tuned = _Raw(model_path, model), _Served(base)
        before = len(ctx.samples)
        try:
            await _RUNNERS[name](ctx, raw, tuned, runs)
        finally:
            await raw.stop()
            await tuned.stop()
        results.append(_proof(name, ctx.samples[before:], tuned))
    return results


def _proof(name: str, samples: list[KvSample], tuned: _Served) -> KvProof:
    raw_fig = _side([s for s in samples if s.side == "raw"])
    tuned_fig = _side([s for s in samples if s.side == "autotune"])
    floors = [s for s in samples if s.side == "floor"]
    floor = _side(floors) if floors else None
    written = tuned.bytes_written() / max(1, tuned.asks)
    verdict = _verdict(name, raw_fig, tuned_fig, floor)
    return KvProof(name, _DESCRIPTIONS[name], raw_fig, tuned_fig, verdict, written, samples, floor)
