"""KV-cache decisions are pure: which slot, what to save, restore or delete, what happened."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from autotune.ground.kv import KvFile, KvIdentity, SlotView
from autotune.tuning.kv import KvPlan, RamCache, kv_outcome, over_budget, plan_slot, to_save


def file(conv: str = "a", tokens: int = 1000, size: int = 100, used: float = 0.0) -> KvFile:
    return KvFile(conv, "id", f"{conv}.bin", tokens, size, used)


def test_a_conversation_that_holds_its_slot_is_a_hit() -> None:
    slots = [SlotView(0, "b", 50, last_used=1), SlotView(1, "a", 900, last_used=2)]
    plan = plan_slot("a", slots, file("a"), n_ctx=4096)
    assert plan.slot == 1 and plan.hit and plan.restore is None and plan.save is None


def test_an_empty_slot_comes_first_then_the_least_recently_used() -> None:
    slots = [SlotView(0, "b", 50, last_used=5), SlotView(1), SlotView(2, "c", 70, last_used=1)]
    assert plan_slot("a", slots, None, n_ctx=4096).slot == 1
    slots[1] = SlotView(1, "d", 10, last_used=9)
    plan = plan_slot("a", slots, None, n_ctx=4096)
    assert plan.slot == 2 and plan.save is not None and plan.save.conversation == "c"


def test_a_slot_changing_hands_saves_only_what_grew_since_its_file() -> None:
    grown = SlotView(0, "b", 800, saved=500)
    assert plan_slot("a", [grown], None, n_ctx=4096).save == grown
    unchanged = SlotView(0, "b", 800, saved=800)
    assert plan_slot("a", [unchanged], None, n_ctx=4096).save is None


def test_a_file_is_restored_into_the_chosen_slot_only_if_it_fits() -> None:
    plan = plan_slot("a", [SlotView(0)], file("a", tokens=3000), n_ctx=4096)
    assert plan.restore is not None and plan.slot == 0 and "restore" in plan.reason
    too_big = plan_slot("a", [SlotView(0)], file("a", tokens=5000), n_ctx=4096)
    assert too_big.restore is None and "do not fit" in too_big.reason


def test_a_busy_slot_is_never_chosen_nor_restored_into() -> None:
    busy = [SlotView(0, "a", 900, busy=True), SlotView(1, "b", 100, busy=True)]
    plan = plan_slot("a", busy, file("a"), n_ctx=4096)
    assert plan == KvPlan(None, reason=plan.reason) and "busy" in plan.reason


@given(
    st.lists(
        st.tuples(st.sampled_from([None, "a", "b", "c"]), st.booleans(), st.integers(0, 9)),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([None, "a", "b", "z"]),
)
def test_the_chosen_slot_is_always_idle(
    slots_spec: list[tuple[str | None, bool, int]], conv: str | None
) -> None:
    slots = [
        SlotView(i, c, 100 if c else 0, busy=b, last_used=u)
        for i, (c, b, u) in enumerate(slots_spec)
    ]
    plan = plan_slot(conv, slots, file(conv) if conv else None, n_ctx=4096)
    if plan.slot is not None:
        assert not slots[plan.slot].busy
    else:
        assert all(s.busy for s in slots)
    assert plan.restore is None or (plan.slot is not None and not plan.hit)


def test_before_an_unload_every_grown_conversation_is_saved() -> None:
    slots = [SlotView(0, "a", 900, saved=900), SlotView(1, "b", 900, saved=100), SlotView(2)]
    assert [s.id for s in to_save(slots)] == [1]


def test_the_disk_budget_deletes_least_recently_used_files_first() -> None:
    files = [file("a", size=100, used=3), file("b", size=100, used=1), file("c", size=100, used=2)]
    assert [f.conversation for f in over_budget(files, 200)] == ["b"]
    assert [f.conversation for f in over_budget(files, 100, keep="b.bin")] == ["c", "a"]
    assert over_budget(files, 1000) == []


def test_the_outcome_is_what_the_engine_counted() -> None:
    restore = KvPlan(0, restore=file("a"))
    assert kv_outcome(restore, 990, 1000, 0) == "restored"
    assert kv_outcome(restore, 0, 1000, 0) == "miss"  # restored, yet the engine re-read it
    assert kv_outcome(KvPlan(0, hit=True), 950, 1000, 0) == "hit"
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
    ram = RamCache(capacity=1000, bytes_per_token=1.0, held=(("a", 300), ("b", 300), ("c", 300)))
    assert ram.holds("c") and ram.holds("b")  # 300 + 300 within 70 % of 1,000
    assert not ram.holds("a")  # 900 is past the safety share
    assert not ram.holds("zzz")
    assert ram.fits(700) and not ram.fits(701)


def test_a_conversation_in_the_ram_cache_is_not_restored_from_disk() -> None:
    ram = RamCache(10**9, 1.0, (("a", 1000),))
    plan = plan_slot("a", [SlotView(0, "b", 500, saved=500)], file("a"), n_ctx=4096, ram=ram)
    assert plan.from_ram and plan.restore is None and plan.save is None


def test_a_slot_leaving_for_the_ram_cache_is_saved_only_when_its_file_lags() -> None:
    ram = RamCache(10**9, 1.0)
    fresh = SlotView(0, "b", 2000, saved=1950)  # 50 behind: within a twentieth
    assert plan_slot("a", [fresh], None, n_ctx=4096, ram=ram).save is None
    stale = SlotView(0, "b", 2000, saved=1000)
    assert plan_slot("a", [stale], None, n_ctx=4096, ram=ram).save == stale
    # A restore overwrites the slot (nothing of it stays in RAM): save any lag first.
    restoring = plan_slot("a", [fresh], file("a"), n_ctx=4096, ram=ram)
    assert restoring.restore is not None and restoring.save == fresh
    # Too big for the RAM cache: saved whatever the lag.
    tiny = RamCache(1000, 1.0)
    assert plan_slot("a", [fresh], None, n_ctx=4096, ram=tiny).save == fresh
