"""Gives every request the KV its prompt already has somewhere: in its slot, in RAM, or on disk.

The decisions are pure (:mod:`autotune.tuning.kv`); this module keeps the slot table of each
loaded model and runs the effects in order. A prompt is known by its token chain (the
engine's own tokens: its chat template applied, then its tokenizer), so a saved slot serves
any request that starts the same way — the next turn of an app that resends the whole
history, with no header, or a new session with a long preamble already seen:

* :meth:`KvManager.pin` tokenizes a prompt long enough to gain, finds the saved files that
  start like it, picks the request's slot under a lock (two requests never get one slot, a
  restore never targets a busy one), saves the slot's previous prompt if it is about to be
  lost, and restores the best file when neither the slot nor llama.cpp's host-RAM cache
  holds as much; the request then runs pinned to that slot (``id_slot``);
* :meth:`KvManager.release` records what the slot now holds and, from the engine's own
  cached-token count, what happened (``hit``, ``restored``, ``saved``, ``miss``); a turn long
  enough is saved after its reply, in the background (:func:`~autotune.tuning.kv.after_turn`);
* :meth:`KvManager.save_slots` is the engine's ``before_unload`` hook: before an unload,
  a reload or a shutdown, every idle slot holding more than its files is saved.

A failed look-up, save or restore, and a store that cannot write, are events, never errors:
the request is answered, at worst after a full prefill; a file the engine refuses (or whose
checksum changed) is removed. Files are written by :class:`~.kv_files.KvFiles`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from autotune.backends.base import Backend
from autotune.ground.decision import Decision
from autotune.ground.errors import BackendError, error_summary
from autotune.ground.kv import BLOCK, Match, SlotLayout, SlotView, TokenChain, chain_of
from autotune.ground.types import ChatRequest, EngineEvent, EngineStats
from autotune.pipeline.kv_files import KvFiles
from autotune.store.kv import KvStore
from autotune.tuning.kv import (
    MEASURED_HERE,
    KvPlan,
    KvRates,
    RamCache,
    after_turn,
    kv_outcome,
    plan_slot,
    to_save,
)
from autotune.tuning.planner import Plan

__all__ = ["KvManager", "Prompt", "Ticket", "preview_of"]

#: Weight of the newest measurement in a rate's running average.
_EWMA = 0.3


@dataclass(frozen=True)
class Prompt:
    """What the KV manager needs of a request: its engine request, the raw text of a
    completion's prompt (None: a chat, rendered by the model's template), an estimate of its
    tokens, the conversation the client named, and a preview for listings."""

    request: ChatRequest
    estimate: int
    raw: str | None = None
    conversation: str | None = None
    preview: str = ""


@dataclass
class Ticket:
    """One request's slot, and what was done to prepare it."""

    backend: Backend
    model: str
    generation: int
    prompt: Prompt
    plan: KvPlan
    chain: TokenChain | None = None
    #: Tokens of the prompt a file on disk already holds.
    on_disk: int = 0
    #: Time spent finding what holds the prompt (its tokens, the index).
    lookup_ms: float = 0.0
    saved_bytes: int = 0
    restored: int = 0

    @property
    def status(self) -> str:
        """What autotune did before the request (the engine's counts come later)."""
        if self.plan.status == "restore" and not self.restored:
            return "miss"
        return self.plan.status


