"""The OpenAI-compatible backend: a pass-through to LM Studio, llama-server, vLLM, SGLang, mlx."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import httpx

from autotune.backends.base import Backend
from autotune.backends.llamacpp_tools import forced_call_params, relay_forced_call
from autotune.ground.config import Settings
from autotune.ground.engines import COMPAT_KINDS, EngineSpec, engine
from autotune.ground.errors import (
    BackendError,
    InvalidRequest,
    ModelNotFound,
    NotSupported,
    UpstreamError,
)
from autotune.ground.types import (
    Capabilities,
    ChatRequest,
    Chunk,
    CompletionRequest,
    EngineStats,
    LoadSettings,
    ModelEntry,
    ModelMeta,
    RunningModel,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "ENGINE_LABELS",
    "KINDS",
    "START_HINTS",
    "OpenAICompatBackend",
    "capabilities_for",
    "engine_stats_from_chunk",
    "from_settings",
    "once_more_if_stale",
    "post_chat",
    "sse_events",
    "transport_detail",
]

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: What a probe can tell apart; ``mlx`` is only ever forced (it looks like a generic server).
KINDS = COMPAT_KINDS
ENGINE_LABELS = {kind: engine(kind).label for kind in KINDS}
START_HINTS = {kind: engine(kind).start_hint for kind in KINDS}

#: Long reads: the first token can wait for a JIT load (LM Studio) or a long prefill.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)

_PROBE_TIMEOUT = httpx.Timeout(3.0, connect=2.0)
_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0", ""}
_MODEL_MISSING = re.compile(
    r"model\b.*\b(not found|does not exist|not exist|no such|not loaded|unknown)"
    r"|(unknown|invalid|no such) model",
    re.IGNORECASE | re.DOTALL,
)


def capabilities_for(kind: str, *, remote: bool = False) -> Capabilities:
    """What autotune may do with a server of this kind (as found by :meth:`probe`)."""
    if kind == "llamacpp":
        # Context, batch, flash attention and KV types are launch flags of whoever started it.
        caps = Capabilities(
            prefix_cache=True,
            reports_cached_tokens=True,
            tokenize=True,
            running_models=True,
            embeddings=False,  # only with `--embeddings`, which a chat server is rarely given
        )
    elif kind == "lmstudio":
        caps = Capabilities(
            load_control=True,  # POST /api/v1/models/load {model, context_length, …}
            flash_attention=True,
            prefix_cache=True,
            embeddings=True,
            running_models=True,
            keep_alive=True,  # per-request `ttl` seconds
            unload=True,
        )
    elif kind in ("vllm", "sglang"):
        # cached_tokens needs vLLM --enable-prompt-tokens-details / SGLang --enable-cache-report.
        caps = Capabilities(
            prefix_cache=True, reports_cached_tokens=True, embeddings=True, running_models=True
        )
    elif kind == "mlx":
        # mlx_lm grows its KV cache with the prompt: no preallocated context to reload for.
        caps = Capabilities(
            context_change_reloads=False, prefix_cache=True, reports_cached_tokens=True
        )
    else:
        caps = Capabilities(prefix_cache=False, embeddings=True)
    return dataclasses.replace(caps, remote=True) if remote else caps


def engine_stats_from_chunk(data: Mapping[str, Any]) -> EngineStats | None:
    """:class:`EngineStats` from a final chunk's ``usage``, llama.cpp ``timings`` or LM Studio
    ``stats``; ``None`` when the chunk carries none of them."""
    usage = data.get("usage") or None
    timings = data.get("timings") or None
    lms = data.get("stats") or None  # LM Studio /api/v0 responses
    if not (isinstance(usage, Mapping) or isinstance(timings, Mapping) or isinstance(lms, Mapping)):
        return None
    stats = EngineStats()
    if isinstance(usage, Mapping):
        _add_usage(stats, usage)
    if isinstance(timings, Mapping):
        _add_llamacpp_timings(stats, timings)
    if isinstance(lms, Mapping):
        _add_lmstudio_stats(stats, lms)
    return stats


def _add_usage(stats: EngineStats, usage: Mapping[str, Any]) -> None:
    stats.prompt_tokens = usage.get("prompt_tokens")
    stats.completion_tokens = usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details")
    if isinstance(details, Mapping):
        stats.cached_tokens = details.get("cached_tokens")
    stats.raw["usage"] = dict(usage)


def _add_llamacpp_timings(stats: EngineStats, timings: Mapping[str, Any]) -> None:
    """Counts the usage left out, and the prompt and decode times."""
    # llama.cpp: prompt_n counts only the tokens it computed; cache_n those reused from cache,
    # so usage.prompt_tokens = prompt_n + cache_n.
    prompt_n, cache_n = timings.get("prompt_n"), timings.get("cache_n")
    if stats.cached_tokens is None and cache_n is not None:
        stats.cached_tokens = cache_n
    if stats.prompt_tokens is None and prompt_n is not None:
        stats.prompt_tokens = prompt_n + (cache_n or 0)
    if stats.completion_tokens is None:
        stats.completion_tokens = timings.get("predicted_n")
    stats.prompt_ms = timings.get("prompt_ms")
    stats.decode_ms = timings.get("predicted_ms")
    stats.raw["timings"] = dict(timings)


def _add_lmstudio_stats(stats: EngineStats, lms: Mapping[str, Any]) -> None:
    """The times llama.cpp timings left out, from LM Studio's seconds."""
    ttft, gen = lms.get("time_to_first_token"), lms.get("generation_time")
    if stats.prompt_ms is None and isinstance(ttft, (int, float)):
        stats.prompt_ms = ttft * 1000.0  # seconds; includes a JIT load when there was one
    if stats.decode_ms is None and isinstance(gen, (int, float)):
        stats.decode_ms = gen * 1000.0
    stats.raw["stats"] = dict(lms)


