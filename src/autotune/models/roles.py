"""What a GGUF model is for, from its metadata: an embedding model (it declares a pooling type).

llama.cpp (and Ollama, which lists such models with the "embedding" capability) reads
``<arch>.pooling_type`` to know how to pool token vectors into one: encoder models (BERT,
nomic-bert …) and decoder-based embedding models (Qwen3-Embedding: ``last``) declare it;
chat models do not. Only the header is read (:mod:`autotune.models.gguf_header`, milliseconds),
and the answer is cached per file (path, size and modification time).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from autotune.models.gguf_header import HeaderError, read_header

__all__ = ["POOLING_NAMES", "pooling_type"]

#: llama.cpp's ``llama_pooling_type`` values.
POOLING_NAMES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


def pooling_type(path: str | os.PathLike[str]) -> int | None:
    """The pooling type a GGUF file declares (see :data:`POOLING_NAMES`), or None: a model
    that generates text. Unreadable files count as None (the load reports them)."""
    file = Path(path)
    try:
        stat = file.stat()
    except OSError:
        return None
    return _read(str(file), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _read(path: str, size: int, mtime_ns: int) -> int | None:
    try:
        fields = read_header(path).fields
    except (HeaderError, OSError):
        return None
    value = fields.get(f"{fields.get('general.architecture')}.pooling_type")
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return None
