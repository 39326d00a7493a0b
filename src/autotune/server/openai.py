"""The OpenAI-compatible routes: ``POST /v1/chat/completions`` and ``GET /v1/models``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from autotune.ground.errors import BackendError
from autotune.pipeline import ChatInput, ChatRun, Pipeline
from autotune.server.errors import error_body
from autotune.server.schemas import ChatCompletionRequest, forwardable_params
from autotune.server.shapes import ClientGone, close_run, watching

__all__ = ["aggregate", "router"]

router = APIRouter()
T = TypeVar("T")
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


@router.post(
    "/v1/chat/completions",
    responses={
        200: {"content": {"text/event-stream": {}}},
        400: {},
        404: {},
        413: {},
        429: {},
        503: {},
    },
)
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    x_autotune_profile: Literal["fast", "balanced", "quality"] | None = Header(
        None, description="Tuning profile for this request (default: the server's)."
    ),
    x_conversation_id: str | None = Header(
        None,
        pattern=r"^[A-Za-z0-9_.:-]{1,128}$",  # = conversations_api.CONVERSATION_ID_PATTERN
        description="Store and resume this conversation (1-128 letters, digits, _ . : -).",
    ),
    x_autotune_overflow: Literal["refuse", "truncate-oldest"] | None = Header(
        None,
        description="When the newest message cannot fit: refuse with a 400 (the default) or "
        "cut its start and say so in X-Autotune-Plan.",
    ),
) -> Response:
    """Chat completion through autotune's pipeline (OpenAI schema; SSE when ``stream``)."""
    inp = ChatInput(
        messages=[m.model_dump(exclude_none=True) for m in body.messages],
        model=body.model,
        params=forwardable_params(
            body, pass_unknown=request.app.state.settings.pass_unknown_fields
        ),
        profile=x_autotune_profile,
        conversation_id=x_conversation_id,
        overflow=x_autotune_overflow,
        streamed=bool(body.stream),
    )
    try:  # waiting for a place, a load or a long prefill: a client that leaves frees it all
        run = await watching(_pipeline(request).start(inp), request, close_run)
    except ClientGone:
        return Response(status_code=499)
    model_id = body.model or run.model
    headers = {"X-Autotune-Plan": run.plan.summary()}
    if run.conversation_id:
        headers["X-Conversation-Id"] = run.conversation_id
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _sse(run, model_id, include_usage),
            media_type="text/event-stream",
            headers={**headers, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        completion = await watching(aggregate(run, model_id), request)
    except ClientGone:
        return Response(status_code=499)
    except BackendError as exc:
        status = exc.status if exc.status >= 400 else 502
        return JSONResponse(error_body(str(exc), status=status, code=exc.code), status, headers)
    headers["X-Autotune-Plan"] = run.plan.summary()  # what the run added (a runaway stopped)
    return JSONResponse(completion, headers=headers)


async def _sse(run: ChatRun, model_id: str, include_usage: bool) -> AsyncIterator[bytes]:
    try:
        async for chunk in run:
            data = chunk.data
            if not include_usage:
                if not data.get("choices"):
                    continue  # the usage-only chunk the client did not ask for
                data.pop("usage", None)
            data["model"] = model_id
            yield b"data: " + _dumps(data).encode() + b"\n\n"
    except BackendError as exc:
        # Headers are gone already: report the failure the way OpenAI streams do.
        body = error_body(str(exc), status=exc.status, code=exc.code)
        yield b"data: " + _dumps(body).encode() + b"\n\n"
    yield b"data: [DONE]\n\n"


async def aggregate(run: ChatRun, model_id: str) -> dict[str, Any]:
    """Read a run to its end and return it as one ``chat.completion`` (all choices, tool
    calls, logprobs, usage and the engine's timings)."""
    async for _ in run:
        pass
    return run.reply.completion(model_id)


async def _models(request: Request) -> dict[str, dict[str, Any]]:
    inventory = await _pipeline(request).backends.inventory()
    seen: dict[str, dict[str, Any]] = {}
    for backend, models in inventory.items():
        for m in models:
            if m.name not in seen:
                seen[m.name] = {"id": m.name, "object": "model", "created": 0, "owned_by": backend}
    return seen


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Every model the engines in use can serve."""
    return {"object": "list", "data": list((await _models(request)).values())}


@router.get("/v1/models/{model_id:path}", responses={404: {}})
async def retrieve_model(model_id: str, request: Request) -> dict[str, Any]:
    """One model, as OpenAI's ``models.retrieve`` expects it (404 when no engine has it)."""
    models = await _models(request)
    if model_id in models:
        return models[model_id]
    _, name = await _pipeline(request).backends.resolve(model_id)  # ModelNotFound: a 404
    return {**models.get(name, {"object": "model", "created": 0}), "id": model_id}
