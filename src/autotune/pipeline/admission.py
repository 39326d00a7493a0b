"""Admission control: running places, a bounded wait, and the person's turn before background work.

At most ``max_concurrent`` requests run; up to ``max_queued`` more wait, and a request that
waits longer than ``wait_timeout`` is refused. Both refusals carry a ``retry_after`` estimate
(seconds) for the HTTP ``Retry-After`` header. A waiter that is cancelled (its client went
away) leaves the line and frees its place immediately.

Requests come in two kinds (see :func:`is_background`). A *background* request — not
streamed and without a token limit, as an app's title, tags and follow-up tasks are — never
holds up a person's turn:

* waiting turns are let in before waiting background requests (each kind first come, first
  served);
* with two places or more, background requests hold at most all but one, so a turn always
  finds a place;
* when a turn must wait and background requests hold the places, they are asked to yield
  (:attr:`Place.yield_now`): the run stops where it is, says so, and frees its place.

Measured on the real engine (``bench/background.py``): with one place and first come, first
served, a turn waited for a background answer's whole length (260 s here under load); see the
README for the figures of each option.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from autotune.ground.errors import QueueFull

__all__ = ["AdmissionQueue", "Place", "QueueFull", "is_background"]

#: Request fields that limit a reply's length (OpenAI's names; every face translates to them).
_LIMITS = ("max_tokens", "max_completion_tokens")


def is_background(streamed: bool | None, params: Mapping[str, Any]) -> bool:
    """A request nobody watches token by token: not streamed (said by the face), and with no
    token limit — an app's background task. Unknown streaming counts as a person's turn."""
    if streamed is not False:
        return False
    return not any(isinstance(params.get(k), int) and params[k] > 0 for k in _LIMITS)


@dataclass(eq=False)
class Place:
    """A running place: its kind, and the signal that asks a background request to yield."""

    background: bool = False
    yield_now: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(eq=False)
class _Waiter:
    future: asyncio.Future[None]
    place: Place


class AdmissionQueue:
    """At most ``max_concurrent`` places; turns first, background requests never in the way."""

    def __init__(self, max_concurrent: int = 1, max_queued: int = 8, wait_timeout: float = 120.0):
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self.max_concurrent = max_concurrent
        self.max_queued = max(0, max_queued)
        self.wait_timeout = wait_timeout
        self._places: set[Place] = set()
        self._waiters: list[_Waiter] = []
        self._durations: list[float] = []
        self.admitted = 0
        self.rejected = 0
        #: Background runs asked to yield to a waiting turn, since start.
        self.yielded = 0

    @property
    def running(self) -> int:
        return len(self._places)

    @property
    def queued(self) -> int:
        return sum(1 for w in self._waiters if not w.future.done())

    def retry_after(self) -> int:
        """Seconds until a place is likely free: mean request time × requests ahead ÷ places."""
        mean = sum(self._durations) / len(self._durations) if self._durations else 1.0
        ahead = self.queued + 1
        return max(1, math.ceil(mean * ahead / self.max_concurrent))

    def _may_start(self, background: bool) -> bool:
        if len(self._places) >= self.max_concurrent:
            return False
        if not background or self.max_concurrent == 1:
            return True
        held = sum(1 for p in self._places if p.background)
        return held < self.max_concurrent - 1  # the last place stays free for a turn

    async def acquire(self, background: bool = False) -> Place:
        """A running place (waiting for one if need be); raises QueueFull when refused."""
        place = Place(background)
        if not self.queued and self._may_start(background):
            return self._grant(place)
        if self.queued >= self.max_queued:
            self.rejected += 1
            raise QueueFull(
                f"Too many requests: {self.running} running and {self.queued} waiting "
                f"(AUTOTUNE_MAX_QUEUED={self.max_queued}).",
                self.retry_after(),
            )
        waiter = _Waiter(asyncio.get_running_loop().create_future(), place)
        self._waiters.append(waiter)
        self._dispatch()  # a turn may start now, or ask background runs to yield
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), timeout=self.wait_timeout)
        except asyncio.TimeoutError:
            self._leave(waiter)
            self.rejected += 1
            raise QueueFull(
                f"Waited {self.wait_timeout:g}s for a free slot (AUTOTUNE_WAIT_TIMEOUT).",
                self.retry_after(),
            ) from None
        except asyncio.CancelledError:
            self._leave(waiter)
            raise
        return place

    def resize(self, max_concurrent: int) -> None:
        """Let ``max_concurrent`` run at once from now on; waiters that now fit start at once."""
        self.max_concurrent = max(1, max_concurrent)
        self._dispatch()

    def release(self, duration: float | None = None, place: Place | None = None) -> None:
        """Free a place (``place``, or any one for a caller that kept none) for the next."""
        if duration:
            self._durations = [*self._durations[-19:], duration]
        if place is None:
            place = next((p for p in self._places if not p.background), None)
            place = place or next(iter(self._places), None)
        if place is not None:
            self._places.discard(place)
        self._dispatch()

    def _grant(self, place: Place) -> Place:
        self._places.add(place)
        self.admitted += 1
        return place

    def _leave(self, waiter: _Waiter) -> None:
        """A waiter that gives up: granted meanwhile, its place goes on to the next."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if waiter.future.done() and not waiter.future.cancelled():
            self.release(0.0, waiter.place)
        else:
            waiter.future.cancel()
            self._dispatch()

    def _dispatch(self) -> None:
        """Let in whoever may start now — turns first — and, when a turn still waits, ask
        the background runs to yield their places."""
        order = sorted(self._waiters, key=lambda w: w.place.background)  # stable: turns first
        for waiter in order:
            if waiter.future.done():
                self._waiters.remove(waiter)
            elif self._may_start(waiter.place.background):
                self._waiters.remove(waiter)
                self._grant(waiter.place)
                waiter.future.set_result(None)
            elif not waiter.place.background:
                self._ask_to_yield()
                break  # later turns wait behind this one
        # A background waiter never overtakes a turn that waits before it.

    def _ask_to_yield(self) -> None:
        for place in self._places:
            if place.background and not place.yield_now.is_set():
                place.yield_now.set()
                self.yielded += 1

    @asynccontextmanager
    async def slot(self, background: bool = False) -> AsyncIterator[Place]:
        """``async with queue.slot():`` holds one running place for the block."""
        place = await self.acquire(background)
        started = time.monotonic()
        try:
            yield place
        finally:
            self.release(time.monotonic() - started, place)
