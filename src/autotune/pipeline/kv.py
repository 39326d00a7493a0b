"""Keeps each conversation's KV cache: slot affinity, saves before the engine drops it, restores.

The decisions are pure (:mod:`autotune.tuning.kv`); this module keeps the slot table of
each loaded model and runs the effects in order:

* :meth:`KvManager.reserve` picks a request's slot under a lock (so two requests never get
  the same slot, and a restore never targets a busy one) and marks it busy;
* :meth:`KvManager.prepare` saves the slot's previous conversation if the engine holds more
  of it than its file, then restores the request's conversation from disk (a checked file
  only), then the request runs pinned to that slot (``id_slot``);
* :meth:`KvManager.release` records what the slot now holds and, from the engine's own
  cached-token count, what happened (``hit``, ``restored``, ``saved``, ``miss``);
* :meth:`KvManager.save_slots` is the engine's ``before_unload`` hook: before an unload,
  a reload or a shutdown, every idle slot whose conversation grew is saved.

A failed save or restore is an event, never an error: the request is answered, at worst
after a full prefill, and a file the engine refuses (or whose checksum changed) is removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from autotune.backends.base import Backend
from autotune.ground.decision import Decision
from autotune.ground.errors import BackendError, error_summary
from autotune.ground.kv import KvFile, SlotLayout, SlotView
from autotune.ground.types import EngineEvent, EngineStats
from autotune.store.kv import KvStore
from autotune.tuning.kv import (
    KvPlan,
    RamCache,
    kv_outcome,
    over_budget,
    plan_slot,
    to_save,
)
from autotune.tuning.planner import Plan

__all__ = ["KvManager", "Ticket"]


@dataclass
class Ticket:
    """One request's slot, and what was done to prepare it."""

    engine: str
    model: str
    generation: int
    conversation: str | None
    plan: KvPlan
    saved_bytes: int = 0
    restored: int = 0

    @property
    def status(self) -> str:
        """What autotune did before the request (the engine's counts come later)."""
        if self.plan.slot is None:
            return "busy"
        if self.plan.hit:
            return "hit"
        if self.plan.from_ram:
            return "ram"
        return "restore" if self.restored else "miss"


@dataclass
class _Table:
    """One loaded model's slots, and autotune's model of its host-RAM prompt cache."""

    generation: int
    slots: list[SlotView]
    ram_bytes: int = 0
    #: Conversations that left a slot by a normal request (llama.cpp keeps their state in
    #: its RAM cache then), with their tokens, most recent last.
    ram_held: OrderedDict[str, int] = field(default_factory=OrderedDict)
    #: Tokens of each conversation's file on disk, as saved or restored in this generation.
    saved: dict[str, int] = field(default_factory=dict)
    #: Bytes a token's KV takes, learned from the engine's saves (0: not yet known).
    bytes_per_token: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def ram(self) -> RamCache | None:
        if not self.ram_bytes or not self.bytes_per_token:
            return None  # nothing is counted on before a save has measured a token's size
        return RamCache(self.ram_bytes, self.bytes_per_token, tuple(self.ram_held.items()))

    def record_hand_over(self, plan: KvPlan, occupant: SlotView, conversation: str | None) -> None:
        """What the RAM cache holds after the plan: a normal request lets llama.cpp keep the
        slot's previous conversation; a restore overwrites it."""
        if conversation:
            self.ram_held.pop(conversation, None)  # it is in a slot now
        if occupant.conversation and plan.restore is None:
            self.ram_held[occupant.conversation] = occupant.tokens
            self.ram_held.move_to_end(occupant.conversation)


