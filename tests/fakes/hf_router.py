"""A fake of the Hugging Face Inference Providers router (``https://router.huggingface.co/v1``),
which cannot be reached from here (and must never be contacted by tests).

Shapes from Hugging Face's documentation of its OpenAI-compatible router: ``GET /v1/models``
lists ``{"id", "object": "model", "created", "owned_by", "providers": [...]}``; ``POST
/v1/chat/completions`` streams OpenAI ``chat.completion.chunk`` events with ``usage`` at the
end; a missing or wrong bearer token is answered 401 with
``{"error": "Invalid credentials in Authorization header"}`` (the body users report seeing).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["FakeHFRouter"]

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


class FakeHFRouter:
    """Accepts only ``token``; records the Authorization header of every request."""

    def __init__(self, token: str = "hf_test_token") -> None:
        self.token = token
        self.seen_auth: list[str | None] = []
        self.app = Starlette(
            routes=[
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
            ]
        )

    def _denied(self, request: Request) -> Response | None:
        auth = request.headers.get("authorization")
        self.seen_auth.append(auth)
        if auth != f"Bearer {self.token}":
            return JSONResponse(
                {"error": "Invalid credentials in Authorization header"}, status_code=401
            )
        return None

    async def _models(self, request: Request) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        entry = {
            "id": MODEL,
            "object": "model",
            "created": 1721260800,
            "owned_by": "meta-llama",
            "providers": [{"provider": "novita", "status": "live", "context_length": 16384}],
        }
        return JSONResponse({"object": "list", "data": [entry]})

    async def _chat(self, request: Request) -> Response:
        if (denied := self._denied(request)) is not None:
            return denied
        body = json.loads(await request.body())

        def event(payload: dict[str, Any]) -> bytes:
            base = {
                "id": "chatcmpl-hf",
                "object": "chat.completion.chunk",
                "created": 1735142223,
                "model": body["model"],
            }
            return f"data: {json.dumps({**base, **payload})}\n\n".encode()

        async def stream() -> AsyncIterator[bytes]:
            yield event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            yield event({"choices": [{"index": 0, "delta": {"content": "Hi there"}}]})
            yield event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            usage = {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}
            yield event({"choices": [], "usage": usage})
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")
