"""What a GGUF model is for, from its metadata: an embedding model (it declares a pooling type).

llama.cpp (and Ollama, which lists such models with the "embedding" capability) reads
``<arch>.pooling_type`` to know how to pool token vectors into one: encoder models (BERT,
nomic-bert …) and decoder-based embedding models (Qwen3-Embedding: ``last``) declare it;
chat models do not. The read is cached per file (path, size and modification time).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

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
    import gguf  # deferred: importing gguf pulls in numpy

    try:
        reader = gguf.GGUFReader(path)
        arch = reader.fields["general.architecture"].contents()
        field = reader.fields.get(f"{arch}.pooling_type")
        return None if field is None else int(field.contents())
    except Exception:  # the reader raises struct/numpy/value errors on bad bytes
        return None