def _is_remote(url: str) -> bool:
    return (urlsplit(url).hostname or "") not in _LOCAL_HOSTS


#: Transport failures on the aiohttp stream path (a timeout included).
_AIO_TRANSPORT = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


async def sse_events(content: aiohttp.StreamReader) -> AsyncIterator[tuple[str, str]]:
    """Server-sent events as ``(event, data)`` pairs, from an aiohttp response body.

    Lines are split here rather than with aiohttp's line reader, which refuses lines over
    64 KiB (a chunk carrying logprobs can be long).
    """
    kind, buffer = "message", b""
    data: list[str] = []
    async for piece in content.iter_any():
        buffer += piece
        *lines, buffer = buffer.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8").rstrip("\r")
            if not line:
                if data:
                    yield kind, "\n".join(data)
                kind, data = "message", []
                continue
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                data.append(value)
            elif field == "event":
                kind = value
    if buffer.strip():
        field, _, value = buffer.decode("utf-8").rstrip("\r").partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield kind, "\n".join(data)


def transport_detail(exc: BaseException) -> str:
    """A few words on why a connection failed, for "engine unavailable" messages."""
    if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError)):
        return "timed out"
    if isinstance(exc, (httpx.ConnectError, ConnectionError, aiohttp.ClientConnectorError)):
        return "connection refused"
    return type(exc).__name__


def _json_or_none(response: Any) -> Any:
    if not isinstance(response, httpx.Response) or response.status_code != 200:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _metrics_kind(reply: Any) -> str | None:
    """vLLM, SGLang and llama.cpp name their Prometheus metrics "vllm:…", "sglang:…" …"""
    text = reply.text if isinstance(reply, httpx.Response) and reply.is_success else ""
    for prefix, kind in (("vllm:", "vllm"), ("sglang:", "sglang"), ("llamacpp:", "llamacpp")):
        if prefix in text:
            return kind
    return None


def _error_text(status: int, text: str) -> str:
    try:
        payload = json.loads(text)
    except ValueError:
        return text.strip()[:500] or f"HTTP {status}"
    if isinstance(payload, Mapping):
        error = payload.get("error")
        if isinstance(error, Mapping) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str) and error:
            return error
        for key in ("message", "detail"):
            if payload.get(key):
                return str(payload[key])
    return text.strip()[:500] or f"HTTP {status}"


#: llama-server answers 500 to some requests it cannot serve (seen: an image or audio part
#: for a text-only model, "image input is not supported"; a text part without text, "Failed
#: to parse messages"): they are the client's to fix, so autotune answers 400.
_LLAMACPP_REQUEST_FAULT = re.compile(
    r"input is not supported|Failed to parse messages|unsupported content", re.IGNORECASE
)


