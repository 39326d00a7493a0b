"""OpenAI's legacy completions, ``POST /v1/completions``: prompts, fill-in-the-middle, echo.

What code autocomplete speaks (Continue's autocomplete role, llama.vscode). A thin face over
:func:`autotune.pipeline.complete.start_completion` (the chat path's admission, load plan,
sticky context and telemetry; the prompt is never cut). With ``suffix`` the engine fills in
the middle (llama.cpp ``/infill``), or answers a 400 when the model has no FIM tokens.
``echo`` is done here (llama.cpp ignores it); ``logprobs`` come from the engine, in the
legacy shape (``tokens``, ``token_logprobs``, ``top_logprobs``, ``text_offset``).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from autotune.ground.errors import BackendError, InvalidRequest
from autotune.pipeline import ChatRun
from autotune.pipeline.complete import CompletionInput, start_completion
from autotune.server.driver import CALL, STREAM_RESPONSES, Call
from autotune.server.errors import error_body
from autotune.server.fields import COMPLETIONS, check_fields
from autotune.server.headers import HEADER_DOCS, AutotuneHeaders
from autotune.server.schemas import as_sent

__all__ = ["FIELDS", "LegacyLogprobs", "completion_headers", "completion_params", "router"]

router = APIRouter()
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
#: OpenAI's documented default for ``max_tokens`` on this endpoint.
DEFAULT_MAX_TOKENS = 16

#: What happens to each top-level field (see :mod:`autotune.server.fields`).
FIELDS = COMPLETIONS


class CompletionBody(BaseModel):
    """``POST /v1/completions``; every other field is checked by :data:`FIELDS`."""

    model_config = ConfigDict(extra="allow")

    model: str | None = Field(None, min_length=1, max_length=512)
    prompt: str | list[str]
    suffix: str | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    echo: bool | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=16)
    best_of: int | None = Field(None, ge=1, le=16)
    logprobs: int | None = Field(None, ge=0, le=5)
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)


def completion_params(body: Mapping[str, Any], *, pass_unknown: bool = False) -> dict[str, Any]:
    """The fields to forward; a 400 naming what cannot be honoured."""
    params = check_fields(body, table=FIELDS, pass_unknown=pass_unknown)
    best_of = body.get("best_of")
    if best_of not in (None, 1, body.get("n", 1)):
        raise InvalidRequest(
            "'best_of' above 'n' is not offered: autotune does not rank samples.", param="best_of"
        )
    if body.get("echo") and body.get("logprobs") is not None:
        raise InvalidRequest(
            "'echo' with 'logprobs' needs the prompt's logprobs, which the engine does not "
            "return; ask for one of them.",
            param="echo",
        )
    params.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    return params


def _prompt(prompt: str | list[str]) -> str:
    if isinstance(prompt, str):
        return prompt
    if len(prompt) == 1:
        return prompt[0]
    raise InvalidRequest(
        f"'prompt' holds {len(prompt)} prompts; send one per request.", param="prompt"
    )


class LegacyLogprobs:
    """Collects a completion's logprobs in the legacy shape, from chat-style
    ``{"content": [...]}`` entries (llama.cpp) or legacy fragments (vLLM)."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        self.data: dict[str, list[Any]] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }

    def add(self, logprobs: Any) -> dict[str, list[Any]] | None:
        """Fold one chunk's logprobs in; returns them in the legacy shape (None: none)."""
        if not isinstance(logprobs, Mapping):
            return None
        if "tokens" in logprobs:  # already legacy
            piece = {k: list(logprobs.get(k) or []) for k in self.data}
        else:
            piece = {k: [] for k in self.data}
            for entry in logprobs.get("content") or ():
                token = str(entry.get("token", ""))
                piece["tokens"].append(token)
                piece["token_logprobs"].append(entry.get("logprob"))
                piece["top_logprobs"].append(
                    {str(t.get("token")): t.get("logprob") for t in entry.get("top_logprobs") or ()}
                )
                piece["text_offset"].append(self.offset)
                self.offset += len(token)
        for key, values in piece.items():
            self.data[key].extend(values)
        return piece


