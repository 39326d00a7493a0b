"""What ``autotune tune`` measures: a model on an engine that lets autotune choose its
load-time settings, and the draft models that may speed it up (same vocabulary, at most half
its size), found through the engines in use."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from autotune.backends.base import Backend
from autotune.ground.errors import BackendError, InvalidRequest, NotSupported
from autotune.ground.tuned import SpecCandidate
from autotune.ground.types import ModelMeta
from autotune.models.gguf import GGUFError, Vocabulary, read_vocabulary, vocabulary_mismatch
from autotune.runtime import Runtime

__all__ = ["TuneTarget", "tune_target"]


@dataclass(frozen=True)
class TuneTarget:
    """The model to measure, on its engine, and the draft models to measure with it."""

    engine: str
    name: str
    meta: ModelMeta
    drafts: list[SpecCandidate] = field(default_factory=list)


async def tune_target(
    runtime: Runtime, model: str, *, draft: str | None = None, speculation: bool = True
) -> TuneTarget:
    """``model`` resolved to an engine whose load settings autotune controls (NotSupported
    otherwise), with its drafts when speculation is measured (the one named, or every model
    on disk with the same vocabulary and at most half the size)."""
    backend, name = await runtime.backends.resolve(model)
    caps = backend.capabilities
    if not (caps.load_control and caps.kv_cache_type):
        raise NotSupported(
            f"{backend.name} does not let autotune choose load-time settings, so there is "
            "nothing to sweep.",
            hint="Tuning runs on the embedded engine (--backend embedded).",
        )
    meta = await backend.model_meta(name)
    drafts: list[SpecCandidate] = []
    if speculation and meta.path is not None:
        drafts = await _drafts(runtime, backend, meta, draft)
    return TuneTarget(backend.name, name, meta, drafts)


async def _drafts(
    runtime: Runtime, backend: Backend, meta: ModelMeta, named: str | None
) -> list[SpecCandidate]:
    assert meta.path is not None
    target = await asyncio.to_thread(read_vocabulary, meta.path)
    if named is not None:
        return [await _named_draft(runtime, backend, meta, target, named)]
    found = []
    for entry in await backend.list_models():
        if entry.name == meta.name or not entry.path or entry.path == meta.path:
            continue
        try:
            other = await backend.model_meta(entry.name)
            vocabulary = await asyncio.to_thread(read_vocabulary, entry.path)
        except (BackendError, GGUFError):
            continue
        size, target_size = other.size_bytes or 0, meta.size_bytes or 0
        small = 0 < size * 2 <= target_size
        if small and vocabulary_mismatch(target, vocabulary) is None:
            found.append(SpecCandidate("draft", entry.name, entry.path))
    return found


async def _named_draft(
    runtime: Runtime, backend: Backend, meta: ModelMeta, target: Vocabulary, named: str
) -> SpecCandidate:
    """The draft the user named, refused unless it shares the target's vocabulary."""
    draft_backend, draft_name = await runtime.backends.resolve(named)
    draft = await draft_backend.model_meta(draft_name)
    if draft_backend is not backend or draft.path is None:
        raise InvalidRequest(
            f"{draft_name} is not a model file the embedded engine can load as a draft.",
            param="draft",
        )
    why = vocabulary_mismatch(target, await asyncio.to_thread(read_vocabulary, draft.path))
    if why is not None:
        raise InvalidRequest(
            f"{draft_name} cannot draft for {meta.name}: {why}. A draft model must share the "
            "target's tokenizer, e.g. a small model of the same family.",
            param="draft",
        )
    return SpecCandidate("draft", draft_name, draft.path)
