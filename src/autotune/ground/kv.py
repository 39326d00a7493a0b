"""What autotune knows about engine slots and saved KV files: the data its KV decisions read.

A prompt is known by its *token chain*: one hash per block of :data:`BLOCK` tokens, each hash
covering its block and every block before it (as vLLM's prefix caching does). Two prompts
share their first ``n`` blocks exactly when their chains share the first ``n`` hashes, so a
saved KV file, a slot or llama.cpp's host-RAM cache can be matched against a request by what
the prompt holds — whoever sent it, with or without a conversation id.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "BLOCK",
    "KvFile",
    "KvIdentity",
    "Match",
    "SlotLayout",
    "SlotView",
    "TokenChain",
    "chain_of",
]

#: Tokens per block of a chain: what matching counts in. A match is known to a block; the
#: engine's own prefix matching then reuses every token that is the same (the rest of the
#: block included), so a coarser block only blurs decisions, never what the engine reuses.
BLOCK = 64


@dataclass(frozen=True)
class TokenChain:
    """A token sequence as its chained block hashes (a partial last block is not hashed)."""

    hashes: tuple[int, ...]
    #: Tokens in the sequence (the partial last block included).
    tokens: int

    @property
    def blocks(self) -> int:
        return len(self.hashes)

    def common(self, other: TokenChain | None) -> int:
        """Leading blocks the two sequences share. Hashes are chained: the first that
        differs ends the shared prefix, so a binary search finds it."""
        if other is None:
            return 0
        low, high = 0, min(self.blocks, other.blocks)
        while low < high:
            mid = (low + high + 1) // 2
            if self.hashes[mid - 1] == other.hashes[mid - 1]:
                low = mid
            else:
                high = mid - 1
        return low


def chain_of(tokens: Sequence[int]) -> TokenChain:
    """The chain of a token sequence (8-byte BLAKE2b per block, each seeded by the last)."""
    data = array("i", tokens).tobytes()
    step = BLOCK * 4
    hashes = []
    previous = b""
    for start in range(0, len(data) - step + 1, step):
        previous = hashlib.blake2b(previous + data[start : start + step], digest_size=8).digest()
        hashes.append(int.from_bytes(previous, "little", signed=True))
    return TokenChain(tuple(hashes), len(tokens))


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
    #: What it holds, as the chain of its last prompt (None: nothing autotune knows of).
    chain: TokenChain | None = None
    #: Tokens it holds (prompt and reply of the last request).
    tokens: int = 0
    #: Tokens of its last prompt (the rest of ``tokens`` is that request's reply).
    prompt_tokens: int = 0
    #: Tokens of what it holds that a file on disk holds too (0: none).
    saved: int = 0
    busy: bool = False
    last_used: float = 0.0
    #: The conversation id its last request named, if any (a hint, never needed).
    conversation: str | None = None
    #: What its prompt starts with, for listings.
    preview: str = ""


@dataclass(frozen=True)
class KvFile:
    """A saved slot on disk, known by the tokens it holds."""

    filename: str
    identity: str
    #: Tokens the file holds (its prompt and the reply generated after it).
    tokens: int
    #: Tokens of the prompt it was saved after: a newer file holding all of them makes it
    #: redundant (what comes after is its own reply as generated).
    prompt_tokens: int
    size: int
    last_used: float = 0.0
    #: The conversation it was saved from, when the client named one.
    conversation: str | None = None


@dataclass(frozen=True)
class Match:
    """A saved file that starts the way a prompt does, and how many blocks they share."""

    file: KvFile
    blocks: int


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
