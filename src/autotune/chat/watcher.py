"""Notices when the chat's model leaves memory unexpectedly, from engine events or by polling."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

from autotune.ground.errors import BackendError
from autotune.ground.types import Capabilities, EngineEvent, RunningModel

__all__ = ["ModelWatcher", "UnloadNotice", "Watched", "notice_from_event", "notice_from_poll"]

#: Seconds between two looks at an engine's running models.
POLL_INTERVAL = 2.0


class Watched(Protocol):
    """What the watcher needs of an engine: its capabilities, its event hook, its list of
    running models."""

    capabilities: Capabilities
    on_event: Callable[[EngineEvent], None] | None

    async def running_models(self) -> list[RunningModel]: ...


@dataclass(frozen=True)
class UnloadNotice:
    """The chat's model is gone from memory; ``message`` is the one line the chat prints."""

    model: str
    engine: str
    message: str


def _same_model(a: str, b: str) -> bool:
    a, b = a.lower(), b.lower()
    return a == b or a == f"{b}:latest" or b == f"{a}:latest"


def notice_from_event(event: EngineEvent, engine: str, model: str) -> UnloadNotice | None:
    """A notice when ``event`` says ``model`` died or was evicted (a requested unload is not)."""
    if not _same_model(event.model, model):
        return None
    if event.kind == "unexpected_unload":
        code = event.detail.get("exit_code")
        why = f"its engine process exited with code {code}" if code is not None else "it crashed"
        return UnloadNotice(
            model,
            engine,
            f"{model} was unloaded unexpectedly ({why}); the next message reloads it.",
        )
    reason = str(event.detail.get("reason", ""))
    if event.kind == "unload" and reason.startswith("making room"):
        return UnloadNotice(
            model, engine, f"{model} was evicted ({reason}); the next message reloads it."
        )
    return None


def notice_from_poll(
    model: str,
    engine: str,
    running: Iterable[str],
    *,
    was_loaded: bool,
    idle_s: float,
    keep_alive: float | None,
) -> tuple[bool, UnloadNotice | None]:
    """(loaded now, a notice if it vanished) from one look at the engine's running models.

    A model that was seen loaded and is gone is unexpected, unless its keep-alive ran out
    (``keep_alive`` ≥ 0 and idle at least that long).
    """
    loaded = any(_same_model(name, model) for name in running)
    if loaded or not was_loaded:
        return loaded, None
    if keep_alive is not None and keep_alive >= 0 and idle_s >= keep_alive:
        return False, None
    return False, UnloadNotice(
        model,
        engine,
        f"{model} is no longer loaded in {engine} (crashed, out of memory or evicted); "
        "the next message reloads it.",
    )


class ModelWatcher:
    """Watches one (engine, model) pair; calls ``notify`` once per unexpected unload.

    Engines that report their own events (the embedded one) are heard through their
    ``on_event`` hook, chained in front of whatever was there (telemetry); others are polled
    through ``running_models()`` every :data:`POLL_INTERVAL` seconds while no reply runs.
    """

    def __init__(
        self,
        backends: Mapping[str, Watched],
        notify: Callable[[UnloadNotice], None],
        *,
        keep_alive: float | None = None,
        interval: float = POLL_INTERVAL,
    ) -> None:
        self.backends = backends
        self.notify = notify
        self.keep_alive = keep_alive
        self.interval = interval
        self.engine: str | None = None
        self.model: str | None = None
        #: A reply is running: polling would mistake a reload for an unload.
        self.busy = False
        #: The model vanished since the last reply: the next message loads it again.
        self.unloaded = False
        self._was_loaded = False
        self._last_used = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        self._hooks: dict[str, Callable[[EngineEvent], None] | None] = {}

    def watch(self, engine: str, model: str) -> None:
        """Follow this model from now on (after a /model switch, for instance)."""
        if (engine, model) != (self.engine, self.model):
            self._was_loaded = False
        self.engine, self.model = engine, model

    def used(self) -> None:
        """A reply just finished: the model is loaded and its idle clock restarts."""
        self._last_used = time.monotonic()
        self._was_loaded = True
        self.unloaded = False

    def start(self) -> None:
        for name, backend in self.backends.items():
            if backend.capabilities.engine_events and name not in self._hooks:
                self._hooks[name] = backend.on_event
                backend.on_event = self._chained(name, backend.on_event)
        if any(
            b.capabilities.running_models and not b.capabilities.engine_events
            for b in self.backends.values()
        ):
            self._task = asyncio.get_running_loop().create_task(self._poll_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for name, previous in self._hooks.items():
            self.backends[name].on_event = previous
        self._hooks.clear()

    def _chained(
        self, engine: str, previous: Callable[[EngineEvent], None] | None
    ) -> Callable[[EngineEvent], None]:
        def on_event(event: EngineEvent) -> None:
            if previous is not None:
                previous(event)  # telemetry first: the watcher never hides an event from it
            if engine == self.engine and self.model is not None:
                notice = notice_from_event(event, engine, self.model)
                if notice is not None:
                    self._fire(notice)

        return on_event

    def _fire(self, notice: UnloadNotice) -> None:
        self._was_loaded = False
        self.unloaded = True
        with contextlib.suppress(Exception):  # a broken screen must not break the engine
            self.notify(notice)

    async def check(self) -> None:
        """One poll of the watched engine (when it lists running models and reports no events)."""
        if self.busy or self.engine is None or self.model is None:
            return
        backend = self.backends.get(self.engine)
        if backend is None or backend.capabilities.engine_events:
            return
        if not backend.capabilities.running_models:
            return
        try:
            running = [m.name for m in await backend.running_models()]
        except BackendError:
            return  # the engine is down: the next message says so
        if self.busy:
            return
        loaded, notice = notice_from_poll(
            self.model,
            self.engine,
            running,
            was_loaded=self._was_loaded,
            idle_s=time.monotonic() - self._last_used,
            keep_alive=self.keep_alive,
        )
        self._was_loaded = loaded
        if notice is not None:
            self._fire(notice)

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            with contextlib.suppress(Exception):
                await self.check()
