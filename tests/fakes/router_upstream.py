"""A fake OpenAI-compatible upstream whose failures the router tests control.

It answers like vLLM (vLLM cannot run here: no GPU): ``GET /health`` 200 with an empty body,
``GET /v1/models`` with ``max_model_len``, ``GET /metrics`` in Prometheus text with ``vllm:``
names (vLLM metrics docs), and streamed ``chat.completion.chunk`` events ending in ``usage``.
Tests switch ``mode`` to make the next chats fail: ``"error"`` answers ``status`` before any
token (like an engine that is overloaded or crashing), ``"drop"`` sends one chunk and then
breaks the connection (an engine dying mid-answer). ``healthy = False`` makes ``/health`` and
``/metrics`` answer 503 (as llama-server and vLLM do while they cannot serve), and
``metrics_text`` replaces the ``/metrics`` body (to test an unreadable one).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["FakeUpstream", "vllm_metrics"]


def vllm_metrics(model: str, *, running: float = 0, waiting: float = 0) -> str:
    label = f'{{engine="0",model_name="{model}"}}'
    return (
        "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
        "# TYPE vllm:num_requests_running gauge\n"
        f"vllm:num_requests_running{label} {running}\n"
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f"vllm:num_requests_waiting{label} {waiting}\n"
        "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        f"vllm:kv_cache_usage_perc{label} 0.25\n"
    )


class FakeUpstream:
    """One fake engine; ``chats`` counts the chat requests it received."""

    def __init__(self, name: str, models: list[str] | None = None) -> None:
        self.name = name
        self.models = list(models or ["qwen3:8b"])
        self.mode = "ok"
        self.healthy = True
        self.status = 500
        self.metrics_text: str | None = None
        self.chats = 0
        self.bodies: list[dict[str, Any]] = []
        self.app = Starlette(
            routes=[
                Route("/health", self._health, methods=["GET"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/metrics", self._metrics, methods=["GET"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
            ]
        )

    async def _health(self, request: Request) -> Response:
        return Response(status_code=200 if self.healthy else 503)

    async def _models(self, request: Request) -> Response:
        data = [
            {"id": m, "object": "model", "owned_by": "vllm", "max_model_len": 8192}
            for m in self.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def _metrics(self, request: Request) -> Response:
        if not self.healthy:
            return Response(status_code=503)
        text = self.metrics_text
        if text is None:
            text = vllm_metrics(self.models[0])
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def _chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.chats += 1
        self.bodies.append(body)
        if body.get("model") not in self.models:
            return JSONResponse(
                {
                    "object": "error",
                    "message": f"The model `{body.get('model')}` does not exist.",
                    "type": "NotFoundError",
                    "param": None,
                    "code": 404,
                },
                status_code=404,
            )
        if self.mode == "error":
            return JSONResponse(
                {"object": "error", "message": "engine overloaded", "code": self.status},
                status_code=self.status,
            )

        def event(payload: dict[str, Any]) -> bytes:
            base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "model": body["model"]}
            return f"data: {json.dumps({**base, **payload})}\n\n".encode()

        drop = self.mode == "drop"

        async def stream() -> AsyncIterator[bytes]:
            yield event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            yield event({"choices": [{"index": 0, "delta": {"content": f"from {self.name}"}}]})
            if drop:
                raise RuntimeError("engine died mid-answer")  # uvicorn cuts the connection
            yield event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            usage = {
                "prompt_tokens": 20,
                "completion_tokens": 2,
                "total_tokens": 22,
                "prompt_tokens_details": {"cached_tokens": 16},
            }
            yield event({"choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")
