"""What autotune knows about engine slots and saved KV files: the data its KV decisions read."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["KvFile", "KvIdentity", "SlotLayout", "SlotView"]


@dataclass(frozen=True)
class KvIdentity:
    """What must match for a saved slot to be restored: anything else is never loaded."""

    #: The model file: its path, size and modification time (hashed; no multi-GB digest).
    model_file: str
    cache_type_k: str
    cache_type_v: str
    n_parallel: int

    @property
    def key(self) -> str:
        text = f"{self.model_file}|{self.cache_type_k}|{self.cache_type_v}|{self.n_parallel}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SlotView:
    """One engine slot as autotune last left it."""

    id: int
    #: The conversation whose KV it holds (None: nothing autotune knows of).
    conversation: str | None = None
    #: Tokens it holds (prompt and reply of the last turn).
    tokens: int = 0
    #: Tokens of that conversation already in its file on disk (0: none).
    saved: int = 0
    busy: bool = False
    last_used: float = 0.0


@dataclass(frozen=True)
class KvFile:
    """A saved slot on disk."""

    conversation: str
    identity: str
    filename: str
    tokens: int
    size: int
    last_used: float


@dataclass(frozen=True)
class SlotLayout:
    """The slots of a loaded model, as the engine serving it has them."""

    #: Changes on every load: slot contents do not survive a reload or a restart.
    generation: int
    n_parallel: int
    #: Tokens one slot holds.
    n_ctx: int
    identity: KvIdentity
    #: Bytes of llama.cpp's host-RAM prompt cache (``--cache-ram``); 0: none.
    ram_cache_bytes: int = 0
