"""Loading and unloading a model on request (Ollama's ``keep_alive`` with no messages), and
what the engines autotune knows are doing; an unload goes through admission and telemetry."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from autotune.backends.registry import ENGINE_ORDER, probe_engines
from autotune.ground.config import Settings
from autotune.ground.engines import engine as engine_spec
from autotune.ground.errors import NotSupported
from autotune.pipeline.admitted import admitted
from autotune.runtime import Runtime

__all__ = ["EngineState", "engine_states", "load_ahead", "unload"]


async def unload(runtime: Runtime, model: str) -> str:
    """Unload ``model`` from the engine serving it, once the running requests let it (it
    waits for a place in the admission line); returns the name it unloaded."""
    backend, name = await runtime.backends.resolve(model)
    if not backend.capabilities.unload:
        raise NotSupported(f"The {backend.name} engine does not let autotune unload models.")
    async with admitted(runtime.pipeline, "unload", name, backend.name):
        await backend.unload(name)
    return name


async def load_ahead(runtime: Runtime, model: str) -> str:
    """A load asked for ahead of any message: autotune loads a model at its first message,
    sized for that conversation (a load now would be sized blind and could mean a second
    load), so this only checks the model is there (ModelNotFound: a 404)."""
    _, name = await runtime.backends.resolve(model)
    return name


@dataclass(frozen=True)
class EngineState:
    """One engine autotune knows: where it is, whether it answers, whether it is in use."""

    name: str
    url: str | None
    reachable: bool
    in_use: bool


async def engine_states(settings: Settings, in_use: list[str]) -> list[EngineState]:
    """Every engine autotune looks for, probed now, then the embedded one (reachable when
    its package is installed)."""
    reachable = await probe_engines(settings, ENGINE_ORDER)
    states = []
    for name in ENGINE_ORDER:
        setting = engine_spec(name).url_setting
        url = getattr(settings, setting, None) if setting else None
        states.append(EngineState(name, url, bool(url and reachable.get(name)), name in in_use))
    installed = importlib.util.find_spec("xllamacpp") is not None
    states.append(EngineState("embedded", None, installed, "embedded" in in_use))
    return states