@dataclass
class _Table:
    """One loaded model's slots, and autotune's model of its host-RAM prompt cache."""

    generation: int
    slots: list[SlotView]
    ram_bytes: int = 0
    #: Prompts that left a slot by a normal request (llama.cpp keeps their state in its RAM
    #: cache then), with their tokens, most recent last.
    ram_held: list[tuple[TokenChain, int]] = field(default_factory=list)
    #: Bytes a token's KV takes, learned from the engine's saves (0: not yet known).
    bytes_per_token: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def ram(self) -> RamCache | None:
        if not self.ram_bytes or not self.bytes_per_token:
            return None  # nothing is counted on before a save has measured a token's size
        return RamCache(self.ram_bytes, self.bytes_per_token, tuple(self.ram_held))

    def record_hand_over(self, plan: KvPlan, occupant: SlotView, chain: TokenChain | None) -> None:
        """What the RAM cache holds after the plan: llama.cpp swaps the prompt's best match
        out of it into the slot, and keeps the slot's previous prompt unless a restore
        overwrites it or the new prompt continues it."""
        if plan.status == "ram" and chain is not None:
            best = max(self.ram_held, key=lambda kept: kept[0].common(chain), default=None)
            if best is not None:
                self.ram_held.remove(best)
        kept = occupant.chain
        if kept is None or plan.restore is not None:
            return
        if chain is None or chain.common(kept) < kept.blocks:  # not continued by this prompt
            self.ram_held.append((kept, occupant.tokens))
            del self.ram_held[:-64]


