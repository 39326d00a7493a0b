"""The seam every engine hangs on: what a backend can do, the data it returns, and its errors.

A backend declares its :class:`Capabilities`; the planner reads those and never a backend's
name. Chat streams are OpenAI ``chat.completion.chunk`` dicts, so the server can pass an
engine's fields through faithfully; the last chunk carries the engine's own timings as
:class:`EngineStats`.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Backend",
    "BackendError",
    "Capabilities",
    "ChatRequest",
    "Chunk",
    "EngineEvent",
    "EngineStats",
    "EngineUnavailable",
    "InsufficientMemory",
    "InvalidRequest",
    "LoadSettings",
    "ModelEntry",
    "ModelLoadError",
    "ModelMeta",
    "ModelNotFound",
    "NotSupported",
    "PullProgress",
    "RunningModel",
    "UnsupportedOption",
    "UpstreamError",
    "error_summary",
]


# --------------------------------------------------------------------------- errors


class BackendError(Exception):
    """An engine problem a user can act on; ``status`` is the HTTP status the API answers with."""

    status: int = 502
    code: str = "upstream_error"
    error_type: str = "api_error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class EngineUnavailable(BackendError):
    """The engine does not answer; the message names it, its URL and how to start it."""

    status = 503
    code = "engine_unavailable"


class ModelNotFound(BackendError):
    """No backend knows this model; ``suggestions`` holds the closest known names."""

    status = 404
    code = "model_not_found"
    error_type = "invalid_request_error"

    def __init__(self, model: str, suggestions: list[str] | None = None) -> None:
        self.model = model
        self.suggestions = list(suggestions or [])
        hint = f"Did you mean: {', '.join(self.suggestions)}?" if self.suggestions else None
        super().__init__(f"Unknown model {model!r}.", hint=hint)


class UnsupportedOption(BackendError):
    """The request asks for something this engine cannot honour; named, never dropped silently."""

    status = 400
    code = "unsupported_parameter"
    error_type = "invalid_request_error"

    def __init__(self, param: str, engine: str, why: str = "") -> None:
        self.param = param
        super().__init__(f"{engine} cannot honour {param!r}{': ' + why if why else '.'}")


class InvalidRequest(BackendError):
    """The request itself is wrong (a bad field, an unknown profile); ``param`` names the field."""

    status = 400
    code = "invalid_request"
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelLoadError(BackendError):
    """The engine could not load a model file (broken, truncated, or unsupported architecture)."""

    status = 500
    code = "model_load_failed"


class InsufficientMemory(BackendError):
    """Loading would exceed the memory budget; the message says what would fit."""

    status = 503
    code = "insufficient_memory"


class NotSupported(BackendError):
    """The backend lacks this capability (for example tokenize or pull)."""

    status = 501
    code = "not_supported"


class UpstreamError(BackendError):
    """The engine answered with an error; its status (4xx) and message are passed on."""

    def __init__(self, status: int, message: str, engine: str) -> None:
        self.status = status if 400 <= status < 600 else 502
        self.error_type = "invalid_request_error" if 400 <= status < 500 else "api_error"
        super().__init__(f"{engine}: {message}")


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Capabilities:
    """What an engine lets autotune do; the planner reads these flags, never a backend's name."""

    #: A context size can be sent with each request (Ollama ``num_ctx``).
    per_request_context: bool = False
    #: Changing the context size or batch reloads the model and drops its prompt cache.
    context_change_reloads: bool = True
    #: autotune performs the load and chooses load-time settings (embedded, LM Studio load API).
    load_control: bool = False
    #: KV cache type and flash attention can be chosen by autotune at load time.
    kv_cache_type: bool = False
    flash_attention: bool = False
    #: Load-time settings live in the engine's environment (Ollama): autotune can only advise.
    env_load_settings: bool = False
    #: The engine reuses an identical prompt prefix automatically.
    prefix_cache: bool = True
    #: Responses report how many prompt tokens came from the cache.
    reports_cached_tokens: bool = False
    tokenize: bool = False
    embeddings: bool = False
    running_models: bool = False
    keep_alive: bool = False
    pull: bool = False
    unload: bool = False
    tools: bool = True
    #: The engine runs on another machine: no local memory planning applies.
    remote: bool = False
    #: The backend reports its own load/reload/unload events through ``on_event``.
    engine_events: bool = False
    #: Requests the engine(s) behind this backend can run at once (a router: one per upstream).
    concurrency: int = 1


@dataclass
class ModelMeta:
    """Architecture facts that drive memory estimates (from GGUF or the engine's model info)."""

    name: str
    architecture: str | None = None
    parameter_count: int | None = None
    block_count: int | None = None
    head_count: int | None = None
    #: One number for all layers, or one per layer (0 for layers without attention).
    head_count_kv: int | list[int] | None = None
    embedding_length: int | None = None
    key_length: int | None = None
    value_length: int | None = None
    sliding_window: int | None = None
    #: Per layer, True where the layer uses the sliding window (None: unknown or no SWA).
    swa_layers: list[bool] | None = None
    context_length: int | None = None
    vocab_size: int | None = None
    expert_count: int | None = None
    expert_used_count: int | None = None
    quantization: str | None = None
    size_bytes: int | None = None
    path: str | None = None
    family: str | None = None


