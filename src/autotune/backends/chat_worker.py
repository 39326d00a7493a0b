"""A chat model's worker as the embedded engine holds it: its process, its client, its settings
and its state; a stream counted as in flight while it runs; what changed between two loads."""

from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from autotune.backends.openai_compat import OpenAICompatBackend
from autotune.backends.residency import Resident, WorkerState
from autotune.ground.types import Chunk, LoadSettings

__all__ = ["Worker", "served", "settings_diff"]


@dataclass
class Worker:
    name: str
    path: Path
    settings: LoadSettings
    proc: subprocess.Popen[bytes]
    url: str
    client: OpenAICompatBackend
    estimate: int
    keep_alive: float
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    in_flight: int = 0
    supports_tools: bool = True
    cache_ram_mib: int | None = None
    #: The worker's own API key: only this process holds it (see :func:`key_file`).
    api_key: str | None = field(default=None, repr=False)
    #: Unique per started worker: slot contents belong to one generation.
    generation: int = 0
    #: How long the start took, from launching the process to the model answering.
    load_ms: float | None = None

    #: Set by :meth:`EmbeddedBackend._stop`: STOPPING while its slots are saved, then STOPPED.
    stopped: WorkerState | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def state(self) -> WorkerState:
        """Where the worker is: stopped or stopping by autotune, dead on its own, busy, ready."""
        if self.stopped is not None:
            return self.stopped
        if not self.alive():
            return WorkerState.DEAD
        return WorkerState.BUSY if self.in_flight else WorkerState.READY

    def resident(self) -> Resident:
        return Resident(self.name, self.estimate, self.last_used, self.state)

    def expired(self, now: float) -> bool:
        return (
            self.keep_alive >= 0
            and self.state is WorkerState.READY
            and now - self.last_used >= self.keep_alive
        )


async def served(
    worker: Worker, loaded_now: bool, chunks: AsyncIterator[Chunk]
) -> AsyncIterator[Chunk]:
    """A worker's stream, counted as in flight while it runs; its stats say whether this
    request loaded the model, and how long the load took."""
    worker.in_flight += 1
    try:
        async for chunk in chunks:
            if chunk.stats is not None:
                chunk.stats.reloaded = loaded_now
                chunk.stats.load_ms = worker.load_ms if loaded_now else None
            yield chunk
    finally:
        worker.in_flight -= 1
        worker.last_used = time.monotonic()


def settings_diff(old: LoadSettings, new: LoadSettings) -> str:
    a, b = old.as_dict(), new.as_dict()
    return ", ".join(
        f"{k} {a.get(k)}→{b.get(k)}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)
    )
