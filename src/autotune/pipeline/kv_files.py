"""Writes, checks, restores and drops the KV files behind the slots, within the disk budget.

:class:`KvFiles` is the KV manager's hand on the disk and the engine's save/restore routes:
a save indexes the file by the tokens its header says it holds, checksums it off the
request's path, drops the files it makes redundant and keeps the folder within its budget;
a restore checks the file first. Nothing here raises: a failure is an event, a file the engine
refuses or whose checksum changed is removed, and a store that cannot write (a full disk)
costs a restore or a save, never the request.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from autotune.backends.base import Backend
from autotune.ground.errors import BackendError, error_summary
from autotune.ground.kv import KvFile, Match, SlotLayout, SlotView, TokenChain, chain_of
from autotune.store.kv import KvStore
from autotune.tuning.kv import over_budget, redundant

__all__ = ["KvFiles"]

T = TypeVar("T")
Emit = Callable[..., None]


class KvFiles:
    """The KV folder, its index and the engine's save and restore of slots."""

    def __init__(self, store: KvStore, disk_budget: int, event: Emit) -> None:
        self.store = store
        self.disk_budget = disk_budget
        self._event = event
        #: Checksums being computed, by file name: a restore waits for its file's.
        self._sealing: dict[str, asyncio.Task[None]] = {}
        #: Bytes of files written since this started (for the proof).
        self.bytes_written = 0

    async def matching(self, identity: str, chain: TokenChain) -> list[Match]:
        """Saved files of ``identity`` that start like ``chain``."""
        return await self._index(self.store.match, identity, chain) or []

    async def save(
        self, backend: Backend, model: str, layout: SlotLayout, slot: SlotView
    ) -> tuple[int, int, float] | None:
        """Save one slot to a new file: (tokens, bytes, bytes per token), None on failure."""
        identity = layout.identity.key
        filename = self.store.new_filename(identity)
        try:
            reply = await backend.slot_action(model, slot.id, "save", filename)
        except (BackendError, OSError) as exc:
            self._event(model, "kv_save_failed", slot=slot.id, reason=_why(exc))
            return None
        tokens = await asyncio.to_thread(self.store.tokens_at, filename)
        # The header says what the file holds; if its format is unknown, the prompt's chain.
        chain = chain_of(tokens) if tokens is not None else slot.chain
        held = len(tokens) if tokens is not None else int(reply.get("n_saved") or slot.tokens)
        size = await asyncio.to_thread(self.store.size_of, filename)
        if chain is None or size is None:
            await asyncio.to_thread(self.store.discard, filename)
            return None
        file = KvFile(
            filename,
            identity,
            held,
            min(held, slot.prompt_tokens or held),
            size,
            conversation=slot.conversation,
        )
        if await self._index(self.store.record, file, chain, model, slot.preview) is None:
            await asyncio.to_thread(self.store.discard, filename)
            return None
        self.bytes_written += size
        self._event(model, "kv_saved", slot=slot.id, tokens=held, bytes=size)
        self._seal(file)
        await self._drop_redundant(model, file, chain, tokens)
        await self._keep_within_budget(keep=filename)
        written = int(reply.get("n_written") or 0)
        return held, size, (written / held if held and written else 0.0)

    async def restore(self, backend: Backend, model: str, slot: int, file: KvFile) -> int:
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
                await self._index(self.store.used, file)
                return int(reply.get("n_restored") or file.tokens)
        self._event(model, "kv_file_removed", file=file.filename, reason=problem)
        await self._index(self.store.remove, file)
        return 0

    async def aclose(self) -> None:
        if self._sealing:
            await asyncio.gather(*self._sealing.values(), return_exceptions=True)

    # ------------------------------------------------------------------ helpers

    async def _drop_redundant(
        self, model: str, new: KvFile, chain: TokenChain, tokens: list[int] | None
    ) -> None:
        """Remove the files whose whole prompt ``new`` holds too (compared token by token)."""
        if tokens is None:
            return
        candidates = redundant(new, await self.matching(new.identity, chain))
        for old in candidates:
            held = await asyncio.to_thread(self.store.tokens_at, old.filename)
            if held is not None and held[: old.prompt_tokens] == tokens[: old.prompt_tokens]:
                await self._index(self.store.remove, old)
                self._event(model, "kv_file_replaced", file=old.filename, by=new.filename)

    def _seal(self, file: KvFile) -> None:
        task = asyncio.ensure_future(self._index(self.store.seal, file))
        self._sealing[file.filename] = task
        task.add_done_callback(lambda _: self._sealing.pop(file.filename, None))

    async def _keep_within_budget(self, *, keep: str) -> None:
        files = await self._index(self.store.files) or []
        for doomed in over_budget(files, self.disk_budget, keep=keep):
            await self._index(self.store.remove, doomed)
            self._event("", "kv_file_evicted", file=doomed.filename, bytes=doomed.size)

    async def _index(self, fn: Callable[..., T], *args: Any) -> T | None:
        """Run a store call off the event loop; a store that fails (a full disk, a read-only
        folder) is an event and None, never the request's error."""
        try:
            return await asyncio.to_thread(fn, *args)
        except (sqlite3.Error, OSError) as exc:
            self._event("", "kv_index_failed", reason=f"{type(exc).__name__}: {exc}")
            return None


def _why(exc: BaseException) -> str:
    return error_summary(exc) if isinstance(exc, BackendError) else type(exc).__name__