class KvManager:
    """Slot tables per loaded model, and the KV files behind them."""

    def __init__(
        self,
        store: KvStore,
        disk_budget: int,
        emit: Callable[[EngineEvent], None] | None = None,
    ) -> None:
        self.files = KvFiles(store, disk_budget, self._event)
        self.emit = emit
        self._tables: dict[tuple[str, str], _Table] = {}
        self._rates: dict[tuple[str, str], KvRates] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def store(self) -> KvStore:
        return self.files.store

    @property
    def disk_budget(self) -> int:
        return self.files.disk_budget

    @property
    def bytes_written(self) -> int:
        """Bytes of KV files written since this manager started (for the proof)."""
        return self.files.bytes_written

    def rates(self, engine: str, model: str) -> KvRates:
        """What KV work costs for this model, measured on its requests (this machine's
        figures until then)."""
        return self._rates.get((engine, model), MEASURED_HERE)

    # ------------------------------------------------------------------ a request

    async def pin(self, backend: Backend, model: str, plan: Plan, prompt: Prompt) -> Ticket | None:
        """The act step for engines with slots, run after the plan's load (so the slots are
        the ones the request will meet): find what holds the prompt, reserve a slot, save and
        restore; the plan records it."""
        if not backend.capabilities.slots:
            return None
        ticket = await self.reserve(backend, model, prompt)
        if ticket is None:
            return None
        try:
            await self.prepare(ticket)
        except BaseException:
            self.release(ticket, None, ok=False)
            raise
        plan.decisions.append(Decision("kv_cache", ticket.status, ticket.plan.reason))
        return ticket

    async def reserve(self, backend: Backend, model: str, prompt: Prompt) -> Ticket | None:
        """The slot for a request, and what to save or restore first (None: no slot control)."""
        layout = backend.slot_layout(model)
        if layout is None:
            return None
        min_tokens = self.rates(backend.name, model).min_tokens
        began = time.perf_counter()
        chain, matches = await self._look_up(backend, model, layout, prompt, min_tokens)
        lookup_ms = (time.perf_counter() - began) * 1000
        table = self._table(backend.name, model, layout)
        async with table.lock:
            plan = plan_slot(
                chain,
                table.slots,
                matches,
                n_ctx=layout.n_ctx,
                ram=table.ram(),
                min_tokens=min_tokens,
                conversation=prompt.conversation,
            )
            if plan.slot is not None:
                table.record_hand_over(plan, table.slots[plan.slot], chain)
                table.slots[plan.slot] = replace(table.slots[plan.slot], busy=True)
        on_disk = min(max(map(_covered, matches), default=0), chain.tokens) if chain else 0
        return Ticket(backend, model, layout.generation, prompt, plan, chain, on_disk, lookup_ms)

    async def prepare(self, ticket: Ticket) -> None:
        """Save the slot's previous prompt, then restore the chosen file (never raises)."""
        plan, backend = ticket.plan, ticket.backend
        layout = backend.slot_layout(ticket.model)
        if plan.slot is None or layout is None or layout.generation != ticket.generation:
            return
        if plan.save is not None:
            ticket.saved_bytes = await self._save(backend, ticket.model, layout, plan.save)
        if plan.restore is not None:
            began = time.perf_counter()
            model, file = ticket.model, plan.restore
            ticket.restored = await self.files.restore(backend, model, plan.slot, file)
            if ticket.restored:
                spent = ticket.lookup_ms + (time.perf_counter() - began) * 1000
                self._measured_restore(backend.name, model, spent)

    def release(self, ticket: Ticket, stats: EngineStats | None, ok: bool) -> str:
        """Record what the slot holds after the request; the outcome for telemetry. A turn
        worth it is saved in the background."""
        cached, prompt = (stats.cached_tokens, stats.prompt_tokens) if stats else (None, None)
        outcome = kv_outcome(ticket.plan, cached, prompt, ticket.saved_bytes)
        if ticket.restored and outcome != "restored":
            self._event(ticket.model, "kv_restore_unused", slot=ticket.plan.slot)
        if stats is not None and ok:
            self._measured_prefill(ticket.backend.name, ticket.model, stats)
        table = self._tables.get((ticket.backend.name, ticket.model))
        if ticket.plan.slot is None or table is None or table.generation != ticket.generation:
            return outcome
        view = _held(ticket, stats if ok else None, table.slots[ticket.plan.slot])
        table.slots[ticket.plan.slot] = view
        if after_turn(view, self.rates(ticket.backend.name, ticket.model).min_tokens):
            self._spawn(self._save_after_turn(ticket, view))
        return outcome

    # ------------------------------------------------------------------ engine lifecycle

    async def save_slots(self, backend: Backend, model: str) -> None:
        """Save every idle slot holding more than its files (the ``before_unload`` hook)."""
        layout = backend.slot_layout(model)
        table = self._tables.get((backend.name, model))
        if layout is None or table is None or table.generation != layout.generation:
            return
        min_tokens = self.rates(backend.name, model).min_tokens
        async with table.lock:
            for slot in to_save([s for s in table.slots if not s.busy], min_tokens):
                await self._save(backend, model, layout, slot)

    def describe(self) -> list[dict[str, Any]]:
        """What each loaded model's slots hold (for /api/kv and the dashboard)."""
        return [
            {
                "engine": engine,
                "model": model,
                "slot": s.id,
                "tokens": s.tokens,
                "saved": s.saved,
                "busy": s.busy,
                "conversation": s.conversation,
                "preview": s.preview,
            }
            for (engine, model), table in self._tables.items()
            for s in table.slots
        ]

    async def aclose(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        await self.files.aclose()

    # ------------------------------------------------------------------ steps

    async def _look_up(
        self, backend: Backend, model: str, layout: SlotLayout, prompt: Prompt, min_tokens: int
    ) -> tuple[TokenChain | None, list[Match]]:
        """The prompt's chain and the saved files that start like it, for a prompt long
        enough to gain (else nothing: no engine round trip on short prompts)."""
        if prompt.estimate < min_tokens:
            return None, []
        try:
            tokens = await backend.tokenize_prompt(prompt.request, prompt.raw)
        except BackendError as exc:
            self._event(model, "kv_lookup_failed", reason=_why(exc))
            return None, []
        if len(tokens) < min_tokens:
            return None, []
        chain = chain_of(tokens)
        return chain, await self.files.matching(layout.identity.key, chain)

    async def _save(self, backend: Backend, model: str, layout: SlotLayout, slot: SlotView) -> int:
        """Save one slot; the bytes written (0 on failure)."""
        saved = await self.files.save(backend, model, layout, slot)
        if saved is None:
            return 0
        tokens, size, bytes_per_token = saved
        table = self._tables.get((backend.name, model))
        if table is not None and table.generation == layout.generation:
            if bytes_per_token:
                table.bytes_per_token = bytes_per_token
            current = table.slots[slot.id]
            if current.chain == slot.chain:
                table.slots[slot.id] = replace(current, saved=max(current.saved, tokens))
        return size

    async def _save_after_turn(self, ticket: Ticket, view: SlotView) -> None:
        """Save a slot its turn left long enough, unless another request took it meanwhile."""
        backend, model = ticket.backend, ticket.model
        layout = backend.slot_layout(model)
        table = self._tables.get((backend.name, model))
        if layout is None or table is None or table.generation != ticket.generation:
            return
        async with table.lock:  # a request for this model waits for the save (~0.2 s here)
            if layout.generation == table.generation and table.slots[view.id] == view:
                await self._save(backend, model, layout, view)

    # ------------------------------------------------------------------ measurements

    def _measured_prefill(self, engine: str, model: str, stats: EngineStats) -> None:
        prefilled = (stats.prompt_tokens or 0) - (stats.cached_tokens or 0)
        if prefilled < BLOCK or not stats.prompt_ms:
            return
        rates = self.rates(engine, model)
        per_token = stats.prompt_ms / prefilled
        mixed = (1 - _EWMA) * rates.prefill_ms_per_token + _EWMA * per_token
        self._rates[(engine, model)] = replace(rates, prefill_ms_per_token=mixed)

    def _measured_restore(self, engine: str, model: str, ms: float) -> None:
        rates = self.rates(engine, model)
        mixed = (1 - _EWMA) * rates.restore_ms + _EWMA * ms
        self._rates[(engine, model)] = replace(rates, restore_ms=mixed)

    # ------------------------------------------------------------------ the slot table

    def _table(self, engine: str, model: str, layout: SlotLayout) -> _Table:
        table = self._tables.get((engine, model))
        if table is None or table.generation != layout.generation:
            # A new worker: its slots start empty, whatever the last one held.
            slots = [SlotView(i) for i in range(layout.n_parallel)]
            table = _Table(layout.generation, slots, layout.ram_cache_bytes)
            self._tables[(engine, model)] = table
        return table

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _event(self, model: str, kind: str, **detail: Any) -> None:
        if self.emit is not None:
            with contextlib.suppress(Exception):
                self.emit(EngineEvent(kind, model, detail))


def _covered(match: Match) -> int:
    """Tokens of a prompt a matching file holds: its whole prompt when the match covers all
    of that prompt's blocks (the engine compares the rest token by token), else the blocks."""
    prompt = match.file.prompt_tokens
    return prompt if match.blocks >= prompt // BLOCK else match.blocks * BLOCK


def _held(ticket: Ticket, stats: EngineStats | None, before: SlotView) -> SlotView:
    """The slot after a request: its prompt (and reply), or nothing known after a failure.
    What is on disk of it: the files that matched, or what the slot held before if this
    prompt continues it (a save of it may have finished while the request ran)."""
    slot = ticket.plan.slot
    assert slot is not None
    now = time.monotonic()
    chain = ticket.chain
    if stats is None or chain is None:
        return SlotView(slot, last_used=now)
    saved = ticket.on_disk
    if before.chain is not None and chain.common(before.chain) >= before.chain.blocks:
        saved = max(saved, min(before.saved, chain.tokens))
    prompt = stats.prompt_tokens or 0
    return SlotView(
        slot,
        chain=ticket.chain,
        tokens=prompt + (stats.completion_tokens or 0),
        prompt_tokens=prompt,
        saved=saved,
        last_used=now,
        conversation=ticket.prompt.conversation,
        preview=ticket.prompt.preview,
    )


def preview_of(messages: Sequence[dict[str, Any]], raw: str | None = None) -> str:
    """What a prompt starts with, in a line of at most 60 characters (for ``autotune kv ls``)."""
    if raw is not None:
        text = raw
    else:
        first = next((m for m in messages if isinstance(m.get("content"), str)), None)
        text = f"{first.get('role')}: {first['content']}" if first else ""
    line = " ".join(text.split())
    return line if len(line) <= 60 else line[:59] + "…"


def _why(exc: BaseException) -> str:
    return error_summary(exc) if isinstance(exc, BackendError) else type(exc).__name__
