"""Which conversation lives in which engine slot; which KV files to save, restore, drop (pure).

llama.cpp keeps a conversation's KV cache in a *slot*; autotune pins each conversation to
a slot (``id_slot``) and keeps slot states as files on disk (``/slots/{id}?action=save``)
so a conversation the engine forgot — after an unload, a reload, a restart, or when its
host-RAM prompt cache dropped it — comes back with a restore of milliseconds instead of a
prefill of seconds or minutes. These functions decide; :mod:`autotune.pipeline.kv` acts.

Engine facts they rely on (measured here with xllamacpp 2026.10, both test models):

* a saved slot restores into any slot of a worker of the same model file, KV cache types
  and **number of slots** (``n_parallel`` 1 → 2 fails: "invalid slot save file"), whatever
  its context size, as long as the tokens fit: so that is a file's identity;
* after a restore the engine's own prefix matching decides what it reuses, so a file that
  is a turn or two behind costs only the prefill of what came after it;
* a truncated, damaged or foreign file is refused by the engine (HTTP 400), but not every
  damaged file is: autotune checks a file's checksum before restoring it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autotune.ground.kv import KvFile, SlotView

__all__ = [
    "RAM_SAFETY",
    "KvPlan",
    "RamCache",
    "kv_outcome",
    "over_budget",
    "plan_slot",
    "stale_allowance",
    "to_save",
]


#: Share of llama.cpp's host-RAM prompt cache autotune counts on (the rest is slack for
#: what its model of that cache gets wrong).
RAM_SAFETY = 0.7


@dataclass(frozen=True)
class RamCache:
    """What llama.cpp's host-RAM prompt cache probably holds: the conversations that left a
    slot by a normal request (llama.cpp keeps the slot's state then), most recent last.

    While the engine lives, that cache already serves conversations taking turns (measured:
    four of ~1,000 tokens on one slot prefilled only their new turn), so a conversation it
    holds needs no restore, and one that will fit in it needs no save on every turn.
    """

    capacity: int
    bytes_per_token: float
    held: tuple[tuple[str, int], ...] = ()

    def fits(self, tokens: int) -> bool:
        return 0 < tokens * self.bytes_per_token <= self.capacity * RAM_SAFETY

    def holds(self, conversation: str) -> bool:
        total = 0.0
        for name, tokens in reversed(self.held):
            total += tokens * self.bytes_per_token
            if total > self.capacity * RAM_SAFETY:
                return False
            if name == conversation:
                return True
        return False


def stale_allowance(tokens: int) -> int:
    """Tokens a conversation's file may lag behind the engine when the RAM cache holds the
    rest: a restore from it then re-reads at most this (a twentieth, at least 128)."""
    return max(128, tokens // 20)


@dataclass(frozen=True)
class KvPlan:
    """What to do with slots before one request, and why."""

    #: The slot the request runs on (None: let the engine choose; all slots are busy).
    slot: int | None
    #: The request's conversation already holds this slot: the engine reuses its KV.
    hit: bool = False
    #: Save this slot's conversation first (its slot is about to change hands).
    save: SlotView | None = None
    #: Restore this file into the slot before the request.
    restore: KvFile | None = None
    #: The engine's host-RAM prompt cache should still hold the conversation: no restore.
    from_ram: bool = False
    reason: str = ""


def plan_slot(
    conversation: str | None,
    slots: Sequence[SlotView],
    file: KvFile | None,
    *,
    n_ctx: int,
    ram: RamCache | None = None,
) -> KvPlan:
    """The slot for a request of ``conversation``, and what to save or restore first.

    ``file`` is the conversation's saved KV for this identity (never one of another
    identity); ``n_ctx`` the tokens a slot holds; ``ram`` what the engine's host-RAM
    prompt cache probably holds (None: nothing is counted on).
    """
    held = next((s for s in slots if conversation and s.conversation == conversation), None)
    if held is not None and not held.busy:
        return KvPlan(held.id, hit=True, reason="hit: the conversation holds its slot")
    idle = [s for s in slots if not s.busy]
    if not idle:
        return KvPlan(None, reason="busy: every slot is serving another request")
    # An empty slot first, else the one used longest ago; ties by slot id, never by chance.
    slot = min(idle, key=lambda s: (s.conversation is not None, s.last_used, s.id))
    from_ram = bool(conversation and ram is not None and ram.holds(conversation))
    restore = file if conversation and file and file.tokens <= n_ctx and not from_ram else None
    save = _hand_over(slot, ram, overwritten=restore is not None)
    why = _why(slot.id, from_ram, restore, file if conversation else None, n_ctx)
    return KvPlan(slot.id, save=save, restore=restore, from_ram=from_ram, reason=why)


def _why(slot: int, from_ram: bool, restore: KvFile | None, file: KvFile | None, n_ctx: int) -> str:
    if from_ram:
        return f"ram: the engine's prompt cache should still hold it; slot {slot}"
    if restore is not None:
        return f"restore: {restore.tokens} tokens from disk into slot {slot}"
    if file is not None:
        return f"miss: the saved {file.tokens} tokens do not fit a {n_ctx}-token slot"
    return f"miss: nothing saved for this conversation; slot {slot}"


def _hand_over(slot: SlotView, ram: RamCache | None, *, overwritten: bool) -> SlotView | None:
    """The slot to save before its conversation leaves it, or None.

    A restore overwrites the slot (llama.cpp keeps nothing of it then), so its conversation
    is saved if its file lags at all; a normal request lets llama.cpp keep it in RAM, so a
    save waits until the file lags by more than :func:`stale_allowance`."""
    if not slot.conversation or slot.tokens <= slot.saved:
        return None
    lag = slot.tokens - slot.saved
    fits = not overwritten and ram is not None and ram.fits(slot.tokens)
    return None if fits and lag <= stale_allowance(slot.tokens) else slot


def to_save(slots: Sequence[SlotView]) -> list[SlotView]:
    """Slots whose conversation has more in the engine than on disk (before an unload,
    a reload or a shutdown). A busy slot cannot be saved: the caller waits for it."""
    return [s for s in slots if s.conversation and s.tokens > s.saved]


def over_budget(files: Sequence[KvFile], budget: int, *, keep: str | None = None) -> list[KvFile]:
    """Files to delete so the rest fit ``budget`` bytes: least recently used first, never
    ``keep`` (the file just written). Ties by name, never by chance."""
    total = sum(f.size for f in files)
    doomed = []
    for f in sorted(files, key=lambda f: (f.last_used, f.filename)):
        if total <= budget:
            break
        if f.filename == keep:
            continue
        doomed.append(f)
        total -= f.size
    return doomed


def kv_outcome(
    plan: KvPlan | None, cached_tokens: int | None, prompt_tokens: int | None, saved_bytes: int
) -> str:
    """What telemetry records, by the engine's own count of reused tokens: ``restored`` or
    ``hit`` only when the engine says it reused a real part of the prompt (a tenth of it,
    and more than the start-of-text token every prompt shares), ``saved`` when a slot was
    saved for another conversation and this one was computed afresh, else ``miss``."""
    cached, prompt = cached_tokens or 0, prompt_tokens or 0
    reused = cached > 1 and cached >= prompt / 10
    if plan is not None and plan.restore is not None and reused:
        return "restored"
    if reused:
        return "hit"
    return "saved" if saved_bytes else "miss"
