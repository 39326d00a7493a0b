"""The requests running now: listed for the operator, stopped at their time limit, on request,
or when the server stops.

A face opens a :class:`Running` for each chat-like request as it arrives and attaches the
run once it has started; the entry closes itself when the run finishes. Stopping an entry
(:meth:`Running.stop`) ends the request with a :class:`~autotune.ground.errors.RequestStopped`:
before its first chunk the face answers it as an error, after it the run raises it into the
stream (the face's error event) and the engine's generation is cancelled, freeing its slot.
Nothing here holds prompt text.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from autotune.ground.errors import RequestStopped

if TYPE_CHECKING:
    from autotune.pipeline.run import ChatRun

__all__ = ["Running", "RunningRequests"]


@dataclass
class Running:
    """One request in flight: who asked (the face, the model), since when, how far it got."""

    id: str
    face: str
    model: str
    started_at: float = field(default_factory=time.time)
    #: Why it was stopped (None: it runs on).
    stopped: RequestStopped | None = None
    run: ChatRun | None = None
    _owner: RunningRequests | None = None
    _timer: asyncio.TimerHandle | None = None

    @property
    def tokens(self) -> int:
        """Chunks of reply streamed so far (one token each on llama.cpp)."""
        return self.run.chunks if self.run is not None else 0

    @property
    def state(self) -> str:
        if self.stopped is not None:
            return "stopping"
        return "answering" if self.run is not None else "starting"

    def attach(self, run: ChatRun) -> None:
        """The run has started: it reports to this entry, and a stop already asked reaches it."""
        self.run = run
        self.model = run.model
        run.on_finish.append(self.close)
        if self.stopped is not None:
            run.stop(self.stopped)

    def stop(self, error: RequestStopped) -> None:
        """Stop the request with ``error`` (the first reason given wins)."""
        if self.stopped is not None:
            return
        self.stopped = error
        if self.run is not None:
            self.run.stop(error)

    def close(self) -> None:
        """The request is over (answered, failed or stopped): no longer running."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._owner is not None:
            self._owner.forget(self)
            self._owner = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "face": self.face,
            "started_at": self.started_at,
            "seconds": round(time.time() - self.started_at, 3),
            "tokens": self.tokens,
            "state": self.state,
        }


class RunningRequests:
    """Every request running now, each with its time limit (``max_seconds``; 0: none)."""

    def __init__(self, max_seconds: float = 0.0) -> None:
        self.max_seconds = max_seconds
        self._entries: dict[str, Running] = {}

    def open(self, face: str, model: str) -> Running:
        """A request has arrived: track it, and stop it when its time is up."""
        entry = Running("req_" + uuid.uuid4().hex[:16], face, model, _owner=self)
        self._entries[entry.id] = entry
        if self.max_seconds > 0:
            entry._timer = asyncio.get_running_loop().call_later(
                self.max_seconds, entry.stop, RequestStopped.over_time(self.max_seconds)
            )
        return entry

    def forget(self, entry: Running) -> None:
        self._entries.pop(entry.id, None)

    def get(self, request_id: str) -> Running | None:
        return self._entries.get(request_id)

    def stop_all(self, error: RequestStopped) -> int:
        """Stop every running request (the server is stopping); how many there were."""
        entries = list(self._entries.values())
        for entry in entries:
            entry.stop(error)
        return len(entries)

    def __iter__(self) -> Iterator[Running]:
        return iter(sorted(self._entries.values(), key=lambda e: e.started_at))

    def __len__(self) -> int:
        return len(self._entries)
