"""Gathers, in one step, the immutable snapshot of engine and machine state a request's plan needs.

Everything :func:`autotune.pipeline.decide.decide` looks at is read here and nowhere else:
the model's metadata, the settings it is (or was last) loaded with and whether it is
resident, the context the engine holds, memory free for a load, token counts (exact from the
engine's tokenizer when the count can decide something), measured settings and the
conversation's last compaction. Deciding then needs no I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from autotune.backends.base import Backend
from autotune.context.tokens import TokenEstimator, TokenTable
from autotune.context.window import CompactionState
from autotune.ground.config import Settings
from autotune.ground.errors import BackendError
from autotune.ground.profiles import Profile
from autotune.ground.tuned import TunedSettings
from autotune.ground.types import Capabilities, LoadSettings, ModelMeta
from autotune.hardware.profile import safety_reserve, vram_reserve
from autotune.hardware.sampler import Sampler
from autotune.pipeline.state import EngineState
from autotune.tuning.planner import MemoryState

__all__ = ["EXACT_FROM", "Gatherer", "Snapshot", "TunedLookup"]

#: Returns measured load-time settings for (backend, model, profile), or None.
TunedLookup = Callable[[str, str, str], TunedSettings | None]
#: Counts are made exact once a prompt may fill this share of the context that would hold it:
#: below it no decision (grow, compact, refuse) depends on the count being right.
EXACT_FROM = 0.5
#: Texts tokenized at once (each is one engine round trip).
_TOKENIZE_CONCURRENCY = 8


@dataclass(frozen=True)
class Snapshot:
    """Everything a request's decisions read, as it was when the request was admitted."""

    engine: str
    model: str
    capabilities: Capabilities
    meta: ModelMeta | None
    #: The sticky settings: what the model is loaded with, or was last loaded with.
    current: LoadSettings | None
    #: The model is resident with ``current``.
    loaded: bool
    #: What the engine reports holding, for engines that size their own context.
    engine_context: int | None
    memory: MemoryState | None
    counts: TokenTable
    #: The engine could count exactly (it has a tokenizer), if the model were loaded.
    can_count: bool
    tuned: TunedSettings | None
    compaction: CompactionState | None
    threads: int | None
    keep_alive: float | None
    #: Requests the admission lets run at once.
    concurrency: int = 1


class Gatherer:
    """Reads engine and machine state for a request; the only I/O before deciding."""

    def __init__(
        self,
        settings: Settings,
        state: EngineState,
        tokens: TokenEstimator,
        sampler: Sampler,
        *,
        threads: int | None = None,
        vram_total: int = 0,
        tuned: TunedLookup | None = None,
        concurrency: Callable[[], int] = lambda: 1,
    ) -> None:
        self.settings = settings
        self.concurrency = concurrency
        self.state = state
        self.tokens = tokens
        self.sampler = sampler
        self.threads = threads
        #: Total memory of discrete GPUs (unified memory is already in RAM).
        self.vram_total = vram_total
        self.tuned = tuned

    async def gather(
        self,
        backend: Backend,
        model: str,
        profile: Profile,
        messages: Sequence[dict[str, Any]],
        compaction: CompactionState | None,
    ) -> Snapshot:
        meta = await self.state.meta(backend, model)
        current = self.state.current(backend, model)
        loaded = await self.state.loaded(backend, model, current)
        engine_context = None
        if not (backend.capabilities.load_control or backend.capabilities.per_request_context):
            seen = await self.state.observe(backend, model)
            engine_context = seen.context_length or (meta.context_length if meta else None)
        await self._count_exactly(backend, model, messages, current, profile, meta)
        return Snapshot(
            engine=backend.name,
            model=model,
            capabilities=backend.capabilities,
            meta=meta,
            current=current,
            loaded=loaded,
            engine_context=engine_context,
            memory=self._memory(backend, model),
            counts=self.tokens.table(model, messages),
            can_count=backend.capabilities.tokenize,
            tuned=self.tuned(backend.name, model, profile.name) if self.tuned else None,
            compaction=compaction,
            threads=self.threads,
            keep_alive=self.settings.keep_alive,
            concurrency=self.concurrency(),
        )

    async def _count_exactly(
        self,
        backend: Backend,
        model: str,
        messages: Sequence[dict[str, Any]],
        current: LoadSettings | None,
        profile: Profile,
        meta: ModelMeta | None,
    ) -> None:
        """Learn exact counts from the engine's tokenizer when a decision may hang on them."""
        if not backend.capabilities.tokenize:
            return
        context = current.n_ctx if current else profile.context_cap
        if meta is not None and meta.context_length:
            context = min(context, meta.context_length)
        if self.tokens.count(model, messages) < EXACT_FROM * context:
            return
        texts = self.tokens.unknown(model, messages)
        limit = asyncio.Semaphore(_TOKENIZE_CONCURRENCY)

        async def one(text: str) -> None:
            async with limit:
                self.tokens.learn(model, text, len(await backend.tokenize(model, text)))

        try:
            await asyncio.gather(*(one(t) for t in texts))
        except BackendError:
            return  # not loaded (the embedded engine never loads just to count): estimates

    def _memory(self, backend: Backend, model: str) -> MemoryState | None:
        """Memory a new load of ``model`` may use: free RAM (less the reserve) and free VRAM
        (less its reserve), plus what the engine would free by unloading idle models — it
        does that before a load, so the guard must not refuse on their account — and, under
        a memory budget, the budget less what the other loaded models hold. (The planner
        adds back the model's own footprint when a reload replaces it.)"""
        if backend.capabilities.remote:
            return None
        sample = self.sampler.latest
        available = sample.ram_available - safety_reserve(sample.ram_total)
        if self.vram_total:
            used = sample.gpu_memory_used if sample.gpu_memory_used is not None else 0
            available += max(0, self.vram_total - used - vram_reserve(self.vram_total))
        reclaim = backend.reclaimable_bytes(model)
        budget, cap = self.settings.memory_budget, None
        if budget is not None:
            cap = max(0, budget - backend.resident_bytes(exclude=model) + reclaim)
        return MemoryState(
            available=max(0, available + reclaim), used_fraction=sample.ram_used_fraction, cap=cap
        )
