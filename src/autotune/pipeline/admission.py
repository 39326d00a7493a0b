"""Admission control: a FIFO of requests with a fixed number of running slots and a bounded wait.

Beyond ``max_concurrent`` running and ``max_queued`` waiting, a request is refused at once;
a request that waits longer than ``wait_timeout`` is refused too. Both refusals carry a
``retry_after`` estimate (seconds) for the HTTP ``Retry-After`` header. A waiter that is
cancelled (its client went away) leaves the line and frees its place immediately.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from autotune.ground.errors import QueueFull

__all__ = ["AdmissionQueue", "QueueFull"]


class AdmissionQueue:
    """First come, first served; at most ``max_concurrent`` hold a slot at once."""

    def __init__(self, max_concurrent: int = 1, max_queued: int = 8, wait_timeout: float = 120.0):
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.max_concurrent = max_concurrent
        self.max_queued = max(0, max_queued)
        self.wait_timeout = wait_timeout
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._durations: deque[float] = deque(maxlen=20)
        self.admitted = 0
        self.rejected = 0

    @property
    def queued(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def retry_after(self) -> int:
        """Seconds until a place is likely free: mean request time × requests ahead ÷ slots."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        ahead = self.queued + 1
        return max(1, math.ceil(mean * ahead / self.max_concurrent))

    async def acquire(self) -> None:
        if self.running < self.max_concurrent and not self.queued:
            self.running += 1
            self.admitted += 1
            return
        if self.queued >= self.max_queued:
            self.rejected += 1
            raise QueueFull(
                f"Too many requests: {self.running} running and {self.queued} waiting "
                f"(AUTOTUNE_MAX_QUEUED={self.max_queued}).",
                self.retry_after(),
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout=self.wait_timeout)
        except asyncio.TimeoutError:
            if waiter.done() and not waiter.cancelled():
                self.release(0.0)  # the slot arrived as the timer fired: pass it on
            else:
                waiter.cancel()
            self._drop(waiter)
            self.rejected += 1
            raise QueueFull(
                f"Waited {self.wait_timeout:g}s for a free slot (AUTOTUNE_WAIT_TIMEOUT).",
                self.retry_after(),
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(0.0)  # granted, but the client left: hand the slot on
            else:
                waiter.cancel()
            self._drop(waiter)
            raise
        self.admitted += 1

    def resize(self, max_concurrent: int) -> None:
        """Let ``max_concurrent`` run at once from now on; waiters that now fit start at once."""
        self.max_concurrent = max(1, max_concurrent)
        while self.running < self.max_concurrent and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.running += 1

    def release(self, duration: float | None = None) -> None:
        """Free a slot and hand it to the first live waiter."""
        if duration:
            self._durations.append(duration)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes straight on: running stays the same
                return
        self.running = max(0, self.running - 1)

    def _drop(self, waiter: asyncio.Future[None]) -> None:
        with suppress(ValueError):
            self._waiters.remove(waiter)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """``async with queue.slot():`` holds one running place for the block."""
        await self.acquire()
        started = time.monotonic()
        try:
            yield
        finally:
            self.release(time.monotonic() - started)
