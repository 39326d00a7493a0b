"""The three tuning profiles: how much context, which sampling default, which KV precision."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PROFILES", "Profile", "get_profile"]


@dataclass(frozen=True)
class Profile:
    """A named trade-off between speed, memory and answer quality."""

    name: str
    #: The largest context this profile will ever load (never above the model's trained context).
    context_cap: int
    #: Filled in only when the client sends no temperature.
    temperature: float
    #: KV cache precision where autotune controls it: q8_0 halves KV memory at a small quality cost.
    kv_cache_type: str
    #: Process niceness for an engine autotune starts (negative needs privileges; 0 = unchanged).
    nice: int
    description: str


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "fast",
            2048,
            0.1,
            "q8_0",
            -5,
            "Smallest context and q8_0 KV: least memory, quickest loads; for short tasks.",
        ),
        Profile(
            "balanced",
            8192,
            0.7,
            "f16",
            0,
            "8k context at full KV precision: the everyday default.",
        ),
        Profile(
            "quality",
            32768,
            0.8,
            "f16",
            0,
            "Up to 32k context at full precision: long documents and conversations.",
        ),
    )
}


def get_profile(name: str) -> Profile:
    """The profile called ``name`` (case-insensitive); ValueError lists the known ones."""
    try:
        return PROFILES[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None
