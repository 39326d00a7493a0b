"""Load-time settings measured on this machine: what was tried, what it measured, what won."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Candidate", "SpecCandidate", "SpecChoice", "SpecTrial", "Trial", "TunedSettings"]


@dataclass(frozen=True)
class TunedSettings:
    """Load-time settings measured best on this machine by ``autotune tune``."""

    n_batch: int | None = None
    n_ubatch: int | None = None
    n_threads: int | None = None
    flash_attn: bool | None = None
    cache_type: str | None = None
    source: str = "autotune tune"
    #: Speculative decoding measured here: a mode of ``SPECULATIVE_MODES``; "none" when it was
    #: measured and does not pay; None when it was never measured (today's behaviour).
    speculative: str | None = None
    draft_path: str | None = None
    #: Its measured decode-speed gain over no speculation (0.5 = 1.5×), on work that copies its
    #: input (edits, quotes) and on free chat.
    spec_copy_gain: float | None = None
    spec_chat_gain: float | None = None


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


@dataclass(frozen=True)
class SpecCandidate:
    """One speculative decoding mode to measure; a draft model is named and located."""

    mode: str
    draft: str | None = None
    draft_path: str | None = None

    def label(self) -> str:
        return f"draft model {self.draft}" if self.mode == "draft" else self.mode


@dataclass
class SpecTrial:
    """A mode measured against no speculation, with requests interleaved on both engines.

    Speeds are medians of the engine's own decode tok/s; the ``base_*`` figures come from the
    engine without speculation, asked the same prompts in the same minutes. Gains are the
    median of each prompt's speed ratio (the two answers to one prompt run back to back, so
    a machine that slows down between prompts moves both sides of a ratio alike).
    """

    candidate: SpecCandidate
    copy_tps: float | None = None
    chat_tps: float | None = None
    base_copy_tps: float | None = None
    base_chat_tps: float | None = None
    copy_gain: float | None = None
    chat_gain: float | None = None
    #: Median time to the first token (wall clock, prompt not cached) on each engine.
    first_token_ms: float | None = None
    base_first_token_ms: float | None = None
    drafted: int = 0
    accepted: int = 0
    #: Greedy answers compared, and how many were the same text on both engines.
    answers: int = 0
    same_answers: int = 0
    #: Pairs kept although other processes were busy on every try (a noisy measurement).
    disturbed: int = 0
    rss_bytes: int | None = None
    base_rss_bytes: int | None = None
    seconds: float = 0.0
    error: str | None = None
    samples: list[dict[str, float | str]] = field(default_factory=list)

    @property
    def acceptance(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None


@dataclass(frozen=True)
class SpecChoice:
    """The speculative mode chosen from measurements, with its gains and the reason."""

    mode: str
    reason: str
    draft: str | None = None
    draft_path: str | None = None
    copy_gain: float | None = None
    chat_gain: float | None = None
    acceptance: float | None = None