def _usage(run: ChatRun) -> dict[str, Any] | None:
    stats = run.stats
    if stats is None or stats.prompt_tokens is None:
        return None
    completion = stats.completion_tokens or 0
    usage: dict[str, Any] = {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": stats.prompt_tokens + completion,
    }
    if stats.cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": stats.cached_tokens}
    return usage


class _Answer:
    """A run as ``text_completion`` events, or one ``text_completion``."""

    def __init__(
        self, run: ChatRun, model: str, echo: str, *, include_usage: bool, logprobs: bool
    ) -> None:
        self.run, self.model, self.echo = run, model, echo
        self.include_usage, self.logprobs = include_usage, logprobs

    async def frames(self) -> AsyncIterator[bytes]:
        run, echo = self.run, self.echo
        head = {"id": "cmpl-" + uuid.uuid4().hex, "object": "text_completion", "model": self.model}
        created = int(time.time())
        logprobs = LegacyLogprobs(len(echo))

        def frame(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            data = {**head, "created": created, "choices": choices, **extra}
            return b"data: " + _dumps(data).encode() + b"\n\n"

        try:
            if echo:
                yield frame([{"index": 0, "text": echo, "logprobs": None, "finish_reason": None}])
            async for chunk in run:
                choices = [_choice(c, logprobs) for c in chunk.data.get("choices") or ()]
                if choices:
                    yield frame(choices)
            usage = _usage(run)
            if self.include_usage and usage is not None:
                yield frame([], usage=usage)
        except BackendError as exc:
            body = error_body(str(exc), status=exc.status, code=exc.code)
            yield b"data: " + _dumps(body).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    async def whole(self) -> dict[str, Any]:
        run = self.run
        logprobs = LegacyLogprobs(len(self.echo))
        async for chunk in run:
            for c in chunk.data.get("choices") or ():
                logprobs.add(c.get("logprobs"))
        choice = {
            "index": 0,
            "text": self.echo + run.reply.text,
            "logprobs": logprobs.data if self.logprobs else None,
            "finish_reason": run.reply.finish_reason or "stop",
        }
        answer: dict[str, Any] = {
            "id": "cmpl-" + uuid.uuid4().hex,
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [choice],
        }
        usage = _usage(run)
        if usage is not None:
            answer["usage"] = usage
        return answer


def _choice(c: Mapping[str, Any], logprobs: LegacyLogprobs) -> dict[str, Any]:
    return {
        "index": c.get("index", 0),
        "text": c.get("text") or "",
        "logprobs": logprobs.add(c.get("logprobs")),
        "finish_reason": c.get("finish_reason"),
    }


@router.post("/v1/completions", responses=STREAM_RESPONSES, openapi_extra=HEADER_DOCS)
async def create_completion(body: CompletionBody, call: Call = CALL) -> Response:
    """A text completion (fill-in-the-middle with ``suffix``) through autotune's pipeline.
    ``X-Conversation-Id`` and ``X-Autotune-Overflow: truncate-oldest`` are refused (400): a
    completion is not a conversation, and its prompt is never cut."""
    headers = completion_headers(call.headers)
    prompt = _prompt(body.prompt)
    inp = CompletionInput(
        prompt=prompt,
        model=body.model,
        suffix=body.suffix,
        params=completion_params(as_sent(body), pass_unknown=call.pass_unknown),
        profile=headers.profile,
    )
    echo = prompt if body.echo else ""
    include_usage = bool((body.stream_options or {}).get("include_usage"))
    wants_logprobs = body.logprobs is not None

    def answer(run: ChatRun) -> _Answer:
        model = body.model or run.model
        return _Answer(run, model, echo, include_usage=include_usage, logprobs=wants_logprobs)

    started = start_completion(call.pipeline, inp)
    return await call.drive(started, answer, stream=bool(body.stream))


def completion_headers(headers: AutotuneHeaders) -> AutotuneHeaders:
    """autotune's headers on a text completion: a 400 for what it cannot honour."""
    headers = headers.without_conversation(
        "a text completion is not a conversation; send chat messages to /v1/chat/completions "
        "to store one"
    )
    if headers.overflow == "truncate-oldest":
        raise InvalidRequest(
            "X-Autotune-Overflow: truncate-oldest cannot be honoured here: a prompt is never "
            "cut (one that cannot fit is refused).",
            param="X-Autotune-Overflow",
        )
    return headers
