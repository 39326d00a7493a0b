"""Load-time settings measured on this machine: what was tried, what it measured, what won."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Candidate", "Trial", "TunedSettings"]


@dataclass(frozen=True)
class TunedSettings:
    """Load-time settings measured best on this machine by ``autotune tune``."""

    n_batch: int | None = None
    n_ubatch: int | None = None
    n_threads: int | None = None
    flash_attn: bool | None = None
    cache_type: str | None = None
    source: str = "autotune tune"


@dataclass(frozen=True)
class Candidate:
    """One set of load-time settings to measure (None = the engine's default)."""

    n_threads: int | None = None
    n_batch: int | None = None
    n_ubatch: int | None = None
    flash_attn: bool | None = None
    cache_type: str = "f16"

    def label(self) -> str:
        fa = {None: "auto", True: "on", False: "off"}[self.flash_attn]
        return (
            f"threads={self.n_threads or 'default'} batch={self.n_batch or 2048}/"
            f"{self.n_ubatch or 512} flash={fa} kv={self.cache_type}"
        )


@dataclass
class Trial:
    """A candidate and what it measured."""

    candidate: Candidate
    prefill_tps: float | None = None
    decode_tps: float | None = None
    rss_bytes: int | None = None
    seconds: float = 0.0
    error: str | None = None
    samples: list[dict[str, float]] = field(default_factory=list)
