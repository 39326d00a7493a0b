"""The embedded engine: GGUF models on llama.cpp, loaded and unloaded as plans and memory require.

Each loaded model is an :mod:`autotune.backends.engine_worker` child process serving the
llama-server HTTP API on a free 127.0.0.1 port; chat goes to it over real HTTP through
:class:`~autotune.backends.openai_compat.OpenAICompatBackend`. This module decides *when*
a model is (re)loaded or unloaded and counts every load, so a caller can see whether a
request caused a reload. Context size, batch, flash attention, KV types, threads and slots
are launch-time settings on llama.cpp: a request whose settings differ from the loaded
ones reloads the model (and drops its prompt cache) — the planner's job is to avoid that.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import re
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from autotune.backends.base import Backend
from autotune.backends.chat_worker import Worker, served, settings_diff
from autotune.backends.embedding_workers import EmbeddingWorkers
from autotune.backends.openai_compat import OpenAICompatBackend
from autotune.backends.residency import WorkerState, make_room, prompt_cache
from autotune.backends.worker_process import key_file, start_worker, stop_worker
from autotune.ground.config import Settings
from autotune.ground.engines import EngineSpec
from autotune.ground.errors import (
    InsufficientMemory,
    ModelLoadError,
    NotSupported,
    UnsupportedOption,
)
from autotune.ground.kv import KvIdentity, SlotLayout
from autotune.ground.types import (
    Capabilities,
    ChatRequest,
    Chunk,
    CompletionRequest,
    EngineEvent,
    LoadSettings,
    ModelEntry,
    ModelMeta,
    RunningModel,
)
from autotune.ground.units import MiB

__all__ = ["EmbeddedBackend", "EngineEvent", "from_settings"]  # EngineEvent re-exported from .base

#: What one model may use when no plan says otherwise: the trained context, capped.
DEFAULT_N_CTX = 4096
#: Seconds the slots of a worker being stopped may take to save.
_SAVE_TIMEOUT = 60.0


def _load_estimate(meta: ModelMeta, settings: LoadSettings) -> int:
    from autotune.models.estimate import load_estimate

    return load_estimate(meta, settings)


def _default_budget() -> int:
    from autotune.ground.config import get_settings
    from autotune.hardware.profile import detect_hardware, effective_budget

    return effective_budget(detect_hardware(), get_settings().memory_budget)


class EmbeddedBackend(Backend):
    """Runs local GGUF files on llama.cpp in autotune-owned worker processes."""

    name = "embedded"
    start_hint = "The embedded engine needs the xllamacpp package: run `make setup`."
    capabilities = Capabilities(
        per_request_context=False,
        context_change_reloads=True,
        load_control=True,
        kv_cache_type=True,
        flash_attention=True,
        prefix_cache=True,
        reports_cached_tokens=True,
        tokenize=True,
        running_models=True,
        keep_alive=True,
        unload=True,
        engine_events=True,
        # llama-server answers at most one choice per slot, and autotune runs one slot.
        max_choices=1,
        speculative=True,
    )

    def __init__(
        self,
        *,
        memory_budget: int | None = None,
        keep_alive: float = -1,
        threads: int | None = None,
        log_dir: Path | None = None,
        verbosity: int = 1,
        nice: int = 0,
        estimator: Callable[[ModelMeta, LoadSettings], int] | None = None,
        on_event: Callable[[EngineEvent], None] | None = None,
        kv_dir: Path | None = None,
        prompt_cache_mib: int | None = None,
    ) -> None:
        #: A fixed size for llama-server's host-RAM prompt cache (None: bounded by the budget).
        self.prompt_cache_mib = prompt_cache_mib
        #: Where workers save and restore slots (llama.cpp ``slot_save_path``); None: no slots.
        self.kv_dir = kv_dir
        if kv_dir is not None:
            self.capabilities = dataclasses.replace(type(self).capabilities, slots=True)
        self._budget = memory_budget
        self.keep_alive = keep_alive
        self.threads = threads
        self.log_dir = log_dir
        self.verbosity = verbosity
        self.nice = nice
        self._estimator = estimator or _load_estimate
        self.on_event = on_event
        self._workers: dict[str, Worker] = {}
        #: Workers being stopped: their slots can still be saved (see ``before_unload``).
        self._stopping: dict[str, Worker] = {}
        self._meta: dict[str, ModelMeta] = {}
        self._lock: asyncio.Lock | None = None
        self._reaper: asyncio.Task[None] | None = None
        #: Loads per model since this backend started; a reload counts as a load.
        self.loads: Counter[str] = Counter()
        self._generations = itertools.count(1)
        self.events: list[EngineEvent] = []
        #: Workers started for embedding models (apart from the chat workers).
        self.embedders = EmbeddingWorkers()

    # ------------------------------------------------------------------ discovery

    async def health(self) -> bool:
        try:
            import xllamacpp  # noqa: F401
        except ImportError:
            return False
        return True

    async def list_models(self) -> list[ModelEntry]:
        from autotune.models.discovery import discover

        found = await asyncio.to_thread(discover)
        return [
            ModelEntry(name=m.name, backend=self.name, size_bytes=m.size_bytes, path=str(m.path))
            for m in found.models
        ]

    async def model_meta(self, model: str) -> ModelMeta:
        if model in self._meta:
            return self._meta[model]
        from autotune.models.discovery import discover
        from autotune.models.gguf import GGUFError, read_gguf_meta

        local = (await asyncio.to_thread(discover)).find(model)
        try:
            meta = await asyncio.to_thread(read_gguf_meta, local.path, local.name)
        except GGUFError as exc:
            raise ModelLoadError(str(exc)) from exc
        self._meta[model] = self._meta[local.name] = meta
        return meta

    async def running_models(self) -> list[RunningModel]:
        await self._reap_dead()
        out = []
        for w in self._workers.values():
            try:
                rss = psutil.Process(w.proc.pid).memory_info().rss
            except psutil.Error:
                rss = None
            out.append(
                RunningModel(
                    name=w.name,
                    backend=self.name,
                    size_bytes=rss,
                    vram_bytes=0,
                    context_length=w.settings.n_ctx,
                    quantization=self._meta.get(w.name, ModelMeta(w.name)).quantization,
                    loaded_at=w.loaded_at,
                    expires_at=None
                    if w.keep_alive < 0
                    else time.time() + max(0.0, w.keep_alive - (time.monotonic() - w.last_used)),
                    loads=self.loads[w.name],
                    settings={
                        **w.settings.as_dict(),
                        "cache_ram_mib": w.cache_ram_mib,
                        "url": w.url,
                        "pid": w.proc.pid,
                    },
                )
            )
        return out

    def loaded_settings(self, model: str) -> LoadSettings | None:
        """The settings the model is loaded with now, or None when it is not loaded."""
        worker = self._workers.get(model)
        return worker.settings if worker and worker.alive() else None

    # ------------------------------------------------------------------ slots

    def slot_layout(self, model: str) -> SlotLayout | None:
        worker = self._workers.get(model) or self._stopping.get(model)
        if worker is None or not worker.alive() or self.kv_dir is None:
            return None
        stat = worker.path.stat()
        settings = worker.settings
        identity = KvIdentity(
            model_file=f"{worker.path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}",
            cache_type_k=settings.cache_type_k or "f16",
            cache_type_v=settings.cache_type_v or "f16",
            n_parallel=settings.n_parallel,
        )
        # llama-server's own default for --cache-ram, when autotune set none: 8192 MiB.
        ram = (8192 if worker.cache_ram_mib is None else worker.cache_ram_mib) * MiB
        return SlotLayout(worker.generation, settings.n_parallel, settings.n_ctx, identity, ram)

    async def slot_action(
        self, model: str, slot: int, action: str, filename: str
    ) -> dict[str, Any]:
        worker = self._workers.get(model) or self._stopping.get(model)
        if worker is None or not worker.alive():
            raise NotSupported(f"{model} is not loaded; its slots are gone.")
        return await worker.client.slot_action(model, slot, action, filename)

    # ------------------------------------------------------------------ chat

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        worker, loaded_now = await self._ensure(request.model, request.load, request.keep_alive)
        if request.params.get("tools") and not worker.supports_tools:
            raise UnsupportedOption(
                "tools", "The embedded engine", f"{worker.name}'s chat template has no tool support"
            )
        async for chunk in served(worker, loaded_now, worker.client.stream_chat(request)):
            yield chunk

    async def tokenize(self, model: str, text: str) -> list[int]:
        """Tokens from the loaded model's own tokenizer; never loads a model just to count."""
        meta = await self.model_meta(model)
        worker = self._workers.get(meta.name)
        if worker is None or not worker.alive():
            raise NotSupported(f"{meta.name} is not loaded; its tokenizer is not at hand.")
        return await worker.client.tokenize(meta.name, text)

    async def tokenize_prompt(self, request: ChatRequest, raw: str | None = None) -> list[int]:
        """A prompt's tokens from the loaded worker (never loads a model just for this)."""
        meta = await self.model_meta(request.model)
        worker = self._workers.get(meta.name)
        if worker is None or not worker.alive():
            raise NotSupported(f"{meta.name} is not loaded; its tokenizer is not at hand.")
        return await worker.client.tokenize_prompt(request, raw)

    async def stream_completion(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        """A text completion (or fill-in-the-middle) on the worker, loaded as planned."""
        worker, loaded_now = await self._ensure(request.model, request.load, request.keep_alive)
        async for chunk in served(worker, loaded_now, worker.client.stream_completion(request)):
            yield chunk

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        """Vectors from an embedding GGUF, on a worker started for embeddings (a chat model
        is refused: llama.cpp embeds only with a pooling type, which chat models lack)."""
        meta = await self.model_meta(model)
        return await self.embedders.embed(self, meta, texts)

    # ------------------------------------------------------------------ load / unload

    async def load(self, model: str, settings: LoadSettings | None = None) -> bool:
        return (await self._ensure(model, settings, None))[1]

    async def preload(self, model: str, settings: LoadSettings) -> bool:
        """Load ``model`` if it fits the budget beside the loaded models (nothing is unloaded
        for it); a request arriving meanwhile waits for this load, as for any other."""
        meta = await self.model_meta(model)
        async with self._get_lock():
            await self._reap_dead()
            if meta.name in self._workers:
                return False
            loaded = self.resident_bytes() + self.embedders.resident_bytes()
            if loaded + self._estimator(meta, settings) > await self._budget_bytes():
                return False
            await self._load(meta, settings, None, None)
            return True

    async def unload(self, model: str) -> None:
        async with self._get_lock():
            worker = self._workers.pop(model, None)
        if worker is not None:
            await self._stop(worker)
            self._emit("unload", worker.name, reason="requested")
        await self.embedders.stop(model)

    async def aclose(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await self._reaper
            self._reaper = None
        workers, self._workers = list(self._workers.values()), {}
        await asyncio.gather(*(self._stop(w) for w in workers))
        await self.embedders.stop()

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def _budget_bytes(self) -> int:
        if self._budget is None:
            self._budget = await asyncio.to_thread(_default_budget)
        return self._budget

    def _default_settings(self, meta: ModelMeta) -> LoadSettings:
        trained = meta.context_length or DEFAULT_N_CTX
        return LoadSettings(n_ctx=min(DEFAULT_N_CTX, trained), n_threads=self.threads)

    async def _ensure(
        self, model: str, settings: LoadSettings | None, keep_alive: float | None
    ) -> tuple[Worker, bool]:
        """The worker serving ``model`` with ``settings``, loading or reloading it if needed.

        A load runs to its end even when the request that asked for it is cancelled (its
        client went away): abandoning it half-way would leave an engine process holding the
        model outside the budget. The finished worker is kept for the next request.
        """
        meta = await self.model_meta(model)
        task = asyncio.ensure_future(self._ensure_locked(meta, settings, keep_alive))
        task.add_done_callback(_retrieve)  # a failure after the caller left is not "lost"
        return await asyncio.shield(task)

    async def _ensure_locked(
        self, meta: ModelMeta, settings: LoadSettings | None, keep_alive: float | None
    ) -> tuple[Worker, bool]:
        name = meta.name
        while True:
            async with self._get_lock():
                await self._reap_dead()
                worker = self._workers.get(name)
                wanted = settings or (worker.settings if worker else self._default_settings(meta))
                if worker is not None and (
                    worker.settings == wanted
                    or (worker.in_flight and worker.settings.n_ctx >= wanted.n_ctx)
                ):
                    # Same settings, or busy and already big enough: a reload now would cut
                    # another request's stream short, so the loaded worker serves this one.
                    if keep_alive is not None:
                        worker.keep_alive = keep_alive
                    worker.last_used = time.monotonic()
                    return worker, False
                if worker is None or not worker.in_flight:
                    return await self._load(meta, wanted, keep_alive, worker), True
            await asyncio.sleep(0.05)  # busy and too small: reload once its requests finish

    async def _load(
        self,
        meta: ModelMeta,
        wanted: LoadSettings,
        keep_alive: float | None,
        previous: Worker | None,
    ) -> Worker:
        name = meta.name
        reason = "first load"
        if previous is not None:
            # Every launch-time setting is fixed for a llama.cpp context: a change reloads.
            reason = f"settings changed: {settings_diff(previous.settings, wanted)}"
            self._workers.pop(name, None)
            await self._stop(previous)
        estimate = self._estimator(meta, wanted)
        await self._make_room(name, estimate)
        cache_ram = prompt_cache(
            planned=wanted.cache_ram_mib,
            configured=self.prompt_cache_mib,
            budget=await self._budget_bytes(),
            loaded=sum(w.estimate for w in self._workers.values()),
            estimate=estimate,
        )
        cache = int(cache_ram.value)
        began = time.monotonic()
        worker = await self._start(meta, wanted, estimate + cache * MiB, keep_alive, cache)
        worker.load_ms = (time.monotonic() - began) * 1000
        worker.generation = next(self._generations)
        self._workers[name] = worker
        self.loads[name] += 1
        self._emit(
            "reload" if previous is not None else "load",
            name,
            reason=reason,
            n_ctx=wanted.n_ctx,
            estimate=estimate,
            load_ms=round(worker.load_ms),
            cache_ram_mib=cache,
            cache_ram=cache_ram.reason,
            settings=wanted.as_dict(),
        )
        self._ensure_reaper()
        return worker

    def resident_bytes(self, *, exclude: str | None = None) -> int:
        return sum(w.estimate for n, w in self._workers.items() if n != exclude)

    def reclaimable_bytes(self, model: str) -> int:
        """Memory the engine would free by unloading idle models other than ``model``."""
        return sum(
            w.estimate
            for n, w in self._workers.items()
            if n != model and w.state is WorkerState.READY
        )

    async def set_priority(self, model: str, nice: int) -> str | None:
        from autotune.hardware.os_tune import set_priority

        worker = self._workers.get(model)
        if worker is None or not worker.alive():
            return None
        return await asyncio.to_thread(set_priority, worker.proc.pid, nice)

    async def _make_room(self, name: str, needed: int) -> None:
        """Unload the idle models :func:`~autotune.backends.residency.make_room` names so that
        ``needed`` fits in the budget (InsufficientMemory when nothing can make it fit)."""
        residents = [w.resident() for w in self._workers.values()]
        room = make_room(name, needed, await self._budget_bytes(), residents)
        if room.refusal is not None:
            raise InsufficientMemory(room.refusal, hint=room.hint)
        for victim in room.victims:
            worker = self._workers.pop(victim)
            self._emit("unload", victim, reason=f"making room for {name}", why=room.decision.reason)
            await self._stop(worker)

    async def _start(
        self,
        meta: ModelMeta,
        settings: LoadSettings,
        estimate: int,
        keep_alive: float | None,
        cache_ram_mib: int | None = None,
    ) -> Worker:
        assert meta.path is not None
        spec = {
            "path": meta.path,
            "alias": meta.name,
            "verbosity": self.verbosity,
            "nice": self.nice,
            **settings.as_dict(),
        }
        if cache_ram_mib is not None:
            spec["cache_ram_mib"] = cache_ram_mib
        if self.kv_dir is not None:
            await asyncio.to_thread(self.kv_dir.mkdir, parents=True, exist_ok=True)
            spec["slot_save_path"] = str(self.kv_dir)
        if settings.n_threads is None and self.threads:
            spec["n_threads"] = self.threads
        if spec.get("cache_type_v") not in (None, "f16", "f32", "bf16") and not spec.get(
            "flash_attn", True
        ):
            spec["flash_attn"] = True  # llama.cpp: a quantized V cache requires flash attention
        # The worker's port is reachable by every local process and, through DNS rebinding, by
        # web pages: a key only autotune holds keeps them from driving the engine directly.
        api_key = secrets.token_urlsafe(32)
        with key_file(api_key) as key_path:
            spec["api_key_file"] = key_path
            proc, url = await asyncio.to_thread(self._spawn, spec)
        client = OpenAICompatBackend(url, name=self.name, kind="llamacpp", api_key=api_key)
        # Not "start llama-server": autotune owns this worker and restarts it when needed.
        client.start_hint = "The engine worker stopped; the next request starts it again."
        worker = Worker(
            name=meta.name,
            path=Path(meta.path),
            settings=settings,
            cache_ram_mib=cache_ram_mib,
            proc=proc,
            url=url,
            client=client,
            estimate=estimate,
            keep_alive=self.keep_alive if keep_alive is None else keep_alive,
            api_key=api_key,
        )
        worker.supports_tools = await self._supports_tools(url, api_key)
        return worker

    def _spawn(self, spec: dict[str, Any]) -> tuple[subprocess.Popen[bytes], str]:
        log = None
        if self.log_dir is not None:
            log = self.log_dir / f"engine-{re.sub(r'[^A-Za-z0-9_.-]+', '_', spec['alias'])}.log"
        return start_worker(spec, log)

    async def _supports_tools(self, url: str, api_key: str) -> bool:
        headers = {"Authorization": f"Bearer {api_key}"}
        try:
            async with httpx.AsyncClient(base_url=url, timeout=5, headers=headers) as client:
                props = (await client.get("/props")).json()
        except (httpx.HTTPError, ValueError):
            return True  # unknown: let the engine decide
        caps = props.get("chat_template_caps") or {}
        # llama.cpp silently ignores `tools` when the template cannot render them (seen: a 200
        # with plain text), so autotune refuses them up front rather than drop them unseen.
        return bool(caps.get("supports_tools", True))

    async def _stop(self, worker: Worker) -> None:
        """Stop a worker; its slots are offered to ``before_unload`` first (bounded in time:
        a save that hangs must not keep a model in memory)."""
        if self.before_unload is not None and worker.alive():
            worker.stopped = WorkerState.STOPPING
            self._stopping[worker.name] = worker
            try:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.before_unload(worker.name), _SAVE_TIMEOUT)
            finally:
                self._stopping.pop(worker.name, None)
        worker.stopped = WorkerState.STOPPED
        await worker.client.aclose()
        await asyncio.to_thread(stop_worker, worker.proc)

    async def _reap_dead(self) -> None:
        for name, worker in list(self._workers.items()):
            if worker.state is WorkerState.DEAD and self._workers.pop(name, None) is not None:
                await worker.client.aclose()
                self._emit("unexpected_unload", name, exit_code=worker.proc.returncode)

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap_loop())

    async def _reap_loop(self) -> None:
        """Unload models whose keep-alive ran out, and notice workers that died."""
        while self._workers:
            await asyncio.sleep(0.5)
            async with self._get_lock():
                await self._reap_dead()
                now = time.monotonic()
                for name, worker in list(self._workers.items()):
                    if worker.expired(now):
                        self._workers.pop(name)
                        self._emit("unload", name, reason="keep-alive expired")
                        await self._stop(worker)

    def _emit(self, kind: str, model: str, **detail: Any) -> None:
        event = EngineEvent(kind, model, detail)
        self.events.append(event)
        del self.events[:-200]
        if self.on_event is not None:
            self.on_event(event)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def from_settings(spec: EngineSpec, settings: Settings) -> EmbeddedBackend:
    """The embedded engine as the settings configure it (the engine table's builder)."""
    return EmbeddedBackend(
        memory_budget=settings.memory_budget,
        keep_alive=settings.keep_alive,
        threads=settings.threads,
        log_dir=settings.home / "logs",
        kv_dir=None if settings.kv_disk_budget == 0 else settings.kv_dir,
        prompt_cache_mib=settings.prompt_cache_mib,
    )
