"""Counts a request's prompt tokens the way the planner does, for faces that report a count.

The count is the planner's own (:class:`autotune.context.tokens.TokenEstimator`): each
message's text counted by the engine's tokenizer when the model is loaded and the engine has
one (llama.cpp ``/tokenize``), plus the chat template's per-message overhead; otherwise the
calibrated estimate, which leans high. A model is never loaded just to count. A count that
asks the engine waits for its place in the admission line like a chat, and every count
leaves a telemetry record (source ``count``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from autotune.backends.base import Backend
from autotune.context.tokens import TokenEstimator
from autotune.ground.errors import BackendError
from autotune.pipeline.admitted import admitted
from autotune.pipeline.pipeline import Pipeline

__all__ = ["TokenCount", "count_tokens"]

#: Texts tokenized at once (each is one engine round trip).
_CONCURRENCY = 8


@dataclass(frozen=True)
class TokenCount:
    """Prompt tokens of some messages for one model."""

    model: str
    tokens: int
    #: Every text was counted by the engine's tokenizer (the template overhead is estimated).
    exact: bool


async def count_tokens(
    pipeline: Pipeline, model: str | None, messages: Sequence[dict[str, Any]]
) -> TokenCount:
    """The prompt tokens ``messages`` take on ``model`` (see the module docstring)."""
    backend, name = await pipeline.backends.resolve(model or pipeline.settings.default_model)
    tokens = pipeline.tokens
    unknown = tokens.unknown(name, messages) if backend.capabilities.tokenize else []
    # Only a count that asks the engine waits for its turn.
    admit: Literal["hold", "none"] = "hold" if unknown else "none"
    async with admitted(pipeline, "count", name, backend.name, admit=admit) as record:
        if unknown:
            await _tokenize(backend, name, unknown, tokens)
        table = tokens.table(name, messages)
        record.prompt_tokens = table.count(messages)
        return TokenCount(name, record.prompt_tokens, table.is_exact(messages))


async def _tokenize(
    backend: Backend, name: str, texts: Sequence[str], tokens: TokenEstimator
) -> None:
    """Count ``texts`` with the engine's tokenizer (a model not loaded: left as estimates)."""
    limit = asyncio.Semaphore(_CONCURRENCY)

    async def one(text: str) -> None:
        async with limit:
            tokens.learn(name, text, len(await backend.tokenize(name, text)))

    # Not loaded (the embedded engine never loads just to count): estimates.
    with contextlib.suppress(BackendError):
        await asyncio.gather(*(one(t) for t in texts))
