"""Small helpers the backend tests share."""

from __future__ import annotations

from autotune.backends.base import Backend
from autotune.ground.types import ChatRequest, Chunk

__all__ = ["collect", "has_null"]


async def collect(backend: Backend, request: ChatRequest) -> list[Chunk]:
    """Every chunk of one streamed chat."""
    return [chunk async for chunk in backend.stream_chat(request)]


def has_null(value: object) -> bool:
    """True when a JSON-like value holds a None anywhere (autotune never sends nulls)."""
    if value is None:
        return True
    if isinstance(value, dict):
        return any(has_null(v) for v in value.values())
    if isinstance(value, list):
        return any(has_null(v) for v in value)
    return False
