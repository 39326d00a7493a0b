"""A fake OpenAI-compatible server flavoured as llama-server, LM Studio, vLLM, SGLang or mlx_lm.

Those engines cannot run here (no GPU, no LM Studio, no Apple Silicon), so each flavour answers
with the shapes the engines document: llama.cpp tools/server/README.md (``/props`` with
``default_generation_settings``/``total_slots``, ``/v1/models`` ``meta``, ``/tokenize``,
``timings`` with ``prompt_n``/``cache_n``, ``{"error": {"code", "message", "type"}}``);
LM Studio REST API docs (``/api/v0/models`` with ``state``, ``/api/v1/models`` with
``loaded_instances``, flat ``POST /api/v1/models/load`` and ``/unload`` by ``instance_id``);
vLLM metrics docs (``vllm:`` Prometheus names, ``max_model_len``, its 404
``The model `x` does not exist.``); SGLang (``sglang:`` metrics, ``/get_model_info``); and
mlx_lm.server (only ``/v1/*`` and ``/health``). Every request is recorded.

Text completions follow the same documents: ``/v1/completions`` streams ``text_completion``
chunks (the last with ``usage``, and on llama.cpp ``timings``); llama.cpp's ``/infill``
(tools/server/README.md "POST /infill") streams its native ``/completion`` shape (``content``,
``stop``, ``stop_type``, ``tokens_evaluated``, ``tokens_cached``, ``timings``) when the model
has FIM tokens (``fim=True``), and otherwise answers 501 ``not_supported_error`` as
llama-server does ("Infill is not supported by this model: prefix token is missing. …").
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["FLAVOURS", "LLAMACPP_TIMINGS", "FakeOpenAI"]

FLAVOURS = ("llamacpp", "lmstudio", "vllm", "sglang", "mlx")

#: A llama.cpp final ``timings`` object: 10 prompt tokens computed, 3 taken from the cache.
LLAMACPP_TIMINGS: dict[str, Any] = {
    "cache_n": 3,
    "prompt_n": 10,
    "prompt_ms": 46.639,
    "prompt_per_token_ms": 4.6639,
    "prompt_per_second": 214.4,
    "predicted_n": 3,
    "predicted_ms": 30.5,
    "predicted_per_token_ms": 10.17,
    "predicted_per_second": 98.4,
}


class FakeOpenAI:
    """One engine flavour; tests set ``error``/``chat_chunks`` and read ``requests``."""

    def __init__(
        self,
        flavour: str,
        *,
        model: str = "qwen2.5-0.5b-instruct",
        metrics: bool = True,
        lmstudio_v1: bool = True,
        fim: bool = False,
    ):
        assert flavour in FLAVOURS, flavour
        self.flavour = flavour
        self.model = model
        self.metrics = metrics
        #: llama.cpp: the model has fill-in-the-middle tokens (else /infill answers 501).
        self.fim = fim
        #: Set by whoever serves the app (see tests/fakes/server.py).
        self.url = ""
        self.requests: list[dict[str, Any]] = []
        #: (status, body) answered to the next chat request.
        self.error: tuple[int, dict[str, Any]] | None = None
        #: Replaces the default content chunks (before the finish and usage chunks).
        self.chat_chunks: list[dict[str, Any]] | None = None
        self.sent: list[dict[str, Any]] = []
        #: LM Studio: loaded instances per model key, each {"id", "config"}.
        self.instances: dict[str, list[dict[str, Any]]] = {model: []}
        routes = [
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
        ]
        if flavour == "llamacpp":
            routes += [
                Route("/health", self._health_ok, methods=["GET"]),
                Route("/props", self._props, methods=["GET"]),
                Route("/tokenize", self._tokenize, methods=["POST"]),
                Route("/infill", self._infill, methods=["POST"]),
            ]
            if metrics:
                routes.append(Route("/metrics", self._metrics, methods=["GET"]))
        elif flavour == "lmstudio":
            routes.append(Route("/api/v0/models", self._lms_v0_models, methods=["GET"]))
            if lmstudio_v1:  # the /api/v1 REST API came with LM Studio 0.4
                routes += [
                    Route("/api/v1/models", self._lms_v1_models, methods=["GET"]),
                    Route("/api/v1/models/load", self._lms_load, methods=["POST"]),
                    Route("/api/v1/models/unload", self._lms_unload, methods=["POST"]),
                ]
        elif flavour in ("vllm", "sglang"):
            routes.append(Route("/health", self._health_empty, methods=["GET"]))
            if flavour == "vllm" or metrics:
                routes.append(Route("/metrics", self._metrics, methods=["GET"]))
            if flavour == "sglang":
                routes.append(Route("/get_model_info", self._model_info, methods=["GET"]))
        else:  # mlx
            routes.append(Route("/health", self._health_ok, methods=["GET"]))
        self.app = Starlette(routes=routes)

    # ------------------------------------------------------------------ helpers

    def paths(self) -> list[str]:
        return [r["path"] for r in self.requests]

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [r["body"] for r in self.requests if r["path"] == path]

    async def _record(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        self.requests.append(
            {
                "method": request.method,
                "path": request.url.path,
                "body": body,
                "authorization": request.headers.get("authorization"),
            }
        )
        return body

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": 1735142223,
            "model": self.model,
            "system_fingerprint": "b4500-fake",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    def _script(self) -> list[dict[str, Any]]:
        chunks = self.chat_chunks or [
            self._chunk({"role": "assistant", "content": None}),
            self._chunk({"content": "Hello"}),
            self._chunk({"content": " world"}),
        ]
        usage: dict[str, Any] = {"completion_tokens": 3, "prompt_tokens": 13, "total_tokens": 16}
        if self.flavour in ("llamacpp", "vllm", "sglang"):
            usage["prompt_tokens_details"] = {"cached_tokens": 3}
        last = {**self._chunk({}), "choices": [], "usage": usage}
        if self.flavour == "llamacpp":
            last["timings"] = dict(LLAMACPP_TIMINGS)  # llama.cpp puts timings on the last chunk
        return [*chunks, self._chunk({}, "stop"), last]

    # ------------------------------------------------------------------ routes

    async def _health_ok(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse({"status": "ok"})

    async def _health_empty(self, request: Request) -> Response:
        await self._record(request)
        return Response(status_code=200)

    async def _models(self, request: Request) -> Response:
        await self._record(request)
        entry: dict[str, Any] = {
            "id": self.model,
            "object": "model",
            "created": 1735142223,
            "owned_by": self.flavour,
        }
        if self.flavour == "llamacpp":
            entry["meta"] = {
                "vocab_type": 2,
                "n_vocab": 151936,
                "n_ctx_train": 32768,
                "n_embd": 896,
                "n_params": 494032768,
                "size": 397808192,
            }
        elif self.flavour in ("vllm", "sglang"):
            entry["max_model_len"] = 32768
            entry["root"] = f"Qwen/{self.model}"
        return JSONResponse({"object": "list", "data": [entry]})

    async def _props(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse(
            {
                "default_generation_settings": {"id": 0, "n_ctx": 4096, "is_processing": False},
                "total_slots": 2,
                "model_path": f"/models/{self.model}-q8_0.gguf",
                "chat_template": "{{ messages }}",
            }
        )

    async def _tokenize(self, request: Request) -> Response:
        body = await self._record(request)
        return JSONResponse({"tokens": [ord(c) for c in body.get("content", "")]})

    async def _metrics(self, request: Request) -> Response:
        await self._record(request)
        name = {"llamacpp": "llamacpp", "vllm": "vllm", "sglang": "sglang"}[self.flavour]
        label = f'{{model_name="{self.model}"}}' if self.flavour != "llamacpp" else ""
        text = (
            f"# HELP {name}:num_requests_running Number of requests running.\n"
            f"# TYPE {name}:num_requests_running gauge\n"
            f"{name}:num_requests_running{label} 0.0\n"
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def _model_info(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse(
            {"model_path": f"Qwen/{self.model}", "tokenizer_path": None, "is_generation": True}
        )

    async def _lms_v0_models(self, request: Request) -> Response:
        await self._record(request)
        loaded = bool(self.instances.get(self.model))
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model,
                        "object": "model",
                        "type": "llm",
                        "publisher": "lmstudio-community",
                        "arch": "qwen2",
                        "compatibility_type": "gguf",
                        "quantization": "Q4_K_M",
                        "state": "loaded" if loaded else "not-loaded",
                        "max_context_length": 32768,
                    },
                    {
                        "id": "text-embedding-nomic-embed-text-v1.5",
                        "object": "model",
                        "type": "embeddings",
                        "publisher": "nomic-ai",
                        "arch": "nomic-bert",
                        "compatibility_type": "gguf",
                        "quantization": "Q4_0",
                        "state": "not-loaded",
                        "max_context_length": 2048,
                    },
                ],
            }
        )

    async def _lms_v1_models(self, request: Request) -> Response:
        await self._record(request)
        models = [
            {
                "type": "llm",
                "publisher": "lmstudio-community",
                "key": key,
                "display_name": key,
                "architecture": "qwen2",
                "quantization": {"name": "Q4_K_M", "bits_per_weight": 4.8},
                "size_bytes": 397808192,
                "params_string": "0.5B",
                "loaded_instances": instances,
                "max_context_length": 32768,
                "format": "gguf",
            }
            for key, instances in self.instances.items()
        ]
        return JSONResponse({"models": models})

    async def _lms_load(self, request: Request) -> Response:
        body = await self._record(request)
        key = body.get("model")
        if key not in self.instances:
            return JSONResponse({"error": {"message": f"Model '{key}' not found"}}, status_code=404)
        existing = self.instances[key]
        instance_id = key if not existing else f"{key}:{len(existing) + 1}"
        config = {
            k: body[k]
            for k in ("context_length", "eval_batch_size", "flash_attention")
            if k in body
        }
        existing.append({"id": instance_id, "config": {"context_length": 4096, **config}})
        return JSONResponse(
            {
                "type": "llm",
                "instance_id": instance_id,
                "load_time_seconds": 1.2,
                "status": "loaded",
            }
        )

    async def _lms_unload(self, request: Request) -> Response:
        body = await self._record(request)
        for instances in self.instances.values():
            instances[:] = [i for i in instances if i["id"] != body.get("instance_id")]
        return JSONResponse({"instance_id": body.get("instance_id")})

    async def _embeddings(self, request: Request) -> Response:
        body = await self._record(request)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [
            {"object": "embedding", "index": i, "embedding": [0.5, float(len(text))]}
            for i, text in enumerate(inputs)
        ]
        data.reverse()  # the index, not the order, says which input a vector belongs to
        usage = {"prompt_tokens": 4, "total_tokens": 4}
        return JSONResponse(
            {"object": "list", "data": data, "model": body["model"], "usage": usage}
        )

    async def _chat(self, request: Request) -> Response:
        body = await self._record(request)
        if self.error is not None:
            status, payload = self.error
            self.error = None
            return JSONResponse(payload, status_code=status)
        if self.flavour in ("vllm", "sglang") and body.get("model") != self.model:
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
        script = self._script()
        self.sent = script
        return StreamingResponse(_sse(script), media_type="text/event-stream")

    async def _completions(self, request: Request) -> Response:
        await self._record(request)
        base = {"id": "cmpl-fake", "object": "text_completion", "created": 1, "model": self.model}
        pieces = ["\n    return", " a + b"]
        chunks: list[dict[str, Any]] = [
            {**base, "choices": [{"index": 0, "text": p, "logprobs": None, "finish_reason": None}]}
            for p in pieces
        ]
        last: dict[str, Any] = {
            **base,
            "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11},
        }
        if self.flavour == "llamacpp":
            last["timings"] = dict(LLAMACPP_TIMINGS)
        chunks.append(last)
        self.sent = chunks
        return StreamingResponse(_sse(chunks), media_type="text/event-stream")

    async def _infill(self, request: Request) -> Response:
        await self._record(request)
        if not self.fim:
            message = (
                "Infill is not supported by this model: prefix token is missing. "
                "suffix token is missing. middle token is missing. "
            )
            error = {"code": 501, "message": message, "type": "not_supported_error"}
            return JSONResponse({"error": error}, status_code=501)
        events: list[dict[str, Any]] = [
            {"index": 0, "content": "a + b", "tokens": [], "stop": False, "id_slot": 0},
            {
                "index": 0,
                "content": "",
                "stop": True,
                "id_slot": 0,
                "stop_type": "eos",
                "tokens_predicted": 3,
                "tokens_evaluated": 12,
                "tokens_cached": 4,
                "timings": dict(LLAMACPP_TIMINGS),
            },
        ]
        self.sent = events
        return StreamingResponse(_sse(events, done=False), media_type="text/event-stream")


async def _sse(chunks: list[dict[str, Any]], done: bool = True) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    if done:  # the native /infill stream is sent without OpenAI's closing [DONE]
        yield b"data: [DONE]\n\n"
