"""Admission queue: FIFO, bounded, and a cancelled waiter frees its place at once."""

from __future__ import annotations

import asyncio

import pytest

from autotune.ground.errors import QueueFull
from autotune.pipeline.admission import AdmissionQueue


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