@dataclass
class ModelEntry:
    """One model a backend can serve."""

    name: str
    backend: str
    size_bytes: int | None = None
    quantization: str | None = None
    parameter_size: str | None = None
    family: str | None = None
    path: str | None = None
    modified_at: str | None = None
    meta: ModelMeta | None = None


@dataclass
class RunningModel:
    """A model resident in an engine's memory."""

    name: str
    backend: str
    size_bytes: int | None = None
    vram_bytes: int | None = None
    context_length: int | None = None
    quantization: str | None = None
    loaded_at: float | None = None  # unix seconds
    expires_at: float | None = None  # unix seconds; None = never
    loads: int | None = None  # how many times autotune loaded it (embedded engine)
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoadSettings:
    """Load-time settings a plan chooses; ``None`` leaves the engine's default."""

    n_ctx: int
    n_batch: int | None = None
    n_ubatch: int | None = None
    flash_attn: bool | None = None  # None = engine decides ("auto")
    cache_type_k: str | None = None  # f16 | q8_0 | q4_0
    cache_type_v: str | None = None
    n_threads: int | None = None
    n_parallel: int = 1
    #: Host-RAM prompt cache of llama-server (``--cache-ram``, default 8192 MiB); 0 disables.
    cache_ram_mib: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class ChatRequest:
    """One chat turn for an engine. ``params`` holds OpenAI fields to forward, never ``None``s."""

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = field(default_factory=dict)
    load: LoadSettings | None = None
    keep_alive: float | None = None  # seconds; negative = forever; None = engine default
    #: The conversation this turn belongs to, when known (a router keeps it on one engine).
    conversation_id: str | None = None


@dataclass
class EngineStats:
    """The engine's own counters for one request, in milliseconds and tokens."""

    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    prompt_ms: float | None = None
    completion_tokens: int | None = None
    decode_ms: float | None = None
    load_ms: float | None = None
    total_ms: float | None = None
    #: The engine (re)loaded the model for this request.
    reloaded: bool | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    @property
    def decode_tps(self) -> float | None:
        if self.completion_tokens and self.decode_ms:
            return self.completion_tokens / (self.decode_ms / 1000)
        return None


@dataclass
class EngineEvent:
    """Something notable an engine did: ``load``, ``reload``, ``unload``, ``unexpected_unload``."""

    kind: str
    model: str
    detail: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)


@dataclass
class Chunk:
    """One OpenAI ``chat.completion.chunk`` dict; the last one also carries ``stats``."""

    data: dict[str, Any]
    stats: EngineStats | None = None


@dataclass
class PullProgress:
    """A step of a model download."""

    status: str
    completed: int | None = None
    total: int | None = None


# --------------------------------------------------------------------------- interface


class Backend(ABC):
    """One engine. Subclasses set ``name``, ``base_url``, ``capabilities`` and ``start_hint``."""

    name: str = "backend"
    base_url: str = ""
    capabilities: Capabilities = Capabilities()
    #: One sentence on how to start this engine, used in "engine unavailable" errors.
    start_hint: str = ""
    #: Called with every :class:`EngineEvent` the backend notices (telemetry subscribes).
    on_event: Callable[[EngineEvent], None] | None = None

    @abstractmethod
    async def health(self) -> bool:
        """True when the engine answers."""

    @abstractmethod
    async def list_models(self) -> list[ModelEntry]:
        """Every model this engine can serve."""

    @abstractmethod
    def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        """Stream OpenAI chunks; raise :class:`BackendError` before the first one on failure."""

    async def running_models(self) -> list[RunningModel]:
        raise NotSupported(f"{self.name} cannot list running models.")

    async def model_meta(self, model: str) -> ModelMeta:
        raise NotSupported(f"{self.name} cannot describe models.")

    async def tokenize(self, model: str, text: str) -> list[int]:
        raise NotSupported(f"{self.name} has no tokenizer endpoint.")

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        raise NotSupported(f"{self.name} has no embeddings endpoint.")

    async def load(self, model: str, settings: LoadSettings | None = None) -> None:
        raise NotSupported(f"{self.name} does not let autotune load models.")

    async def unload(self, model: str) -> None:
        raise NotSupported(f"{self.name} does not let autotune unload models.")

    def pull(self, model: str) -> AsyncIterator[PullProgress]:
        raise NotSupported(f"{self.name} cannot pull models.")

    def loaded_settings(self, model: str) -> LoadSettings | None:
        """The settings ``model`` is loaded with now (None: not loaded), where autotune loads."""
        raise NotSupported(f"{self.name} does not report its load settings.")

    def reclaimable_bytes(self, model: str) -> int:
        """Memory this engine would free by unloading idle models other than ``model``."""
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


def error_summary(exc: BaseException) -> str:
    """What telemetry keeps of an error: autotune's own message, but never an engine's words,
    which can quote the prompt or the output (vLLM validation errors echo ``input_value``)."""
    if isinstance(exc, UpstreamError):
        return f"{type(exc).__name__}: HTTP {exc.status} from the engine ({exc.code})"
    if isinstance(exc, BackendError):
        return f"{type(exc).__name__}: {exc.message}"[:300]
    return type(exc).__name__
