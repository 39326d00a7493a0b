"""The OpenAI-compatible routes: ``POST /v1/chat/completions`` and ``GET /v1/models``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from autotune.ground.errors import BackendError
from autotune.operations.inventory import listed
from autotune.pipeline import ChatRun, Pipeline
from autotune.server.driver import CALL, Call
from autotune.server.errors import error_body
from autotune.server.headers import HEADER_DOCS
from autotune.server.schemas import ChatCompletionRequest, forwardable_params

__all__ = ["aggregate", "router"]

router = APIRouter()
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
    openapi_extra=HEADER_DOCS,
)
async def chat_completions(body: ChatCompletionRequest, call: Call = CALL) -> Response:
    """Chat completion through autotune's pipeline (OpenAI schema; SSE when ``stream``)."""
    params = forwardable_params(body, pass_unknown=call.pass_unknown)
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def answer(run: ChatRun) -> _Answer:
        return _Answer(run, body.model or run.model, include_usage)

    inp = call.chat(messages, body.model, params, streamed=bool(body.stream))
    started = call.pipeline.start(inp)
    return await call.drive(started, answer, stream=bool(body.stream))


class _Answer:
    """A run as ``chat.completion.chunk`` events, or one ``chat.completion``."""

    def __init__(self, run: ChatRun, model_id: str, include_usage: bool) -> None:
        self.run, self.model_id, self.include_usage = run, model_id, include_usage

    async def frames(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.run:
                data = chunk.data
                if not self.include_usage:
                    if not data.get("choices"):
                        continue  # the usage-only chunk the client did not ask for
                    data.pop("usage", None)
                data["model"] = self.model_id
                yield b"data: " + _dumps(data).encode() + b"\n\n"
        except BackendError as exc:
            # Headers are gone already: report the failure the way OpenAI streams do.
            body = error_body(str(exc), status=exc.status, code=exc.code)
            yield b"data: " + _dumps(body).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    async def whole(self) -> dict[str, Any]:
        return await aggregate(self.run, self.model_id)


async def aggregate(run: ChatRun, model_id: str) -> dict[str, Any]:
    """Read a run to its end and return it as one ``chat.completion`` (all choices, tool
    calls, logprobs, usage and the engine's timings)."""
    async for _ in run:
        pass
    return run.reply.completion(model_id)


async def _models(request: Request) -> dict[str, dict[str, Any]]:
    served = await listed(_pipeline(request).backends)  # embedding models included
    return {
        name: {"id": name, "object": "model", "created": 0, "owned_by": engine}
        for name, (engine, _) in served.items()
    }


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
