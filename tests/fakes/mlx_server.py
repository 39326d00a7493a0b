"""A fake ``mlx_lm.server`` built from mlx-lm's ``server.py`` (ml-explore/mlx-lm), since MLX needs
Apple Silicon and cannot run here.

What it copies from the real server: ``GET /health`` → ``{"status": "ok"}``; ``GET /v1/models``
→ ``{"object": "list", "data": [{"id": repo, "object": "model", "created": ...}]}`` (the MLX
repos in the Hugging Face cache); ``POST /v1/chat/completions`` with ``stream: true`` sends
``: keepalive n/m`` comment lines while the prompt is processed, then
``chat.completion.chunk`` events whose ``delta`` always carries ``"role": "assistant"``, a
last chunk with ``finish_reason``, and — only when ``stream_options.include_usage`` is set — an
``object: "chat.completion"`` event with empty ``choices``, ``usage`` (with
``prompt_tokens_details.cached_tokens`` from its nearest-prefix prompt cache) and ``timings``
(``prompt_n`` = computed tokens, ``predicted_n``, ``prompt_per_second``,
``predicted_per_second``), then ``data: [DONE]``. A model it cannot load is answered with
404 ``{"error": "..."}``. The prompt cache is imitated with whitespace "tokens".

Run as a script (``python mlx_server.py --port N``) it serves itself, standing in for the child
process autotune starts.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["FakeMlxServer"]


class FakeMlxServer:
    """Tests read ``requests`` (bodies of chat requests) and set ``repos``."""

    def __init__(self, repos: list[str] | None = None) -> None:
        self.repos = list(repos or ["mlx-community/Qwen3-8B-4bit"])
        self.requests: list[dict[str, Any]] = []
        self.created = int(time.time())
        self._last_prompt: list[str] = []
        self.app = Starlette(
            routes=[
                Route("/health", self._health, methods=["GET"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
            ]
        )

    async def _health(self, request: Request) -> Response:
        return Response('{"status": "ok"}', media_type="application/json")

    async def _models(self, request: Request) -> Response:
        data = [{"id": r, "object": "model", "created": self.created} for r in self.repos]
        return JSONResponse({"object": "list", "data": data})

    async def _chat(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.requests.append(body)
        model = body.get("model", "default_model")
        if model not in self.repos:
            return JSONResponse(
                {"error": f"Repository Not Found for url: https://huggingface.co/{model}"},
                status_code=404,
            )
        prompt = " ".join(str(m.get("content", "")) for m in body["messages"]).split()
        cached = 0
        for a, b in zip(prompt, self._last_prompt, strict=False):
            if a != b:
                break
            cached += 1
        reply = ["Hello", " from", " MLX"][: int(body.get("max_tokens", 3))]
        self._last_prompt = prompt + "".join(reply).split()
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        request_id = f"chatcmpl-{uuid.uuid4()}"

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            payload = {
                "id": request_id,
                "system_fingerprint": "0.28.0-0.29.0-macOS-15.5-arm64-arm-64bit-applegpu_g15s",
                "object": "chat.completion.chunk",
                "model": model,
                "created": self.created,
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(payload)}\n\n".encode()

        async def stream() -> AsyncIterator[bytes]:
            yield f": keepalive {len(prompt) - cached}/{len(prompt)}\n\n".encode()
            for piece in reply:
                yield event(
                    [
                        {
                            "index": 0,
                            "finish_reason": None,
                            "delta": {"role": "assistant", "content": piece},
                        }
                    ]
                )
            yield event([{"index": 0, "finish_reason": "stop", "delta": {"role": "assistant"}}])
            if include_usage:
                usage = {
                    "prompt_tokens": len(prompt),
                    "completion_tokens": len(reply),
                    "total_tokens": len(prompt) + len(reply),
                    "prompt_tokens_details": {"cached_tokens": cached},
                }
                timings = {
                    "prompt_per_second": 500.0,
                    "predicted_per_second": 50.0,
                    "prompt_n": len(prompt) - cached,
                    "predicted_n": len(reply),
                }
                yield event([], object="chat.completion", usage=usage, timings=timings)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")


def main(argv: list[str]) -> None:
    import uvicorn

    port = int(argv[argv.index("--port") + 1])
    uvicorn.run(FakeMlxServer().app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main(sys.argv)
