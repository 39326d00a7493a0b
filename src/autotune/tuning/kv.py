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
    "KvPlan",
    "kv_outcome",
    "over_budget",
    "plan_slot",
    "to_save",
]


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
    reason: str = ""


def plan_slot(
    conversation: str | None,
    slots: Sequence[SlotView],
    file: KvFile | None,
    *,
    n_ctx: int,
) -> KvPlan:
    """The slot for a request of ``conversation``, and what to save or restore first.

    ``file`` is the conversation's saved KV for this identity (never one of another
    identity); ``n_ctx`` the tokens a slot holds.
    """
    held = next((s for s in slots if conversation and s.conversation == conversation), None)
    if held is not None and not held.busy:
        return KvPlan(held.id, hit=True, reason="hit: the conversation holds its slot")
    idle = [s for s in slots if not s.busy]
    if not idle:
        return KvPlan(None, reason="busy: every slot is serving another request")
    # An empty slot first, else the one used longest ago; ties by slot id, never by chance.
    slot = min(idle, key=lambda s: (s.conversation is not None, s.last_used, s.id))
    save = slot if slot.conversation and slot.tokens > slot.saved else None
    restore = file if conversation and file is not None and file.tokens <= n_ctx else None
    if restore is not None:
        why = f"restore: {restore.tokens} tokens from disk into slot {slot.id}"
    elif file is not None and conversation:
        why = f"miss: the saved {file.tokens} tokens do not fit a {n_ctx}-token slot"
    else:
        why = f"miss: nothing saved for this conversation; slot {slot.id}"
    return KvPlan(slot.id, save=save, restore=restore, reason=why)


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