class KvManager:
    """Slot tables per loaded model, and the KV files behind them."""

    def __init__(
        self,
        store: KvStore,
        disk_budget: int,
        emit: Callable[[EngineEvent], None] | None = None,
    ) -> None:
        self.store = store
        self.disk_budget = disk_budget
        self.emit = emit
        self._tables: dict[tuple[str, str], _Table] = {}
        #: Checksums being computed, by file name: a restore waits for its file's.
        self._sealing: dict[str, asyncio.Task[None]] = {}
        #: Bytes of KV files written since this manager started (for the proof).
        self.bytes_written = 0

    # ------------------------------------------------------------------ a request

    async def reserve(
        self, backend: Backend, model: str, conversation: str | None
    ) -> Ticket | None:
        """The slot for a request (None: this engine has no slot control)."""
        layout = backend.slot_layout(model)
        if layout is None:
            return None
        table = self._table(backend.name, model, layout)
        async with table.lock:
            file = None
            if conversation:
                file = await asyncio.to_thread(self.store.get, conversation, layout.identity.key)
            plan = plan_slot(conversation, table.slots, file, n_ctx=layout.n_ctx, ram=table.ram())
            if plan.slot is not None:
                table.record_hand_over(plan, table.slots[plan.slot], conversation)
                table.slots[plan.slot] = replace(table.slots[plan.slot], busy=True)
        return Ticket(backend.name, model, layout.generation, conversation, plan)

    async def prepare(self, backend: Backend, ticket: Ticket) -> None:
        """Save the slot's previous conversation, then restore this one (never raises)."""
        plan = ticket.plan
        layout = backend.slot_layout(ticket.model)
        if plan.slot is None or layout is None or layout.generation != ticket.generation:
            return
        if plan.save is not None:
            ticket.saved_bytes = await self._save(backend, ticket.model, layout, plan.save)
        if plan.restore is not None:
            ticket.restored = await self._restore(backend, ticket.model, plan.slot, plan.restore)
            if ticket.restored and ticket.conversation:
                table = self._tables.get((ticket.engine, ticket.model))
                if table is not None and table.generation == ticket.generation:
                    table.saved[ticket.conversation] = ticket.restored

    def release(self, ticket: Ticket, stats: EngineStats | None, ok: bool) -> str:
        """Record what the slot holds after the request; the outcome for telemetry."""
        cached, prompt = (stats.cached_tokens, stats.prompt_tokens) if stats else (None, None)
        outcome = kv_outcome(ticket.plan, cached, prompt, ticket.saved_bytes)
        if ticket.restored and outcome != "restored":
            self._event(ticket.model, "kv_restore_unused", slot=ticket.plan.slot)
        table = self._tables.get((ticket.engine, ticket.model))
        if ticket.plan.slot is None or table is None or table.generation != ticket.generation:
            return outcome
        slot = table.slots[ticket.plan.slot]
        held = stats is not None and ok and ticket.conversation is not None
        tokens = (stats.prompt_tokens or 0) + (stats.completion_tokens or 0) if stats else 0
        saved = table.saved.get(ticket.conversation, 0) if ticket.conversation else 0
        table.slots[ticket.plan.slot] = SlotView(
            slot.id,
            ticket.conversation if held else None,
            tokens if held else 0,
            saved if held else 0,
            busy=False,
            last_used=time.monotonic(),
        )
        return outcome

    async def pin(
        self, backend: Backend, model: str, plan: Plan, conversation: str | None
    ) -> Ticket | None:
        """The act step for engines with slots, run after the plan's load (so the slots are
        the ones the request will meet): reserve a slot, save and restore; the plan records it."""
        if not backend.capabilities.slots:
            return None
        ticket = await self.reserve(backend, model, conversation)
        if ticket is None:
            return None
        try:
            await self.prepare(backend, ticket)
        except BaseException:
            self.release(ticket, None, ok=False)
            raise
        plan.decisions.append(Decision("kv_cache", ticket.status, ticket.plan.reason))
        return ticket

    # ------------------------------------------------------------------ engine lifecycle

    async def save_slots(self, backend: Backend, model: str) -> None:
        """Save every idle slot whose conversation grew (the ``before_unload`` hook)."""
        layout = backend.slot_layout(model)
        table = self._tables.get((backend.name, model))
        if layout is None or table is None or table.generation != layout.generation:
            return
        async with table.lock:
            for slot in to_save([s for s in table.slots if not s.busy]):
                await self._save(backend, model, layout, slot)

    def describe(self) -> list[dict[str, Any]]:
        """What each loaded model's slots hold (for /api/kv and the dashboard)."""
        return [
            {
                "engine": engine,
                "model": model,
                "slot": s.id,
                "conversation": s.conversation,
                "tokens": s.tokens,
                "saved": s.saved,
                "busy": s.busy,
            }
            for (engine, model), table in self._tables.items()
            for s in table.slots
        ]

    async def aclose(self) -> None:
        if self._sealing:
            await asyncio.gather(*self._sealing.values(), return_exceptions=True)

    # ------------------------------------------------------------------ effects

    async def _save(self, backend: Backend, model: str, layout: SlotLayout, slot: SlotView) -> int:
        """Save one slot's conversation to its file; the bytes written (0 on failure)."""
        assert slot.conversation is not None
        identity = layout.identity.key
        filename = self.store.filename(slot.conversation, identity)
        try:
            reply = await backend.slot_action(model, slot.id, "save", filename)
            tokens = int(reply.get("n_saved") or slot.tokens)
            written = int(reply.get("n_written") or 0)
            file = await asyncio.to_thread(
                self.store.saved, slot.conversation, identity, model, filename, tokens
            )
        except (BackendError, OSError) as exc:
            self._event(model, "kv_save_failed", slot=slot.id, reason=_why(exc))
            return 0
        self._mark_saved(model, layout, slot, tokens, written)
        self.bytes_written += file.size
        self._seal(file)
        await self._keep_within_budget(keep=file.filename)
        return file.size

    async def _restore(self, backend: Backend, model: str, slot: int, file: KvFile) -> int:
        """Restore a checked file into ``slot``; the tokens restored (0: not restored)."""
        sealing = self._sealing.get(file.filename)
        if sealing is not None:
            await asyncio.shield(sealing)
        problem = await asyncio.to_thread(self.store.verify, file)
        if problem is None:
            try:
                reply = await backend.slot_action(model, slot, "restore", file.filename)
            except BackendError as exc:
                problem = f"the engine refused it: {_why(exc)}"
            else:
                await asyncio.to_thread(self.store.used, file)
                return int(reply.get("n_restored") or file.tokens)
        self._event(model, "kv_file_removed", file=file.filename, reason=problem)
        await asyncio.to_thread(self.store.remove, file)
        return 0

    def _seal(self, file: KvFile) -> None:
        task = asyncio.ensure_future(asyncio.to_thread(self.store.seal, file))
        self._sealing[file.filename] = task
        task.add_done_callback(lambda _: self._sealing.pop(file.filename, None))

    async def _keep_within_budget(self, *, keep: str) -> None:
        files = await asyncio.to_thread(self.store.files)
        for doomed in over_budget(files, self.disk_budget, keep=keep):
            await asyncio.to_thread(self.store.remove, doomed)
            self._event("", "kv_file_evicted", file=doomed.filename, bytes=doomed.size)

    # ------------------------------------------------------------------ the slot table

    def _table(self, engine: str, model: str, layout: SlotLayout) -> _Table:
        table = self._tables.get((engine, model))
        if table is None or table.generation != layout.generation:
            # A new worker: its slots start empty, whatever the last one held.
            slots = [SlotView(i) for i in range(layout.n_parallel)]
            table = _Table(layout.generation, slots, layout.ram_cache_bytes)
            self._tables[(engine, model)] = table
        return table

    def _mark_saved(
        self, model: str, layout: SlotLayout, slot: SlotView, tokens: int, written: int
    ) -> None:
        for (_, name), table in self._tables.items():
            if name == model and table.generation == layout.generation:
                assert slot.conversation is not None
                table.saved[slot.conversation] = tokens
                if tokens and written:
                    table.bytes_per_token = written / tokens
                current = table.slots[slot.id]
                if current.conversation == slot.conversation:
                    table.slots[slot.id] = replace(current, saved=tokens)

    def _event(self, model: str, kind: str, **detail: Any) -> None:
        if self.emit is not None:
            with contextlib.suppress(Exception):
                self.emit(EngineEvent(kind, model, detail))


def _why(exc: BaseException) -> str:
    return error_summary(exc) if isinstance(exc, BackendError) else type(exc).__name__
