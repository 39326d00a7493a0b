"""The data every layer shares about engines: capabilities, models, load settings, requests, chunks.

Chat streams are OpenAI ``chat.completion.chunk`` dicts, so a face can pass an engine's
fields through faithfully; the last chunk carries the engine's own timings as
:class:`EngineStats`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SPECULATIVE_MODES",
    "Capabilities",
    "ChatRequest",
    "Chunk",
    "CompletionRequest",
    "EngineEvent",
    "EngineStats",
    "LoadSettings",
    "ModelEntry",
    "ModelMeta",
    "PullProgress",
    "RunningModel",
]

#: Speculative decoding modes of llama.cpp (``speculative.types``), as autotune names them:
#: ``none``; five that draft from n-grams of the prompt and earlier output, with no second
#: model; and ``draft``, a small model sharing the target's vocabulary.
SPECULATIVE_MODES = (
    "none",
    "ngram_simple",
    "ngram_map_k",
    "ngram_map_k4v",
    "ngram_mod",
    "ngram_cache",
    "draft",
)


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
    #: Choices (``n``) the engine can answer in one request; None when it sets no known limit.
    max_choices: int | None = None
    #: The engine saves and restores slots' KV to files autotune names (llama.cpp
    #: ``/slots/{id}?action=save|restore``), and requests can be pinned to a slot.
    slots: bool = False
    #: Speculative decoding is a load-time setting autotune can choose (embedded llama.cpp).
    speculative: bool = False


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
    #: Speculative decoding mode (one of :data:`SPECULATIVE_MODES`); None = the engine's
    #: default, which is none. A load-time setting in llama.cpp, like the KV type.
    speculative: str | None = None
    #: The draft model's GGUF file, when ``speculative == "draft"``.
    draft_path: str | None = None

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
class CompletionRequest:
    """One text completion for an engine (``/v1/completions``); with ``suffix``, the model
    fills in the middle between ``prompt`` and ``suffix``. ``params`` as in ChatRequest."""

    model: str
    prompt: str
    suffix: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    load: LoadSettings | None = None
    keep_alive: float | None = None


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
