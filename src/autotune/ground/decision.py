"""A choice and its reason, as data: every decision autotune makes explains itself this way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Decision"]


@dataclass(frozen=True)
class Decision:
    """One choice and why it was made."""

    key: str
    value: Any
    reason: str
