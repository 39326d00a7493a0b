"""What telemetry keeps about one request: timings, tokens, memory, the plan. Never prompt text."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["RunRecord"]


@dataclass
class RunRecord:
    """What telemetry keeps about one request. Never the prompt text."""

    id: str
    model: str
    backend: str
    profile: str
    source: str
    plan: str = ""
    decisions: list[dict[str, Any]] = field(default_factory=list)
    conversation_id: str | None = None
    status: str = "ok"
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    queue_ms: float | None = None
    ttft_ms: float | None = None
    total_ms: float | None = None
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None
    prompt_ms: float | None = None
    decode_ms: float | None = None
    load_ms: float | None = None
    tokens_per_s: float | None = None
    reloaded: bool | None = None
    n_ctx: int | None = None
    ram_before: int | None = None
    ram_after: int | None = None
    ram_peak_fraction: float | None = None
    swap_delta: int | None = None
    gpu_memory_peak: int | None = None
    #: Speculative decoding: tokens drafted and how many of them the model accepted.
    draft_tokens: int | None = None
    draft_accepted: int | None = None
    engine_timings: dict[str, Any] = field(default_factory=dict)
    #: What happened to the conversation's KV cache: hit | restored | saved | miss (engines
    #: with slots; "hit"/"restored" only when the engine's cached-token count shows it).
    kv: str | None = None
    #: Bytes of KV files written for this request (a slot saved before it changed hands).
    kv_bytes: int | None = None

    @property
    def acceptance(self) -> float | None:
        """The share of drafted tokens accepted (None when nothing was drafted)."""
        if not self.draft_tokens or self.draft_accepted is None:
            return None
        return self.draft_accepted / self.draft_tokens

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