async def once_more_if_stale(
    send: Callable[[], Awaitable[_T]],
    stale: tuple[type[BaseException], ...],
    *,
    refused: tuple[type[BaseException], ...] = (),
) -> _T:
    """``send()``, and once more when the kept-alive connection it went out on was stale.

    llama-server closes a kept-alive connection after streamed replies without saying so
    (seen: every third back-to-back streamed request on one connection failed with "Server
    disconnected without sending a response", despite ``Keep-Alive: timeout=5, max=100``).
    Nothing came back, so the engine never ran the request: one retry on a fresh connection
    is safe. ``refused`` (a kind of ``stale`` error that means the engine is down) is raised.
    """
    try:
        return await send()
    except refused:
        raise
    except stale:
        pass
    return await send()


async def post_chat(http: httpx.AsyncClient, url: str, body: dict[str, Any]) -> httpx.Response:
    """A non-streaming POST to a llama-server, retried once on a stale kept-alive connection."""
    return await once_more_if_stale(lambda: http.post(url, json=body), (httpx.RemoteProtocolError,))


class OpenAICompatBackend(Backend):
    """Any OpenAI-compatible server over one pooled ``httpx.AsyncClient``; chunks pass unchanged.

    Subclasses whose server URL is known only later (one server per model) override
    :meth:`_url_for`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        name: str = "openai",
        api_key: str | None = None,
        kind: str | None = None,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
    ) -> None:
        if kind is not None and kind not in KINDS:
            raise ValueError(f"unknown server kind {kind!r}; choose one of {', '.join(KINDS)}")
        # Accept ".../v1" as people copy it from client settings; paths here add /v1 themselves.
        url = base_url.rstrip("/")
        self.base_url = url[: -len("/v1")] if url.endswith("/v1") else url
        self.name = name
        self._remote = _is_remote(self.base_url)
        self._kind_known = kind is not None
        self._set_kind(kind or "openai")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._http = httpx.AsyncClient(timeout=timeout, headers=headers)
        self._headers = headers or {}
        # The chat stream (the hot path) uses aiohttp: measured on loopback, a streamed
        # request cost 0.23 ms with aiohttp and 0.59 ms with httpx. Created lazily, in the loop.
        self._aio: aiohttp.ClientSession | None = None
        self._probe_lock = asyncio.Lock()
        self._load_lock = asyncio.Lock()
        #: What the probe saw (llama.cpp ``/props``, LM Studio model list …), for diagnostics.
        self.probe_info: dict[str, Any] = {}

    def _set_kind(self, kind: str) -> None:
        self.kind = kind
        self.capabilities = capabilities_for(kind, remote=self._remote)
        self.start_hint = START_HINTS.get(kind, START_HINTS["openai"])

    @property
    def engine(self) -> str:
        """A readable engine name for messages, e.g. ``"LM Studio"``."""
        return ENGINE_LABELS.get(self.kind, self.name)

    async def _url_for(self, model: str | None) -> str:
        """The server that serves ``model`` (``None``: any); override when it is decided later."""
        return self.base_url

    # ---------------------------------------------------------------- probe

    async def probe(self) -> str:
        """Find out which server this is (once; cached) and set ``kind`` and ``capabilities``."""
        if self._kind_known:
            return self.kind
        async with self._probe_lock:
            if not self._kind_known:
                self._set_kind(await self._detect(await self._url_for(None)))
                if self.kind == "lmstudio" and await self._lmstudio_models_v1() is None:
                    self._without_load_api()
                self._kind_known = True
        return self.kind

    def _without_load_api(self) -> None:
        # LM Studio before 0.4 has /api/v0 but no /api/v1 load/unload: settings live in the app.
        self.capabilities = dataclasses.replace(
            self.capabilities, load_control=False, flash_attention=False, unload=False
        )

    async def _detect(self, root: str) -> str:
        """The server's kind, from what it answers on the paths only one kind of server has."""
        props, lms_models, metrics, model_info = await self._probe_replies(root)
        return (
            self._llamacpp_props(props)
            or self._lmstudio_models_v0(lms_models)
            or _metrics_kind(metrics)
            or self._sglang_model_info(model_info)
            or "openai"  # mlx_lm.server and anything else: only /v1/* and /health
        )

    async def _probe_replies(self, root: str) -> list[Any]:
        """GET /props, /api/v0/models, /metrics, /get_model_info at once (a failure in place of
        its response); raises when none answered."""
        paths = ("/props", "/api/v0/models", "/metrics", "/get_model_info")
        replies = await asyncio.gather(
            *(self._http.get(root + p, timeout=_PROBE_TIMEOUT) for p in paths),
            return_exceptions=True,
        )
        if all(isinstance(r, BaseException) for r in replies):
            first = next(r for r in replies if isinstance(r, BaseException))
            if isinstance(first, (httpx.TransportError, OSError)):
                raise self.unavailable(transport_detail(first))
            raise first
        return list(replies)

    def _llamacpp_props(self, reply: Any) -> str | None:
        # llama-server: GET /props has default_generation_settings and total_slots.
        body = _json_or_none(reply)
        if isinstance(body, Mapping) and (
            "default_generation_settings" in body or "total_slots" in body
        ):
            self.probe_info["props"] = dict(body)
            return "llamacpp"
        return None

    def _lmstudio_models_v0(self, reply: Any) -> str | None:
        # LM Studio: GET /api/v0/models lists models with their `state` (loaded / not-loaded).
        body = _json_or_none(reply)
        if isinstance(body, Mapping) and isinstance(body.get("data"), list):
            self.probe_info["models"] = body["data"]
            return "lmstudio"
        return None

    def _sglang_model_info(self, reply: Any) -> str | None:
        # SGLang without --enable-metrics still answers GET /get_model_info {model_path, …}.
        body = _json_or_none(reply)
        if isinstance(body, Mapping) and "model_path" in body:
            self.probe_info["model_info"] = dict(body)
            return "sglang"
        return None

    # ---------------------------------------------------------------- HTTP helpers

    def _error_for(self, response: httpx.Response, model: str | None) -> BackendError:
        return self._error_from(response.status_code, response.text, model)

    def _error_from(self, status: int, text: str, model: str | None) -> BackendError:
        message = _error_text(status, text)
        # vLLM: 404 "The model `x` does not exist."; a bare 404 is more likely a wrong URL.
        if model and status in (400, 404) and _MODEL_MISSING.search(message):
            return ModelNotFound(model)
        if status == 500 and self.kind == "llamacpp" and _LLAMACPP_REQUEST_FAULT.search(message):
            status = 400  # the request asked for something this server cannot do
        return UpstreamError(status, message, self.engine)

    async def _request(
        self, method: str, url: str, *, model: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        try:
            response = await self._http.request(method, url, **kwargs)
        except httpx.TransportError as exc:
            raise self.unavailable(transport_detail(exc)) from None
        if response.status_code >= 400:
            raise self._error_for(response, model)
        return response

    async def _get_json(self, path: str, *, model: str | None = None) -> Any:
        root = await self._url_for(model)
        return (await self._request("GET", root + path, model=model)).json()

    # ---------------------------------------------------------------- Backend API

    async def health(self) -> bool:
        root = await self._url_for(None)
        try:
            response = await self._http.get(root + "/health", timeout=_PROBE_TIMEOUT)
            if response.status_code == 200:
                return True
            if response.status_code == 503:  # llama-server: still loading the model
                return False
            response = await self._http.get(root + "/v1/models", timeout=_PROBE_TIMEOUT)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def list_models(self) -> list[ModelEntry]:
        await self.probe()
        if self.kind == "lmstudio":
            data = (await self._get_json("/api/v0/models")).get("data", [])
            return [self._lmstudio_entry(m) for m in data if isinstance(m, Mapping)]
        data = (await self._get_json("/v1/models")).get("data", [])
        return [self._openai_entry(m) for m in data if isinstance(m, Mapping)]

    def _lmstudio_entry(self, m: Mapping[str, Any]) -> ModelEntry:
        name = str(m.get("id", ""))
        meta = ModelMeta(
            name=name,
            architecture=m.get("arch"),
            context_length=m.get("max_context_length"),
            quantization=m.get("quantization"),
        )
        return ModelEntry(
            name=name,
            backend=self.name,
            quantization=m.get("quantization"),
            family=m.get("arch"),
            meta=meta,
        )

    def _openai_entry(self, m: Mapping[str, Any]) -> ModelEntry:
        name = str(m.get("id", ""))
        meta_field = m.get("meta")
        extra: Mapping[str, Any] = meta_field if isinstance(meta_field, Mapping) else {}
        # llama.cpp adds meta {n_ctx_train, n_params, n_embd, n_vocab, size}; vLLM max_model_len.
        meta = ModelMeta(
            name=name,
            context_length=extra.get("n_ctx_train") or m.get("max_model_len"),
            parameter_count=extra.get("n_params"),
            embedding_length=extra.get("n_embd"),
            vocab_size=extra.get("n_vocab"),
            size_bytes=extra.get("size"),
        )
        return ModelEntry(name=name, backend=self.name, size_bytes=extra.get("size"), meta=meta)

    async def running_models(self) -> list[RunningModel]:
        await self.probe()
        if not self.capabilities.running_models:
            raise NotSupported(f"{self.engine} cannot list running models.")
        if self.kind == "lmstudio":
            return await self._lmstudio_running()
        if self.kind == "llamacpp":
            props = await self._get_json("/props")
            models = (await self._get_json("/v1/models")).get("data", [])
            path = str(props.get("model_path") or "")
            name = models[0].get("id") if models else os.path.basename(path)
            settings = props.get("default_generation_settings") or {}
            return [
                RunningModel(
                    name=str(name),
                    backend=self.name,
                    # llama-server reports the context of one slot (n_ctx / parallel slots).
                    context_length=settings.get("n_ctx"),
                    settings={"n_parallel": props.get("total_slots"), "model_path": path},
                )
            ]
        # vLLM / SGLang serve exactly the models they list, all resident.
        models = (await self._get_json("/v1/models")).get("data", [])
        return [
            RunningModel(
                name=str(m.get("id", "")),
                backend=self.name,
                context_length=m.get("max_model_len"),
            )
            for m in models
            if isinstance(m, Mapping)
        ]

    async def _lmstudio_models_v1(self) -> list[Mapping[str, Any]] | None:
        """LM Studio ≥ 0.4 ``GET /api/v1/models`` (with loaded instances), or None when older."""
        root = await self._url_for(None)
        try:
            response = await self._http.get(root + "/api/v1/models")
        except httpx.TransportError as exc:
            raise self.unavailable(transport_detail(exc)) from None
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise self._error_for(response, None)
        return [m for m in response.json().get("models", []) if isinstance(m, Mapping)]

    async def _lmstudio_running(self) -> list[RunningModel]:
        models = await self._lmstudio_models_v1()
        if models is None:  # older LM Studio: /api/v0 says which are loaded, not how
            data = (await self._get_json("/api/v0/models")).get("data", [])
            return [
                RunningModel(
                    name=str(m.get("id", "")),
                    backend=self.name,
                    context_length=m.get("loaded_context_length"),
                    quantization=m.get("quantization"),
                )
                for m in data
                if isinstance(m, Mapping) and m.get("state") == "loaded"
            ]
        running = []
        for m in models:
            quant = m.get("quantization")
            for instance in m.get("loaded_instances") or []:
                config = dict(instance.get("config") or {})
                running.append(
                    RunningModel(
                        name=str(m.get("key", instance.get("id", ""))),
                        backend=self.name,
                        size_bytes=m.get("size_bytes"),
                        context_length=config.get("context_length"),
                        quantization=quant.get("name") if isinstance(quant, Mapping) else None,
                        settings={"instance_id": instance.get("id"), **config},
                    )
                )
        return running

    async def tokenize(self, model: str, text: str) -> list[int]:
        await self.probe()
        if not self.capabilities.tokenize:
            raise NotSupported(f"{self.engine} has no tokenizer endpoint.")
        root = await self._url_for(model)
        reply = await self._request("POST", root + "/tokenize", model=model, json={"content": text})
        tokens = reply.json().get("tokens", [])
        # With `with_pieces` llama.cpp returns {id, piece} objects instead of bare ids.
        return [int(t["id"]) if isinstance(t, Mapping) else int(t) for t in tokens]

    async def slot_action(
        self, model: str, slot: int, action: str, filename: str
    ) -> dict[str, Any]:
        """llama-server's ``POST /slots/{slot}?action=save|restore`` with ``filename`` (in the
        folder the server was started with: ``--slot-save-path``)."""
        root = await self._url_for(model)
        reply = await self._request(
            "POST", f"{root}/slots/{slot}", params={"action": action}, json={"filename": filename}
        )
        body = reply.json()
        return dict(body) if isinstance(body, Mapping) else {}

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        await self.probe()
        root = await self._url_for(model)
        body = {"model": model, "input": texts}
        reply = await self._request("POST", root + "/v1/embeddings", model=model, json=body)
        data = sorted(reply.json().get("data", []), key=lambda d: d.get("index", 0))
        return [[float(x) for x in d.get("embedding", [])] for d in data]

    # ---------------------------------------------------------------- load control (LM Studio)

    async def load(self, model: str, settings: LoadSettings | None = None) -> bool:
        await self.probe()
        if not self.capabilities.load_control:
            raise NotSupported(f"{self.engine} is loaded by whoever started it, not by autotune.")
        async with self._load_lock:
            if await self._lmstudio_load(model, settings, force=True) is None:
                raise NotSupported(f"{self.engine} is too old to load models through its API.")
        return True

    async def unload(self, model: str) -> None:
        await self.probe()
        if not self.capabilities.unload:
            raise NotSupported(f"{self.engine} does not let autotune unload models.")
        for instance in await self._lmstudio_instances(model) or []:
            await self._lmstudio_unload(str(instance.get("id")))

    async def _lmstudio_instances(self, model: str) -> list[Mapping[str, Any]] | None:
        """The loaded instances of ``model``; None when the server has no /api/v1 REST API."""
        models = await self._lmstudio_models_v1()
        if models is None:
            return None
        return [
            instance
            for m in models
            for instance in m.get("loaded_instances") or []
            if model in (m.get("key"), instance.get("id"))
        ]

    async def _lmstudio_unload(self, instance_id: str) -> None:
        root = await self._url_for(None)
        await self._request(
            "POST", root + "/api/v1/models/unload", json={"instance_id": instance_id}
        )

    async def _lmstudio_load(
        self, model: str, settings: LoadSettings | None, *, force: bool
    ) -> dict[str, Any] | bool | None:
        """Load ``model`` unless an instance already has ``settings``. The load reply when it
        loaded, False when it was already loaded so, None when the server has no load API."""
        instances = await self._lmstudio_instances(model)
        if instances is None:
            self._without_load_api()
            log.warning(
                "%s has no /api/v1 load API; %s keeps its own load settings", self.engine, model
            )
            return None
        if (
            not force
            and settings is not None
            and any(_config_matches(i.get("config") or {}, settings) for i in instances)
        ):
            return False
        # Each load call adds an instance ("model:2"…) rather than replacing one: unload first.
        for instance in instances:
            await self._lmstudio_unload(str(instance.get("id")))
        # The load body is flat (docs: /api/v1/models/load), not nested under "config".
        body: dict[str, Any] = {"model": model}
        if settings is not None:
            body["context_length"] = settings.n_ctx
            if settings.n_batch is not None:
                body["eval_batch_size"] = settings.n_batch
            if settings.flash_attn is not None:
                body["flash_attention"] = settings.flash_attn
        root = await self._url_for(model)
        reply = await self._request("POST", root + "/api/v1/models/load", model=model, json=body)
        try:
            loaded = reply.json()
        except ValueError:
            loaded = {}
        return dict(loaded) if isinstance(loaded, Mapping) else {}

    # ---------------------------------------------------------------- chat

    def _chat_body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model, "messages": request.messages}
        body.update(request.params)
        body["stream"] = True
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, Mapping) else {})}
        body["stream_options"]["include_usage"] = True
        keep = request.keep_alive
        if self.capabilities.keep_alive and keep is not None and keep >= 0:
            # LM Studio's idle TTL is whole seconds; "forever" is simply no ttl.
            body["ttl"] = max(1, math.ceil(keep))
        return body

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        await self.probe()
        loaded: dict[str, Any] | bool | None = None
        if request.load is not None and self.capabilities.load_control:
            async with self._load_lock:
                loaded = await self._lmstudio_load(request.model, request.load, force=False)
        # Without load control, launch-time settings belong to whoever started the server.
        root = await self._url_for(request.model)
        body = self._chat_body(request)
        # llama.cpp lets text come before a required call: ask for the call as a schema.
        forced = forced_call_params(body) if self.kind == "llamacpp" else None
        try:
            reply = await self._open_stream(root + "/v1/chat/completions", forced or body)
        except _AIO_TRANSPORT as exc:
            raise self.unavailable(transport_detail(exc)) from None
        try:
            if reply.status >= 400:
                raise self._error_from(reply.status, await reply.text(), request.model)
            content_type = reply.headers.get("content-type", "")
            if "text/event-stream" not in content_type:
                raise UpstreamError(
                    502, f"expected an event stream, got {content_type or 'nothing'}", self.engine
                )
            chunks = self._relay(sse_events(reply.content), loaded)
            async for chunk in relay_forced_call(chunks) if forced else chunks:
                yield chunk
        except _AIO_TRANSPORT as exc:
            raise self.unavailable(transport_detail(exc)) from None
        finally:
            reply.release()

    async def _open_stream(self, url: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """POST and return the streaming response, retried once on a stale kept-alive
        connection (see :func:`once_more_if_stale`)."""
        session = self._session()
        # aiohttp reports a stale connection as a disconnect, or as a reset / broken pipe while
        # sending; a refused connection (a ClientOSError too) means the engine is down.
        return await once_more_if_stale(
            lambda: session.post(url, json=body),
            (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError),
            refused=(aiohttp.ClientConnectorError,),
        )

    async def _relay(
        self,
        events: AsyncIterator[tuple[str, str]],
        loaded: dict[str, Any] | bool | None = None,
    ) -> AsyncIterator[Chunk]:
        """Pass chunks through as they come; hold back only the closing ones (finish_reason,
        usage, timings) so the very last chunk can carry the engine's stats. ``loaded`` is what
        the LM Studio load step did for this request (see :meth:`_lmstudio_load`)."""
        held: dict[str, Any] | None = None
        final: dict[str, Any] = {}
        done = False
        async for kind, text in events:
            # Read on past [DONE] to the end of the response: a fully read response hands its
            # connection back to the pool; an abandoned one costs a new TCP connection next time.
            done = done or text == "[DONE]"
            if done or not text:
                continue
            data = self._event_data(kind, text)
            if held is not None:
                yield Chunk(held)
                held = None
            if _closing(data, final):
                held = data
            else:
                yield Chunk(data)
        if held is not None:
            yield Chunk(held, _final_stats(final, loaded))

    def _event_data(self, kind: str, text: str) -> dict[str, Any]:
        """One event's chunk; an unreadable event or an error event raises UpstreamError."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise UpstreamError(502, f"unreadable event: {text[:120]!r}", self.engine) from None
        if not isinstance(data, dict):
            raise UpstreamError(502, f"unexpected event: {text[:120]!r}", self.engine)
        if kind == "error" or ("error" in data and "choices" not in data):
            error = data.get("error", data)
            message = error.get("message") if isinstance(error, Mapping) else error
            raise UpstreamError(500, str(message), self.engine)
        return data

    # ---------------------------------------------------------------- completions

    def _completion_body(self, request: CompletionRequest) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model, "prompt": request.prompt}
        body.update(request.params)
        if request.suffix is not None:
            body["suffix"] = request.suffix
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        return body

    async def stream_completion(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        """``/v1/completions``; with a ``suffix`` on llama.cpp, its ``/infill`` (which builds
        the fill-in-the-middle prompt from the model's FIM tokens)."""
        await self.probe()
        root = await self._url_for(request.model)
        infill = request.suffix is not None and self.kind == "llamacpp"
        if infill:
            url, body = root + "/infill", _infill_body(request)
        else:
            url, body = root + "/v1/completions", self._completion_body(request)
        try:
            reply = await self._open_stream(url, body)
        except _AIO_TRANSPORT as exc:
            raise self.unavailable(transport_detail(exc)) from None
        try:
            if reply.status >= 400:
                text = await reply.text()
                if infill and reply.status == 501:
                    raise _no_fim(request.model, _error_text(reply.status, text))
                raise self._error_from(reply.status, text, request.model)
            events = sse_events(reply.content)
            if infill:
                events = _infill_as_completions(events, request.model)
            async for chunk in self._relay(events):
                yield chunk
        except _AIO_TRANSPORT as exc:
            raise self.unavailable(transport_detail(exc)) from None
        finally:
            reply.release()

    async def aclose(self) -> None:
        await self._http.aclose()
        if self._aio is not None:
            await self._aio.close()

    def _session(self) -> aiohttp.ClientSession:
        if self._aio is None or self._aio.closed:
            self._aio = aiohttp.ClientSession(
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=600),
                connector=aiohttp.TCPConnector(limit=0),
            )
        return self._aio


def _closing(data: Mapping[str, Any], final: dict[str, Any]) -> bool:
    """Whether a chunk closes the reply (stats or a finish reason); its stats go to ``final``."""
    closing = False
    for key in ("usage", "timings", "stats"):
        if data.get(key):
            final[key] = data[key]
            closing = True
    return closing or any(c.get("finish_reason") for c in data.get("choices") or ())


def _final_stats(
    final: Mapping[str, Any], loaded: dict[str, Any] | bool | None
) -> EngineStats | None:
    """The stats of the closing chunks, with what the LM Studio load step did (when it ran)."""
    stats = engine_stats_from_chunk(final)
    if loaded is None:
        return stats
    stats = stats or EngineStats()
    stats.reloaded = loaded is not False
    if isinstance(loaded, dict):
        seconds = loaded.get("load_time_seconds")
        if isinstance(seconds, (int, float)):
            stats.load_ms = seconds * 1000.0
        stats.raw["load"] = loaded
    return stats


#: OpenAI completion fields under llama.cpp's native (/completion, /infill) names.
_NATIVE_NAMES = {"max_tokens": "n_predict", "logprobs": "n_probs"}


def _infill_body(request: CompletionRequest) -> dict[str, Any]:
    """llama.cpp ``/infill``: prefix and suffix; the other options of ``/completion``."""
    body: dict[str, Any] = {
        "input_prefix": request.prompt,
        "input_suffix": request.suffix or "",
        "stream": True,
    }
    for key, value in request.params.items():
        body[_NATIVE_NAMES.get(key, key)] = value
    return body


def _no_fim(model: str, detail: str) -> InvalidRequest:
    return InvalidRequest(
        f"{model} has no fill-in-the-middle tokens, so 'suffix' cannot be honoured "
        f"(the engine said: {detail.strip()}). Use a code model trained for infill "
        "(Qwen2.5-Coder, StarCoder2, CodeGemma …), or leave 'suffix' out.",
        param="suffix",
        code="fim_not_supported",
    )


async def _infill_as_completions(
    events: AsyncIterator[tuple[str, str]], model: str
) -> AsyncIterator[tuple[str, str]]:
    """llama.cpp's native stream (``{"content", "stop", …}``) as ``text_completion`` chunks:
    the last one with ``usage`` and ``timings``, as its OpenAI-compatible routes send them."""
    created = int(time.time())
    async for kind, text in events:
        if not text or text == "[DONE]":
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            yield kind, text  # _event_data reports it
            continue
        if not isinstance(data, dict) or "content" not in data:
            yield kind, text  # an error event: _event_data raises it
            continue
        yield kind, json.dumps(_native_chunk(data, model, created))


def _native_chunk(data: Mapping[str, Any], model: str, created: int) -> dict[str, Any]:
    finish = None
    if data.get("stop"):
        finish = "length" if data.get("stop_type") == "limit" else "stop"
    choice: dict[str, Any] = {
        "index": 0,
        "text": data.get("content", ""),
        "logprobs": None,
        "finish_reason": finish,
    }
    probs = data.get("completion_probabilities")
    if probs:
        choice["logprobs"] = {"content": probs}
    chunk: dict[str, Any] = {
        "id": "cmpl-" + str(data.get("id_slot", 0)) + "-" + str(created),
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
    }
    if data.get("stop"):
        prompt, cached = data.get("tokens_evaluated"), data.get("tokens_cached")
        completion = data.get("tokens_predicted")
        if prompt is not None:
            chunk["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion or 0,
                "total_tokens": prompt + (completion or 0),
                "prompt_tokens_details": {"cached_tokens": cached or 0},
            }
        if data.get("timings"):
            chunk["timings"] = data["timings"]
    return chunk


def _config_matches(config: Mapping[str, Any], settings: LoadSettings) -> bool:
    if config.get("context_length") != settings.n_ctx:
        return False
    if settings.n_batch is not None and config.get("eval_batch_size") != settings.n_batch:
        return False
    return settings.flash_attn is None or config.get("flash_attention") == settings.flash_attn


def from_settings(spec: EngineSpec, settings: Settings) -> OpenAICompatBackend:
    """An OpenAI-compatible engine at its configured URL (the engine table's builder)."""
    url = getattr(settings, spec.url_setting, None) if spec.url_setting else None
    if not url:
        setting = f"AUTOTUNE_{(spec.url_setting or 'openai_url').upper()}"
        raise BackendError(f"No URL set for {spec.label}.", hint=f"Set {setting} to its base URL.")
    api_key = settings.openai_api_key if spec.name == "openai" else None
    kind = spec.name if spec.name != "openai" else None  # a generic server is probed
    return OpenAICompatBackend(url, name=spec.name, api_key=api_key, kind=kind)
