"""KV-cache decisions are pure: which slot, what to save, restore or delete, what happened.

Prompts are token lists here: a conversation is its preamble plus turns, so two prompts share
exactly the blocks their tokens share (the engine's own prefix matching, in 64-token blocks).
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from autotune.ground.kv import BLOCK, KvFile, KvIdentity, Match, SlotView, TokenChain, chain_of
from autotune.tuning.kv import (
    KvPlan,
    KvRates,
    RamCache,
    after_turn,
    best_match,
    kv_outcome,
    over_budget,
    plan_slot,
    redundant,
    to_save,
)

PREAMBLE = list(range(1000, 1000 + 10 * BLOCK))  # ten blocks every prompt below shares


def prompt(topic: int, length: int) -> TokenChain:
    """A prompt of ``length`` tokens: the shared preamble, then tokens of its own topic."""
    own = [topic * 100_000 + i for i in range(max(0, length - len(PREAMBLE)))]
    return chain_of((PREAMBLE + own)[:length])


def slot(i: int, chain: TokenChain | None = None, saved: int = 0, **kw: object) -> SlotView:
    tokens = chain.tokens if chain is not None else 0
    return SlotView(i, chain, tokens, tokens, saved, **kw)  # type: ignore[arg-type]


def file(name: str, tokens: int = 1000, size: int = 100, used: float = 0.0) -> KvFile:
    return KvFile(f"{name}.bin", "id", tokens, tokens, size, used)


def test_a_chain_shares_exactly_the_blocks_the_tokens_share() -> None:
    a, b = prompt(1, 2000), prompt(2, 2000)
    assert a.common(b) == len(PREAMBLE) // BLOCK == 10
    assert a.common(prompt(1, 1500)) == 1500 // BLOCK
    assert a.common(a) == a.blocks == 2000 // BLOCK and a.tokens == 2000
    assert chain_of(list(range(BLOCK - 1))).blocks == 0  # a partial block is not hashed
    assert a.common(None) == 0


def test_the_slot_holding_most_of_the_prompt_is_a_hit() -> None:
    slots = [slot(0, prompt(2, 900), last_used=1), slot(1, prompt(1, 1800), last_used=2)]
    plan = plan_slot(prompt(1, 2000), slots, n_ctx=4096)
    assert (plan.slot, plan.status, plan.restore, plan.save) == (1, "hit", None, None)
    assert plan.reused == 1800 // BLOCK * BLOCK


def test_an_empty_slot_comes_first_then_the_least_recently_used() -> None:
    slots = [slot(0, prompt(2, 700), last_used=5), slot(1), slot(2, prompt(3, 700), last_used=1)]
    new = chain_of(list(range(5000, 6000)))  # shares nothing with any of them
    assert plan_slot(new, slots, n_ctx=4096).slot == 1
    slots[1] = slot(1, prompt(4, 700), last_used=9)
    plan = plan_slot(new, slots, n_ctx=4096)
    assert plan.slot == 2 and plan.save == slots[2] and plan.status == "miss"


def test_the_conversation_a_client_names_breaks_ties() -> None:
    slots = [slot(0, last_used=1), SlotView(1, conversation="c", last_used=2)]
    assert plan_slot(None, slots, n_ctx=4096, conversation="c").slot == 1
    assert plan_slot(None, slots, n_ctx=4096).slot == 0


def test_a_slot_changing_hands_saves_only_what_grew_since_its_file() -> None:
    grown = slot(0, prompt(2, 800), saved=500)
    assert plan_slot(prompt(1, 2000), [grown], n_ctx=4096).save == grown
    unchanged = slot(0, prompt(2, 800), saved=800)
    assert plan_slot(prompt(1, 2000), [unchanged], n_ctx=4096).save is None


def test_a_prompt_that_continues_the_slot_saves_nothing() -> None:
    occupant = slot(0, prompt(1, 1500), saved=0)
    plan = plan_slot(prompt(1, 2000), [occupant], n_ctx=4096)
    assert plan.save is None and plan.status == "hit"


def test_the_file_sharing_most_blocks_is_restored_if_it_fits() -> None:
    near = Match(file("near", tokens=1900), 1800 // BLOCK)
    preamble = Match(file("preamble", tokens=700), 10)
    plan = plan_slot(prompt(1, 2000), [slot(0)], [preamble, near], n_ctx=4096)
    assert plan.restore == near.file and plan.status == "restore" and "restore" in plan.reason
    too_big = Match(file("big", tokens=5000), 1900 // BLOCK)
    plan = plan_slot(prompt(1, 2000), [slot(0)], [too_big, preamble], n_ctx=4096)
    assert plan.restore == preamble.file  # the biggest does not fit: the preamble does


def test_a_shared_preamble_is_restored_into_a_new_session() -> None:
    """A second session starting with a preamble already saved: restore it, prefill the rest."""
    saved = Match(file("session-1", tokens=900), 10)
    plan = plan_slot(prompt(7, 1200), [slot(0)], [saved], n_ctx=4096)
    assert plan.restore == saved.file and plan.reused == 10 * BLOCK


def test_a_restore_must_bring_more_than_the_slot_or_the_ram_cache_holds() -> None:
    near = Match(file("near", tokens=2000), 1900 // BLOCK)
    holding = slot(0, prompt(1, 1880))
    assert plan_slot(prompt(1, 2000), [holding], [near], n_ctx=4096).restore is None
    ram = RamCache(10**9, 1.0, ((prompt(1, 1950), 1950),))
    plan = plan_slot(prompt(1, 2000), [slot(0)], [near], n_ctx=4096, ram=ram)
    assert plan.restore is None and plan.status == "ram"
    # A gain below what a restore costs is not worth it.
    plan = plan_slot(prompt(1, 2000), [holding], [near], n_ctx=4096, min_tokens=BLOCK * 3)
    assert plan.restore is None


def test_a_short_prompt_is_not_looked_up() -> None:
    plan = plan_slot(None, [slot(0, prompt(2, 900))], n_ctx=4096)
    assert plan.status == "short" and plan.restore is None


def test_a_busy_slot_is_never_chosen_nor_restored_into() -> None:
    busy = [slot(0, prompt(1, 900), busy=True), slot(1, prompt(2, 100), busy=True)]
    plan = plan_slot(prompt(1, 1000), busy, [Match(file("a"), 5)], n_ctx=4096)
    assert plan == KvPlan(None, "busy", reason=plan.reason) and "busy" in plan.reason


@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.booleans(), st.integers(0, 9)), min_size=1, max_size=6
    ),
    st.integers(0, 3),
    st.booleans(),
)
def test_the_chosen_slot_is_always_idle(
    slots_spec: list[tuple[int, bool, int]], topic: int, with_file: bool
) -> None:
    slots = [
        slot(i, prompt(t, 800) if t else None, busy=b, last_used=u)
        for i, (t, b, u) in enumerate(slots_spec)
    ]
    matches = [Match(file("f", tokens=900), 12)] if with_file else []
    plan = plan_slot(prompt(topic, 1000), slots, matches, n_ctx=4096)
    if plan.slot is not None:
        assert not slots[plan.slot].busy
    else:
        assert all(s.busy for s in slots)
    assert plan.restore is None or (plan.slot is not None and plan.status == "restore")


def test_before_an_unload_every_grown_prompt_is_saved() -> None:
    slots = [slot(0, prompt(1, 900), saved=900), slot(1, prompt(2, 900), saved=100), slot(2)]
    assert [s.id for s in to_save(slots)] == [1]
    assert to_save(slots, min_tokens=900) == []


def test_a_turn_is_saved_after_its_reply_when_it_grew_enough() -> None:
    assert after_turn(slot(0, prompt(1, 2000)), 64)  # never saved
    assert not after_turn(slot(0, prompt(1, 2000), saved=1900), 64)  # 5 % more: not yet
    assert after_turn(slot(0, prompt(1, 2000), saved=1400), 64)  # 30 % more
    assert not after_turn(slot(0, prompt(1, 50)), 64)  # too short to pay
    assert not after_turn(slot(0), 64)  # nothing known


def test_the_cost_measured_sets_the_shortest_prompt_worth_a_file() -> None:
    assert KvRates(prefill_ms_per_token=5.7, restore_ms=60).min_tokens == BLOCK  # this CPU
    assert KvRates(prefill_ms_per_token=0.2, restore_ms=60).min_tokens == 300  # a fast GPU
    assert KvRates(prefill_ms_per_token=0.0, restore_ms=60).min_tokens == BLOCK


def test_a_file_whose_whole_prompt_a_newer_one_holds_is_redundant() -> None:
    old = KvFile("old.bin", "id", 1100, 1000, 10)  # 1,000 prompt tokens, then its reply
    new = KvFile("new.bin", "id", 1500, 1450, 10)
    assert redundant(new, [Match(old, 1000 // BLOCK)]) == [old]
    assert redundant(new, [Match(old, 1000 // BLOCK - 1)]) == []  # they part inside it
    other = KvFile("other.bin", "id2", 1100, 1000, 10)
    assert redundant(new, [Match(other, 15)]) == []  # another identity
    longer = KvFile("longer.bin", "id", 3000, 2900, 10)
    assert redundant(new, [Match(longer, 20)]) == []  # holds more than the new one


def test_the_best_match_is_the_deepest_then_the_cheapest() -> None:
    a, b = Match(file("a", tokens=3000), 20), Match(file("b", tokens=2000), 20)
    assert best_match([a, b], 4096) == b
    assert best_match([a, Match(file("c", tokens=900), 12)], 2048) is not None
    assert best_match([Match(file("d", tokens=900), 0)], 4096) is None


def test_the_disk_budget_deletes_least_recently_used_files_first() -> None:
    files = [file("a", size=100, used=3), file("b", size=100, used=1), file("c", size=100, used=2)]
    assert [f.filename for f in over_budget(files, 200)] == ["b.bin"]
    assert [f.filename for f in over_budget(files, 100, keep="b.bin")] == ["c.bin", "a.bin"]
    assert over_budget(files, 1000) == []


def test_the_outcome_is_what_the_engine_counted() -> None:
    restore = KvPlan(0, "restore", restore=file("a"))
    assert kv_outcome(restore, 990, 1000, 0) == "restored"
    assert kv_outcome(restore, 0, 1000, 0) == "miss"  # restored, yet the engine re-read it
    assert kv_outcome(KvPlan(0, "hit"), 950, 1000, 0) == "hit"
    assert kv_outcome(KvPlan(0), 1, 40, 5000) == "saved"  # the start-of-text token is no hit
    assert kv_outcome(None, None, None, 0) == "miss"


def test_an_identity_changes_with_anything_a_restore_depends_on() -> None:
    base = KvIdentity("/m.gguf|100|1", "f16", "f16", 1)
    assert base.key == KvIdentity("/m.gguf|100|1", "f16", "f16", 1).key
    for other in (
        KvIdentity("/m.gguf|100|2", "f16", "f16", 1),
        KvIdentity("/m.gguf|100|1", "q8_0", "q8_0", 1),
        KvIdentity("/m.gguf|100|1", "f16", "f16", 2),
    ):
        assert other.key != base.key


def test_the_ram_cache_model_counts_the_most_recent_first() -> None:
    a, b, c = (chain_of(list(range(k * 10_000, k * 10_000 + 300))) for k in (1, 2, 3))
    ram = RamCache(capacity=1000, bytes_per_token=1.0, held=((a, 300), (b, 300), (c, 300)))
    assert ram.blocks(c) == c.blocks and ram.blocks(b) == b.blocks  # 600 within 70 % of 1,000
    assert ram.blocks(a) == 0  # 900 is past the safety share
    longer = chain_of(list(range(30_000, 30_900)))
    assert ram.blocks(longer) == c.blocks  # what it shares with c
    assert ram.fits(700) and not ram.fits(701)


def test_a_prompt_in_the_ram_cache_is_not_restored_from_disk() -> None:
    ram = RamCache(10**9, 1.0, ((prompt(1, 1000), 1000),))
    saved = Match(file("a", tokens=1000), 1000 // BLOCK)
    plan = plan_slot(
        prompt(1, 1100), [slot(0, prompt(2, 500), saved=500)], [saved], n_ctx=4096, ram=ram
    )
    assert plan.status == "ram" and plan.restore is None and plan.save is None


def test_a_slot_leaving_for_the_ram_cache_is_saved_only_when_its_file_lags() -> None:
    ram = RamCache(10**9, 1.0)
    new = prompt(1, 2000)
    fresh = slot(0, prompt(2, 2000), saved=1900)  # 100 behind: within a twentieth
    assert plan_slot(new, [fresh], n_ctx=4096, ram=ram).save is None
    stale = slot(0, prompt(2, 2000), saved=1000)
    assert plan_slot(new, [stale], n_ctx=4096, ram=ram).save == stale
    # A restore overwrites the slot (nothing of it stays in RAM): save any lag first.
    restoring = plan_slot(new, [fresh], [Match(file("a", 1900), 29)], n_ctx=4096, ram=ram)
    assert restoring.restore is not None and restoring.save == fresh
    # Too big for the RAM cache: saved whatever the lag.
    tiny = RamCache(1000, 1.0)
    assert plan_slot(new, [fresh], n_ctx=4096, ram=tiny).save == fresh
