"""The seam every engine hangs on: the :class:`Backend` interface.

A backend declares its :class:`~autotune.ground.types.Capabilities`; the planner reads
those and never a backend's name. The data it returns and the errors it raises live in
:mod:`autotune.ground`, so every layer can use them without importing an engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from autotune.ground.errors import EngineUnavailable, NotSupported
from autotune.ground.kv import SlotLayout
from autotune.ground.types import (
    Capabilities,
    ChatRequest,
    Chunk,
    CompletionRequest,
    EngineEvent,
    LoadSettings,
    ModelEntry,
    ModelMeta,
    PullProgress,
    RunningModel,
)

__all__ = ["Backend"]


class Backend(ABC):
    """One engine. Subclasses set ``name``, ``base_url``, ``capabilities`` and ``start_hint``."""

    name: str = "backend"
    base_url: str = ""
    capabilities: Capabilities = Capabilities()
    #: One sentence on how to start this engine, used in "engine unavailable" errors.
    start_hint: str = ""
    #: Called with every :class:`EngineEvent` the backend notices (telemetry subscribes).
    on_event: Callable[[EngineEvent], None] | None = None
    #: Called with ``capabilities.concurrency`` when it changes after start-up (a router that
    #: has read its upstreams' slots); the runtime resizes the admission queue to it.
    on_capacity: Callable[[int], None] | None = None
    #: Awaited with a model's name before the engine drops its KV (an unload, a reload, a
    #: shutdown), so its slots can be saved first (the KV manager subscribes).
    before_unload: Callable[[str], Awaitable[None]] | None = None

    @abstractmethod
    async def health(self) -> bool:
        """True when the engine answers."""

    @abstractmethod
    async def list_models(self) -> list[ModelEntry]:
        """Every model this engine can serve."""

    @abstractmethod
    def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Stream OpenAI chunks; raise :class:`BackendError` before the first one on failure."""

    def stream_completion(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        """Stream OpenAI ``text_completion`` chunks (fill-in-the-middle when ``suffix`` is set);
        the last carries the engine's stats. Raise :class:`BackendError` before the first."""
        raise NotSupported(f"{self.name} has no text completions endpoint.")

    async def running_models(self) -> list[RunningModel]:
        raise NotSupported(f"{self.name} cannot list running models.")

    async def model_meta(self, model: str) -> ModelMeta:
        raise NotSupported(f"{self.name} cannot describe models.")

    async def tokenize(self, model: str, text: str) -> list[int]:
        raise NotSupported(f"{self.name} has no tokenizer endpoint.")

    async def tokenize_prompt(self, request: ChatRequest, raw: str | None = None) -> list[int]:
        """The tokens the engine reads for ``request``: its messages (and tools) through the
        model's chat template, or ``raw``, a completion's prompt, as it is."""
        raise NotSupported(f"{self.name} cannot show a prompt's tokens.")

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        raise NotSupported(f"{self.name} has no embeddings endpoint.")

    async def load(self, model: str, settings: LoadSettings | None = None) -> bool:
        """Load ``model`` (with ``settings``, where autotune chooses them); True when this
        call started a load, False when the model was already loaded that way."""
        raise NotSupported(f"{self.name} does not let autotune load models.")

    async def unload(self, model: str) -> None:
        raise NotSupported(f"{self.name} does not let autotune unload models.")

    async def preload(self, model: str, settings: LoadSettings) -> bool:
        """Load ``model`` with ``settings`` only if it fits beside what is loaded, unloading
        nothing (a warm start); True when it loaded. Engines autotune does not load: False."""
        return False

    def pull(self, model: str) -> AsyncIterator[PullProgress]:
        raise NotSupported(f"{self.name} cannot pull models.")

    def loaded_settings(self, model: str) -> LoadSettings | None:
        """The settings ``model`` is loaded with now (None: not loaded), where autotune loads."""
        raise NotSupported(f"{self.name} does not report its load settings.")

    def slot_layout(self, model: str) -> SlotLayout | None:
        """The slots of ``model`` as loaded now (None: not loaded, or no slot control)."""
        return None

    async def slot_action(
        self, model: str, slot: int, action: str, filename: str
    ) -> dict[str, Any]:
        """``save`` or ``restore`` slot ``slot`` of ``model`` to or from ``filename`` in the
        engine's KV folder; the engine's reply (``n_saved``/``n_restored``, bytes, timings)."""
        raise NotSupported(f"{self.name} cannot save or restore slots.")

    def reclaimable_bytes(self, model: str) -> int:
        """Memory this engine would free by unloading idle models other than ``model``."""
        return 0

    def resident_bytes(self, *, exclude: str | None = None) -> int:
        """Memory held by the models this backend loaded (but ``exclude``), as its estimates
        count it; 0 when autotune does not perform the loads."""
        return 0

    def upstream_states(self) -> list[dict[str, Any]] | None:
        """The engines behind this backend and their state (a router); None for one engine."""
        return None

    async def set_priority(self, model: str, nice: int) -> str | None:
        """Set the OS priority of the process serving ``model``; None when it is not ours."""
        return None

    async def aclose(self) -> None:  # noqa: B027 (optional: most backends hold nothing)
        """Release connections and engines."""

    def unavailable(self, detail: str = "") -> EngineUnavailable:
        """The error for "this engine does not answer", naming it and how to start it."""
        where = f" at {self.base_url}" if self.base_url else ""
        extra = f" ({detail})" if detail else ""
        return EngineUnavailable(
            f"{self.name} is not reachable{where}{extra}.", hint=self.start_hint
        )
