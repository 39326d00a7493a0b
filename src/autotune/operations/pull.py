"""One way to pull a model, for ``autotune pull``, ``POST /api/pull`` and the chat's ``/pull``.

The engine is chosen once, the same way everywhere: an engine in use that pulls its own
models (Ollama) pulls it; else, for the embedded engine, a GGUF comes from the Hugging Face
hub (:mod:`autotune.backends.hub`), its fit for this machine judged before any byte. A pull
takes its turn in the admission line like a chat (a 429 when the line is full) but does not
hold a running place while bytes arrive (a download is not engine compute, and must not
stall every chat for its length); it leaves one telemetry record (source ``pull``). Once it
succeeds the engines' model lists are refreshed, so the model answers to its name at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from autotune.backends.hub import Hub, PullPlan, judge
from autotune.ground.errors import NotSupported
from autotune.ground.types import PullProgress
from autotune.hardware.profile import effective_budget
from autotune.pipeline.admitted import admitted
from autotune.runtime import Runtime

__all__ = ["Pull", "PullPlan", "prepare_pull"]

#: What :attr:`Pull.engine` says when the Hugging Face hub pulls for the embedded engine.
HUB = "hub"


@dataclass
class Pull:
    """A pull about to start: who pulls, and (from the hub) the files and their fit."""

    runtime: Runtime
    name: str
    #: The engine that pulls: an engine's name (``ollama``), or ``hub``.
    engine: str
    #: The hub's plan (files, sizes, fit verdict); None when an engine pulls its own.
    plan: PullPlan | None
    _start: Callable[[], AsyncIterator[PullProgress]]
    _hub: Hub | None = None

    def check(self, *, force: bool = False) -> None:
        """Raise the 400 a download that will not fit is (unless ``force``)."""
        if self.plan is not None:
            judge(self.plan, force=force)

    async def steps(self) -> AsyncIterator[PullProgress]:
        """The download's progress, ending with ``success`` once the model answers to its name
        (the caller has called :meth:`check`)."""
        pipeline = self.runtime.pipeline
        async with admitted(pipeline, "pull", self.name, self.engine, admit="turn"):
            async for step in self._start():
                if step.status == "success":
                    await self.runtime.backends.refresh(self.name)
                yield step

    def local_paths(self) -> list[Path]:
        """Where the hub's files are once pulled (nothing for an engine's own pull)."""
        if self._hub is None or self.plan is None:
            return []
        return self._hub.local_paths(self.plan)


async def prepare_pull(runtime: Runtime, name: str) -> Pull:
    """Choose who pulls ``name`` and, from the hub, plan the files (a name the hub does not
    have is a 404 here, before anything downloads)."""
    backends = runtime.backends
    puller = next((b for b in backends.backends.values() if b.capabilities.pull), None)
    if puller is not None:
        return Pull(runtime, name, puller.name, None, lambda: puller.pull(name))
    if "embedded" not in backends.backends:
        raise NotSupported(
            "No engine in use here can pull models: Ollama pulls its own, and autotune pulls "
            "GGUF files for its embedded engine (AUTOTUNE_BACKEND=embedded)."
        )
    settings = runtime.settings
    hub = Hub(token=settings.hf_token)
    budget = effective_budget(runtime.hardware, settings.memory_budget)
    plan = await hub.plan(name, budget_bytes=budget)
    return Pull(runtime, name, HUB, plan, lambda: _with_manifest(hub.pull(plan)), hub)


async def _with_manifest(steps: AsyncIterator[PullProgress]) -> AsyncIterator[PullProgress]:
    yield PullProgress("pulling manifest")
    async for step in steps:
        yield step
