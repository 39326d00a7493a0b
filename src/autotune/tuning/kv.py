"""Which slot a prompt runs on, and which KV files to save, restore or drop (pure).

llama.cpp keeps a prompt's KV cache in a *slot*; autotune pins each request to a slot
(``id_slot``) and keeps slot states as files on disk (``/slots/{id}?action=save``), known by
the tokens they hold (:class:`~autotune.ground.kv.TokenChain`). A request whose prompt starts
the way a saved file does — the same conversation after an unload, a reload or a restart, or
a new one with the same long preamble — gets that file restored into its slot in
milliseconds instead of a prefill of seconds or minutes. No header is needed: the match is
by content. These functions decide; :mod:`autotune.pipeline.kv` acts.

Engine facts they rely on (measured here with xllamacpp 2026.10, both test models):

* a saved slot restores into any slot of a worker of the same model file, KV cache types
  and **number of slots** (``n_parallel`` 1 → 2 fails: "invalid slot save file"), whatever
  its context size, as long as the tokens fit: so that is a file's identity;
* after a restore the engine's own prefix matching decides what it reuses (the longest
  common token prefix), so a file saved from one conversation serves any prompt that starts
  the same way, and a file a turn or two behind costs only the prefill of what came after;
* while a worker lives, its host-RAM prompt cache (``--cache-ram``) keeps the prompts that
  left a slot and swaps the best match back in: what it holds needs no restore;
* a truncated, damaged or foreign file is refused by the engine (HTTP 400), but not every
  damaged file is: autotune checks a file's checksum before restoring it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autotune.ground.decision import Decision
from autotune.ground.kv import BLOCK, KvFile, Match, SlotView, TokenChain

__all__ = [
    "MEASURED_HERE",
    "RAM_SAFETY",
    "SAVE_GROWTH",
    "KvPlan",
    "KvRates",
    "RamCache",
    "after_turn",
    "best_match",
    "engine_reuse",
    "kv_outcome",
    "over_budget",
    "plan_slot",
    "redundant",
    "stale_allowance",
    "to_save",
]


#: Share of llama.cpp's host-RAM prompt cache autotune counts on (the rest is slack for
#: what its model of that cache gets wrong).
RAM_SAFETY = 0.7
#: After a turn, a slot is saved again once what it holds beyond its file is this share of
#: it: a crash then costs at most that much prefill, and a growing conversation writes a
#: few files (each replacing the last) rather than one per turn.
SAVE_GROWTH = 0.25


@dataclass(frozen=True)
class KvRates:
    """What a model's KV work costs on this machine, as measured on its own requests."""

    #: Prefill time per token (the engine's ``prompt_ms / prompt_n``).
    prefill_ms_per_token: float
    #: Finding and restoring a file: the prompt's tokenization, the look-up, the restore.
    restore_ms: float

    @property
    def min_tokens(self) -> int:
        """The shortest prompt worth a look-up, a save or a restore: below it, prefilling
        costs less than restoring (and never less than one block, what matching counts in)."""
        if self.prefill_ms_per_token <= 0:
            return BLOCK
        return max(BLOCK, math.ceil(self.restore_ms / self.prefill_ms_per_token))


#: Until a model's own requests are measured, this machine's figures for the bundled model
#: (2 cores, xllamacpp 2026.10): 5,838 tokens prefilled in 33.3 s; a look-up (chat template +
#: tokenizer, ~6,000 tokens) 15-40 ms and a restore 16-85 ms. On them a restore pays from the
#: first block; on a fast GPU (prefill ~0.2 ms a token) only from a few hundred tokens.
MEASURED_HERE = KvRates(prefill_ms_per_token=5.7, restore_ms=60.0)


@dataclass(frozen=True)
class RamCache:
    """What llama.cpp's host-RAM prompt cache probably holds: the prompts that left a slot by
    a normal request (llama.cpp keeps the slot's state then), most recent last.

    While the engine lives, that cache already serves conversations taking turns (measured:
    four of ~1,000 tokens on one slot prefilled only their new turn), so a prompt it holds
    needs no restore, and a slot whose state will fit in it needs no save on every hand-over.
    """

    capacity: int
    bytes_per_token: float
    held: tuple[tuple[TokenChain, int], ...] = ()

    def fits(self, tokens: int) -> bool:
        return 0 < tokens * self.bytes_per_token <= self.capacity * RAM_SAFETY

    def blocks(self, chain: TokenChain | None) -> int:
        """Leading blocks of ``chain`` the cache should still hold (0: none)."""
        total, best = 0.0, 0
        for kept, tokens in reversed(self.held):
            total += tokens * self.bytes_per_token
            if total > self.capacity * RAM_SAFETY:
                break
            best = max(best, kept.common(chain))
        return best


