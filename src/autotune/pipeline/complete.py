"""Text completions (and fill-in-the-middle) through the one pipeline, planned like a chat.

A prompt is planned as a one-message conversation: the same admission, load plan, sticky
context buckets, exact token counts and telemetry as a chat turn; only the engine call
differs (``Backend.stream_completion`` instead of ``stream_chat``). The prompt is never cut:
one that cannot fit any context the model may have is the chat path's 400
``context_length_exceeded``. Nothing is stored: a completion has no conversation.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from autotune.backends.base import Backend
from autotune.ground.errors import ContextLengthExceeded, InvalidRequest, NotSupported
from autotune.ground.types import ChatRequest, Chunk, CompletionRequest
from autotune.pipeline.pipeline import ChatInput, Pipeline
from autotune.pipeline.run import ChatRun

__all__ = ["CompletionInput", "start_completion"]


@dataclass
class CompletionInput:
    """One completion request as a client put it."""

    prompt: str
    model: str | None = None
    #: Text after the gap: the engine fills in between ``prompt`` and ``suffix``.
    suffix: str | None = None
    #: OpenAI fields to forward (max_tokens, temperature, stop, logprobs …; never None).
    params: dict[str, Any] = field(default_factory=dict)
    profile: str | None = None
    source: str = "completions"


async def start_completion(pipeline: Pipeline, inp: CompletionInput) -> ChatRun:
    """Everything up to the engine's first chunk, as :meth:`Pipeline.start` does for a chat;
    the returned run yields ``text_completion`` chunks."""
    text = inp.prompt + (inp.suffix or "")

    async def opener(backend: Backend, request: ChatRequest) -> AsyncIterator[Chunk]:
        completion = CompletionRequest(
            request.model,
            inp.prompt,
            inp.suffix,
            dict(request.params),
            request.load,
            request.keep_alive,
        )
        try:
            stream = backend.stream_completion(completion)
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for chunk in stream:
                    yield chunk
        except NotSupported as exc:
            raise InvalidRequest(
                f"{request.model} on the {backend.name} engine cannot complete text: "
                f"{exc.message} Use /v1/chat/completions.",
                param="model",
            ) from None

    chat = ChatInput(
        messages=[{"role": "user", "content": text}],
        model=inp.model,
        params=inp.params,
        profile=inp.profile,
        persist=False,
        source=inp.source,
        overflow="refuse",  # a prompt is never cut
        opener=opener,
        raw_prompt=inp.prompt,
        kv_lookup=inp.suffix is None,  # the engine builds a fill-in-the-middle prompt itself
    )
    try:
        return await pipeline.start(chat)
    except ContextLengthExceeded as exc:
        exc.param = "prompt"
        raise
