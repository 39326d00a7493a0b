"""Embeddings in two shapes: OpenAI's ``POST /v1/embeddings`` and Ollama's ``POST /api/embed``
(and its legacy ``POST /api/embeddings``: one ``prompt`` in, one ``embedding`` out).

Both are thin faces over :func:`autotune.pipeline.embed.embed` (the admission queue,
telemetry, the model asked for: autotune's offline MiniLM as ``all-minilm``, an embedding
GGUF on the embedded engine, or the upstream engine's model). Errors answer in the shape of
the API whose path was called: OpenAI's, or Ollama's ``{"error": "..."}``.
"""

from __future__ import annotations

import base64
import time
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from autotune.ground.errors import InvalidRequest
from autotune.pipeline.embed import Embeddings, embed
from autotune.server.ollama_api import AnyContentType

__all__ = ["ollama_router", "router"]

router = APIRouter()
#: ``/api/embed`` and ``/api/embeddings``: errors in Ollama's shape (the paths are Ollama's),
#: bodies read as JSON whatever their Content-Type, as Ollama reads them.
ollama_router = APIRouter(route_class=AnyContentType)


class EmbeddingRequest(BaseModel):
    """``POST /v1/embeddings`` (OpenAI)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=512)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


class OllamaEmbedRequest(BaseModel):
    """``POST /api/embed`` (Ollama's fields; any other is a 400 naming it, before the model
    is looked for)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=512)
    input: str | list[str]
    truncate: bool | None = None
    dimensions: int | None = Field(None, ge=1)
    keep_alive: str | int | float | None = None
    options: dict[str, Any] | None = None


class OllamaLegacyEmbeddingsRequest(BaseModel):
    """``POST /api/embeddings``, Ollama's first embedding API (LangChain's older
    ``OllamaEmbeddings``, llm-ollama, many scripts): one ``prompt``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=512)
    prompt: str = ""
    keep_alive: str | int | float | None = None
    options: dict[str, Any] | None = None
    truncate: bool | None = None


def _texts(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _check_dimensions(result: Embeddings, dimensions: int | None) -> None:
    if dimensions is None or not result.vectors:
        return
    native = len(result.vectors[0])
    if dimensions != native:
        raise InvalidRequest(
            f"{result.model} makes {native}-dimensional vectors; 'dimensions' cannot change "
            f"that here (leave it out, or ask for {native}).",
            param="dimensions",
        )


def _base64(vector: list[float]) -> str:
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


@router.post("/v1/embeddings", responses={400: {}, 404: {}, 429: {}})
async def create_embeddings(body: EmbeddingRequest, request: Request) -> dict[str, Any]:
    """One vector per input text (``base64``: little-endian float32, as OpenAI sends them)."""
    result = await embed(request.app.state.pipeline, body.model, _texts(body.input))
    _check_dimensions(result, body.dimensions)
    as_base64 = body.encoding_format == "base64"
    data = [
        {"object": "embedding", "index": i, "embedding": _base64(v) if as_base64 else v}
        for i, v in enumerate(result.vectors)
    ]
    usage = {"prompt_tokens": result.prompt_tokens, "total_tokens": result.prompt_tokens}
    return {"object": "list", "data": data, "model": body.model, "usage": usage}


@ollama_router.post("/api/embed", responses={400: {}, 404: {}, 429: {}})
async def ollama_embed(body: OllamaEmbedRequest, request: Request) -> dict[str, Any]:
    """Ollama's embed: ``{"model", "embeddings": [[...]], ...}``; errors ``{"error": "..."}``.
    Texts longer than the model reads are embedded from their start (``truncate`` true, as
    Ollama's default); ``truncate: false`` is refused rather than ignored."""
    if body.truncate is False:
        raise InvalidRequest("'truncate: false' is not offered here; long inputs are cut.")
    started = time.monotonic()
    result = await embed(request.app.state.pipeline, body.model, _texts(body.input))
    _check_dimensions(result, body.dimensions)
    return {
        "model": body.model,
        "embeddings": result.vectors,
        "total_duration": int((time.monotonic() - started) * 1e9),
        "load_duration": 0,
        "prompt_eval_count": result.prompt_tokens,
    }


@ollama_router.post("/api/embeddings", responses={400: {}, 404: {}, 429: {}})
async def ollama_embeddings(
    body: OllamaLegacyEmbeddingsRequest, request: Request
) -> dict[str, Any]:
    """Ollama's legacy embeddings: ``{"embedding": [...]}`` for one ``prompt``. An empty prompt
    answers an empty vector, as Ollama's does (clients send one to load the model)."""
    if body.truncate is False:
        raise InvalidRequest("'truncate: false' is not offered here; long inputs are cut.")
    if not body.prompt:
        return {"embedding": []}
    result = await embed(request.app.state.pipeline, body.model, [body.prompt])
    return {"embedding": result.vectors[0]}