def best_match(matches: Sequence[Match], n_ctx: int) -> Match | None:
    """The file to restore for a prompt: the most shared blocks among those that fit a slot;
    then the smallest (the cheapest restore); then the most recently used; then by name."""
    fitting = [m for m in matches if m.blocks > 0 and m.file.tokens <= n_ctx]
    if not fitting:
        return None
    return min(
        fitting, key=lambda m: (-m.blocks, m.file.tokens, -m.file.last_used, m.file.filename)
    )


def stale_allowance(tokens: int) -> int:
    """Tokens a slot's file may lag behind the engine when the RAM cache holds the rest: a
    restore from it then re-reads at most this (a twentieth, at least 128)."""
    return max(128, tokens // 20)


@dataclass(frozen=True)
class KvPlan:
    """What to do with slots before one request, and why."""

    #: The slot the request runs on (None: let the engine choose; all slots are busy).
    slot: int | None
    #: ``hit`` (the slot holds the prompt's start), ``ram`` (the engine's host-RAM cache
    #: should), ``restore`` (from disk), ``miss``, ``busy``, or ``short`` (below the length
    #: where KV files pay: the engine's own prefix cache only).
    status: str = "miss"
    #: Tokens of the prompt the engine should reuse, by autotune's model of it.
    reused: int = 0
    #: Save this slot's prompt first (it is about to leave the slot).
    save: SlotView | None = None
    #: Restore this file into the slot before the request.
    restore: KvFile | None = None
    reason: str = ""


_SlotKey = tuple[int, bool, bool, float, int]


def _slot_order(
    chain: TokenChain | None, conversation: str | None
) -> Callable[[SlotView], _SlotKey]:
    """Sort key for idle slots: the most of the prompt held first; then the conversation
    the client named; then an empty slot; then the one used longest ago; ties by slot id."""

    def key(s: SlotView) -> _SlotKey:
        shared = chain.common(s.chain) if chain is not None else 0
        named = conversation is not None and s.conversation == conversation
        return (-shared, not named, s.tokens > 0, s.last_used, s.id)

    return key


def plan_slot(
    chain: TokenChain | None,
    slots: Sequence[SlotView],
    matches: Sequence[Match] = (),
    *,
    n_ctx: int,
    ram: RamCache | None = None,
    min_tokens: int = BLOCK,
    conversation: str | None = None,
) -> KvPlan:
    """The slot for a prompt of ``chain`` (None: too short to look up), and what to save or
    restore first. ``matches`` are the saved files of this identity that start like the
    prompt; ``ram`` what the engine's host-RAM cache probably holds (None: nothing is
    counted on); ``min_tokens`` the gain below which a restore does not pay."""
    idle = [s for s in slots if not s.busy]
    if not idle:
        return KvPlan(None, "busy", reason="busy: every slot is serving another request")
    slot = min(idle, key=_slot_order(chain, conversation))
    held = chain.common(slot.chain) if chain is not None else 0
    in_ram = ram.blocks(chain) if ram is not None else 0
    have = max(held, in_ram)
    best = best_match(matches, n_ctx) if chain is not None else None
    restore = best.file if best and (best.blocks - have) * BLOCK >= min_tokens else None
    # The slot's prompt stays only if this one continues it and nothing overwrites it.
    continued = slot.chain is not None and held >= slot.chain.blocks and restore is None
    save = None if continued else _hand_over(slot, ram, restore is not None, min_tokens)
    if chain is None:
        why = f"short: below {min_tokens} tokens the engine's own prefix cache serves it"
        return KvPlan(slot.id, "short", save=save, reason=f"{why}; slot {slot.id}")
    if restore is not None:
        assert best is not None
        reused = min(chain.tokens, best.blocks * BLOCK)
        why = f"restore: {reused} tokens of the prompt from disk into slot {slot.id}"
        return KvPlan(slot.id, "restore", reused, save, restore, why)
    if have and held >= in_ram:
        why = f"hit: slot {slot.id} holds {held * BLOCK} tokens of the prompt"
        return KvPlan(slot.id, "hit", held * BLOCK, save, reason=why)
    if have:
        why = f"ram: the engine's prompt cache should hold {in_ram * BLOCK} tokens of it"
        return KvPlan(slot.id, "ram", in_ram * BLOCK, save, reason=f"{why}; slot {slot.id}")
    why = "miss: nothing saved or held starts like this prompt"
    return KvPlan(slot.id, "miss", save=save, reason=f"{why}; slot {slot.id}")


def _hand_over(
    slot: SlotView, ram: RamCache | None, overwritten: bool, min_tokens: int
) -> SlotView | None:
    """The slot to save before its prompt leaves it, or None.

    A lag below ``min_tokens`` is cheaper to prefill again than to save. A restore
    overwrites the slot (llama.cpp keeps nothing of it then), so its prompt is saved if its
    file lags more than that; a normal request lets llama.cpp keep it in RAM, so a save
    waits until the file lags by more than :func:`stale_allowance` too."""
    lag = slot.tokens - slot.saved
    if slot.chain is None or lag < min_tokens:
        return None
    fits = not overwritten and ram is not None and ram.fits(slot.tokens)
    return None if fits and lag <= stale_allowance(slot.tokens) else slot


def after_turn(slot: SlotView, min_tokens: int) -> bool:
    """Whether to save a slot once its turn is answered (off the reply's path): what it holds
    beyond its file is worth a restore, and it is the first save or the slot has grown by
    :data:`SAVE_GROWTH` since (so a worker that dies loses little, at a few files' writes)."""
    if slot.chain is None or slot.busy:
        return False
    unsaved = slot.tokens - slot.saved
    return unsaved >= min_tokens and (slot.saved == 0 or unsaved >= SAVE_GROWTH * slot.tokens)


def to_save(slots: Sequence[SlotView], min_tokens: int = 0) -> list[SlotView]:
    """Slots holding more than their files, by at least ``min_tokens`` (before an unload, a
    reload or a shutdown). A busy slot cannot be saved: the caller waits for it."""
    return [s for s in slots if s.chain is not None and s.tokens - s.saved > max(0, min_tokens)]


def redundant(new: KvFile, matches: Sequence[Match]) -> list[KvFile]:
    """Files that ``new`` makes redundant, from the files that start like it (``matches``,
    with the blocks each shares with it): those whose prompt's whole blocks it holds too —
    candidates to drop once the tokens of their partial last block are compared. What comes
    after a file's prompt is its own reply as generated, which a next turn renders anew."""
    return [
        m.file
        for m in matches
        if m.file.filename != new.filename
        and m.file.identity == new.identity
        and m.file.prompt_tokens <= new.tokens
        and m.blocks >= m.file.prompt_tokens // BLOCK
    ]


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
    saved for another prompt and this one was computed afresh, else ``miss``."""
    cached, prompt = cached_tokens or 0, prompt_tokens or 0
    reused = cached > 1 and cached >= prompt / 10
    if plan is not None and plan.restore is not None and reused:
        return "restored"
    if reused:
        return "hit"
    return "saved" if saved_bytes else "miss"


def engine_reuse(outcome: str | None, cached: int | None, prompt: int | None) -> list[Decision]:
    """After a run, what the engine says it reused, for the plan: ``kv_cache`` becomes the
    outcome by the engine's own count (``restored``, ``hit``, ``saved``, ``miss``; see
    :func:`kv_outcome`), ``kv_reused`` its cached and prompt tokens. Before the reply only the
    choice is known (``hit``, ``ram``, ``restore``…), so a stream's header says that; a whole
    reply's header, the run's record and the dashboard say this. Nothing for an engine that
    does not count (its ``cached_tokens`` is None)."""
    if cached is None or not prompt:
        return []
    why = f"the engine reused {cached:,} of the prompt's {prompt:,} tokens"
    final = outcome or kv_outcome(None, cached, prompt, 0)
    return [Decision("kv_cache", final, why), Decision("kv_reused", f"{cached}/{prompt}", why)]
