"""What autotune knows about each engine's models, in one cache with one freshness policy.

The policy, in full:

* **Facts autotune causes** — the settings it loaded a model with (the *sticky* settings),
  the process priority it set — are kept until autotune changes them. Where the engine can
  say what it holds (the embedded engine's ``loaded_settings``), its word wins.
* **Facts of a model file** — its metadata — are kept for the life of the process.
* **Facts only the engine knows** — whether a model is resident, the context it holds — are
  trusted for :data:`OBSERVED_TTL` seconds: an engine round trip per request costs more than
  it tells.
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from autotune.backends.base import Backend
from autotune.ground.errors import BackendError, NotSupported
from autotune.ground.types import LoadSettings, ModelMeta, RunningModel

__all__ = ["OBSERVED_TTL", "EngineState", "Observed"]

#: Seconds an observation of the engine (resident? which context?) is trusted.
OBSERVED_TTL = 2.0
#: (engine, model) pairs remembered; the least recently used are forgotten first.
_MAX_ENTRIES = 512


@dataclass(frozen=True)
class Observed:
    """What the engine says it holds for a model right now."""

    #: The model is resident; None when the engine cannot tell.
    loaded: bool | None
    #: The context the engine holds for it (engines that size their own), if reported.
    context_length: int | None = None


@dataclass
class _Entry:
    meta: ModelMeta | None = None
    meta_known: bool = False
    chosen: LoadSettings | None = None
    priority: int | None = None
    observed: Observed | None = None
    observed_at: float = float("-inf")


class EngineState:
    """Per (engine, model): metadata, the sticky load settings, priority and observations."""

    def __init__(
        self, ttl: float = OBSERVED_TTL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()

    def _entry(self, backend: Backend, model: str) -> _Entry:
        key = (backend.name, model)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
            while len(self._entries) > _MAX_ENTRIES:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return entry

    # -- facts of the model file

    async def meta(self, backend: Backend, model: str) -> ModelMeta | None:
        entry = self._entry(backend, model)
        if not entry.meta_known:
            try:
                entry.meta = await backend.model_meta(model)
            except NotSupported:
                entry.meta = None
            entry.meta_known = True
        return entry.meta

    # -- facts autotune causes

    def current(self, backend: Backend, model: str) -> LoadSettings | None:
        """The sticky settings: what the model is loaded with, or was last loaded with."""
        with contextlib.suppress(NotSupported):
            loaded = backend.loaded_settings(model)
            if loaded is not None:
                return loaded
        return self._entry(backend, model).chosen

    def remember_load(self, backend: Backend, model: str, settings: LoadSettings) -> None:
        """Settings a request is about to load with: sticky from this moment, whether or not
        the request then succeeds (the engine holds them either way)."""
        entry = self._entry(backend, model)
        entry.chosen = settings
        entry.observed = None  # what the engine holds is about to change

    def priority(self, backend: Backend, model: str) -> int | None:
        return self._entry(backend, model).priority

    def remember_priority(self, backend: Backend, model: str, nice: int | None) -> None:
        self._entry(backend, model).priority = nice

    # -- facts only the engine knows

    async def loaded(self, backend: Backend, model: str, current: LoadSettings | None) -> bool:
        """Whether ``model`` is resident with ``current`` (assumed so when nobody can tell,
        so a plan never forces a change it cannot see the need for)."""
        if current is None:
            return False
        try:
            return backend.loaded_settings(model) == current  # the engine autotune loads
        except NotSupported:
            pass
        seen = await self.observe(backend, model)
        return seen.loaded is not False

    async def observe(self, backend: Backend, model: str) -> Observed:
        """The engine's running-model listing for ``model``, at most :data:`OBSERVED_TTL` old."""
        entry = self._entry(backend, model)
        now = self._clock()
        if entry.observed is not None and now - entry.observed_at < self.ttl:
            return entry.observed
        observed = Observed(loaded=None)
        if backend.capabilities.running_models:
            with contextlib.suppress(BackendError):
                observed = _find(await backend.running_models(), model)
        entry.observed, entry.observed_at = observed, now
        return observed


def _find(running: list[RunningModel], model: str) -> Observed:
    for r in running:
        if r.name == model:
            return Observed(loaded=True, context_length=r.context_length)
    return Observed(loaded=False)
