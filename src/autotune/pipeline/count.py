"""Counts a request's prompt tokens the way the planner does, for faces that report a count.

The count is the planner's own (:class:`autotune.context.tokens.TokenEstimator`): each
message's text counted by the engine's tokenizer when the model is loaded and the engine has
one (llama.cpp ``/tokenize``), plus the chat template's per-message overhead; otherwise the
calibrated estimate, which leans high. A model is never loaded just to count.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from autotune.ground.errors import BackendError
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
    if backend.capabilities.tokenize:
        limit = asyncio.Semaphore(_CONCURRENCY)

        async def one(text: str) -> None:
            async with limit:
                tokens.learn(name, text, len(await backend.tokenize(name, text)))

        # Not loaded (the embedded engine never loads just to count): estimates.
        with contextlib.suppress(BackendError):
            await asyncio.gather(*(one(t) for t in tokens.unknown(name, messages)))
    table = tokens.table(name, messages)
    return TokenCount(name, table.count(messages), table.is_exact(messages))
