"""Admission queue: FIFO, bounded, and a cancelled waiter frees its place at once."""

from __future__ import annotations

import asyncio

import pytest

from autotune.ground.errors import QueueFull
from autotune.pipeline.admission import AdmissionQueue, is_background


async def test_runs_up_to_the_limit_then_queues_in_order() -> None:
    q = AdmissionQueue(max_concurrent=1, max_queued=3, wait_timeout=5)
    order: list[int] = []

    async def job(i: int) -> None:
        async with q.slot():
            order.append(i)
            await asyncio.sleep(0.01)

    await asyncio.gather(*(job(i) for i in range(4)))
    assert order == [0, 1, 2, 3]
    assert q.running == 0 and q.queued == 0


async def test_refuses_beyond_the_queue_with_a_retry_after() -> None:
    q = AdmissionQueue(max_concurrent=1, max_queued=1, wait_timeout=5)
    await q.acquire()
    waiter = asyncio.ensure_future(q.acquire())
    await asyncio.sleep(0)
    with pytest.raises(QueueFull) as refused:
        await q.acquire()
    assert refused.value.status == 429 and refused.value.retry_after >= 1
    q.release(0.5)
    await waiter
    q.release(0.5)
    assert q.running == 0


async def test_a_wait_that_times_out_is_refused() -> None:
    q = AdmissionQueue(max_concurrent=1, max_queued=2, wait_timeout=0.05)
    await q.acquire()
    with pytest.raises(QueueFull):
        await q.acquire()
    assert q.queued == 0
    q.release()
    assert q.running == 0


async def test_a_cancelled_waiter_leaves_the_line() -> None:
    q = AdmissionQueue(max_concurrent=1, max_queued=1, wait_timeout=5)
    await q.acquire()
    gone = asyncio.ensure_future(q.acquire())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert q.queued == 0
    nxt = asyncio.ensure_future(q.acquire())  # its place is free again
    await asyncio.sleep(0)
    q.release()
    await asyncio.wait_for(nxt, 1)
    assert q.running == 1


async def test_a_slot_granted_to_a_waiter_that_left_passes_on() -> None:
    q = AdmissionQueue(max_concurrent=1, max_queued=2, wait_timeout=5)
    await q.acquire()
    first = asyncio.ensure_future(q.acquire())
    second = asyncio.ensure_future(q.acquire())
    await asyncio.sleep(0)
    q.release()  # granted to `first` …
    first.cancel()  # … which is cancelled before it runs
    try:
        await first
        q.release()  # wait_for let the grant win the race: `first` holds it, and gives it back
    except asyncio.CancelledError:
        pass  # the grant was handed straight on
    await asyncio.wait_for(second, 1)
    assert q.running == 1 and q.queued == 0


# ---------------------------------------------------------------- background work


def test_only_unstreamed_requests_without_a_limit_are_background() -> None:
    assert is_background(False, {})
    assert is_background(False, {"temperature": 0, "max_tokens": 0})
    assert not is_background(False, {"max_tokens": 64})
    assert not is_background(False, {"max_completion_tokens": 64})
    assert not is_background(True, {})
    assert not is_background(None, {})  # a face that does not say: a person's turn


async def test_waiting_turns_go_before_waiting_background_requests() -> None:
    q = AdmissionQueue(max_concurrent=1, max_queued=8, wait_timeout=5)
    first = await q.acquire()
    order: list[str] = []

    async def wait(name: str, background: bool) -> None:
        place = await q.acquire(background)
        order.append(name)
        q.release(0.1, place)

    waiters = [
        asyncio.ensure_future(wait(name, name.startswith("task")))
        for name in ("task-title", "task-tags", "turn", "task-follow-ups", "turn-2")
    ]
    await asyncio.sleep(0)
    q.release(0.1, first)
    await asyncio.gather(*waiters)
    assert order == ["turn", "turn-2", "task-title", "task-tags", "task-follow-ups"]
    assert q.running == 0 and q.queued == 0


async def test_background_work_leaves_a_place_for_a_turn() -> None:
    q = AdmissionQueue(max_concurrent=2, max_queued=8, wait_timeout=5)
    task = await q.acquire(background=True)
    second = asyncio.ensure_future(q.acquire(background=True))
    await asyncio.sleep(0)
    assert not second.done() and q.running == 1  # the last place is kept for a turn
    turn = await q.acquire()  # ... which gets it at once
    assert q.running == 2 and not task.yield_now.is_set()
    q.release(0.1, task)
    assert not second.done()  # a turn still holds one place: one background at most
    q.release(0.1, turn)
    assert (await second).background and q.running == 1


async def test_a_waiting_turn_asks_the_background_run_to_yield() -> None:
    q = AdmissionQueue(max_concurrent=1, max_queued=8, wait_timeout=5)
    task = await q.acquire(background=True)
    later = asyncio.ensure_future(q.acquire(background=True))
    await asyncio.sleep(0)
    assert not task.yield_now.is_set()  # another task waits: no reason to stop
    turn = asyncio.ensure_future(q.acquire())
    await asyncio.sleep(0)
    assert task.yield_now.is_set() and q.yielded == 1
    q.release(0.1, task)  # the run stops and gives its place up
    place = await turn
    assert not place.background and not later.done()
    q.release(0.1, place)
    await later


async def test_a_larger_limit_lets_waiters_in_at_once() -> None:
    """A router that has read its upstreams' slots raises the limit; nobody waits for a release."""
    q = AdmissionQueue(max_concurrent=1, max_queued=4, wait_timeout=5)
    await q.acquire()
    waiters = [asyncio.ensure_future(q.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    assert q.queued == 3
    q.resize(3)
    await asyncio.wait_for(asyncio.gather(*waiters[:2]), timeout=5)
    assert (q.running, q.queued, waiters[2].done()) == (3, 1, False)
    q.release(0.1)
    await asyncio.wait_for(waiters[2], timeout=5)
    assert q.running == 3
