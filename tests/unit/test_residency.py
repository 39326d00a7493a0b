"""The embedded engine's memory decisions, pure: which idle models make room for a load, and
how much host RAM llama.cpp's prompt cache gets, each with its reason."""

from __future__ import annotations

from autotune.backends.residency import (
    LLAMA_CACHE_RAM_MIB,
    Resident,
    WorkerState,
    make_room,
    prompt_cache,
)
from autotune.ground.units import GiB, MiB

READY, BUSY = WorkerState.READY, WorkerState.BUSY


def test_a_load_that_fits_unloads_nothing() -> None:
    room = make_room("b", 1 * GiB, 4 * GiB, [Resident("a", 2 * GiB, 10.0)])
    assert room.victims == () and room.refusal is None and "fits" in room.decision.reason


def test_the_least_recently_used_idle_models_go_first_and_only_as_many_as_needed() -> None:
    residents = [
        Resident("old", 1 * GiB, 1.0),
        Resident("busy-oldest", 1 * GiB, 0.0, BUSY),
        Resident("newer", 1 * GiB, 5.0),
        Resident("newest", 1 * GiB, 9.0),
    ]
    room = make_room("big", 2 * GiB, 4 * GiB, residents)
    assert room.victims == ("old", "newer")
    assert room.decision.value == ["old", "newer"] and "least recently used" in room.decision.reason


def test_a_tie_is_broken_by_name_not_by_order() -> None:
    one = make_room(
        "x", 1 * GiB, 2 * GiB, [Resident("b", 2 * GiB, 1.0), Resident("a", 2 * GiB, 1.0)]
    )
    two = make_room(
        "x", 1 * GiB, 2 * GiB, [Resident("a", 2 * GiB, 1.0), Resident("b", 2 * GiB, 1.0)]
    )
    assert one.victims == two.victims == ("a", "b")


def test_nothing_is_unloaded_when_no_unload_can_make_it_fit() -> None:
    residents = [Resident("idle", 1 * GiB, 1.0), Resident("busy", 2 * GiB, 2.0, BUSY)]
    room = make_room("x", 3 * GiB, 4 * GiB, residents)
    assert room.victims == () and room.refusal and "busy" in room.refusal
    too_big = make_room("x", 5 * GiB, 4 * GiB, [])
    assert too_big.refusal and "memory budget" in too_big.refusal and too_big.hint


def test_the_prompt_cache_is_the_plans_then_the_settings_then_a_quarter_of_the_headroom() -> None:
    assert prompt_cache(planned=64, configured=128, budget=0, loaded=0, estimate=0).value == 64
    configured = prompt_cache(planned=None, configured=128, budget=0, loaded=0, estimate=0)
    assert configured.value == 128 and "AUTOTUNE_PROMPT_CACHE_MIB" in configured.reason
    share = prompt_cache(
        planned=None, configured=None, budget=4 * GiB, loaded=1 * GiB, estimate=1 * GiB
    )
    assert share.value == 2 * GiB // 4 // MiB and "quarter" in share.reason
    huge = prompt_cache(planned=None, configured=None, budget=400 * GiB, loaded=0, estimate=0)
    assert huge.value == LLAMA_CACHE_RAM_MIB
    none = prompt_cache(planned=None, configured=None, budget=1 * GiB, loaded=1 * GiB, estimate=1)
    assert none.value == 0
