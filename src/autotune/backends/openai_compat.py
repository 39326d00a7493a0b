"""The OpenAI-compatible backend: a pass-through to LM Studio, llama-server, vLLM, SGLang, mlx.

The backend holds the connections and the order of things; what it sends and how it reads
the answers is :mod:`.compat_wire` (pure), how it talks HTTP is :mod:`.compat_http`, and LM
Studio's own load API is :mod:`.compat_lmstudio`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import httpx

from autotune.backends.base import Backend
from autotune.backends.compat_http import (
    AIO_TRANSPORT,
    DEFAULT_TIMEOUT,
    PROBE_TIMEOUT,
    is_remote,
    json_or_none,
    once_more_if_stale,
    post_chat,
    sse_events,
    text_or_none,
    transport_detail,
)
from autotune.backends.compat_lmstudio import LmStudio
from autotune.backends.compat_wire import (
    ENGINE_LABELS,
    KINDS,
    START_HINTS,
    capabilities_for,
    chat_body,
    closing,
    completion_body,
    detect_kind,
    engine_error,
    engine_stats_from_chunk,
    error_text,
    event_data,
    final_stats,
    infill_as_completions,
    infill_body,
    llamacpp_running,
    lmstudio_entry,
    no_fim,
    openai_entry,
)
from autotune.backends.llamacpp_tools import forced_call_params, relay_forced_call
from autotune.ground.config import Settings
from autotune.ground.engines import EngineSpec
from autotune.ground.errors import BackendError, NotSupported, UpstreamError
from autotune.ground.types import (
    ChatRequest,
    Chunk,
    CompletionRequest,
    LoadSettings,
    ModelEntry,
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

#: The paths only one kind of server answers, asked at once by a probe.
_PROBE_PATHS = ("/props", "/api/v0/models", "/metrics", "/get_model_info")


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
        self._remote = is_remote(self.base_url)
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
        self._lmstudio = LmStudio(self)
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
                if self.kind == "lmstudio" and await self._lmstudio.models_v1() is None:
                    self._without_load_api()
                self._kind_known = True
        return self.kind

    def _without_load_api(self) -> None:
        # LM Studio before 0.4 has /api/v0 but no /api/v1 load/unload: settings live in the app.
        self.capabilities = dataclasses.replace(
            self.capabilities, load_control=False, flash_attention=False, unload=False
        )

    async def _detect(self, root: str) -> str:
        """The server's kind, from what it answers on the paths only one kind of server has
        (asked at once; a failure in place of an answer; raises when none answered)."""
        replies = await asyncio.gather(
            *(self._http.get(root + p, timeout=PROBE_TIMEOUT) for p in _PROBE_PATHS),
            return_exceptions=True,
        )
        if all(isinstance(r, BaseException) for r in replies):
            first = next(r for r in replies if isinstance(r, BaseException))
            if isinstance(first, (httpx.TransportError, OSError)):
                raise self.unavailable(transport_detail(first))
            raise first
        props, lms_models, metrics, model_info = replies
        kind, seen = detect_kind(
            json_or_none(props),
            json_or_none(lms_models),
            text_or_none(metrics),
            json_or_none(model_info),
        )
        self.probe_info.update(seen)
        return kind

    # ---------------------------------------------------------------- HTTP helpers

    def _error_for(self, response: httpx.Response, model: str | None) -> BackendError:
        return self._error_from(response.status_code, response.text, model)

    def _error_from(self, status: int, text: str, model: str | None) -> BackendError:
        return engine_error(status, text, model, kind=self.kind, engine=self.engine)

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
            response = await self._http.get(root + "/health", timeout=PROBE_TIMEOUT)
            if response.status_code == 200:
                return True
            if response.status_code == 503:  # llama-server: still loading the model
                return False
            response = await self._http.get(root + "/v1/models", timeout=PROBE_TIMEOUT)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def list_models(self) -> list[ModelEntry]:
        await self.probe()
        if self.kind == "lmstudio":
            data = (await self._get_json("/api/v0/models")).get("data", [])
            return [lmstudio_entry(m, self.name) for m in data if isinstance(m, Mapping)]
        data = (await self._get_json("/v1/models")).get("data", [])
        return [openai_entry(m, self.name) for m in data if isinstance(m, Mapping)]

    async def running_models(self) -> list[RunningModel]:
        await self.probe()
        if not self.capabilities.running_models:
            raise NotSupported(f"{self.engine} cannot list running models.")
        if self.kind == "lmstudio":
            return await self._lmstudio.running()
        models = (await self._get_json("/v1/models")).get("data", [])
        if self.kind == "llamacpp":
            return [llamacpp_running(await self._get_json("/props"), models, self.name)]
        # vLLM / SGLang serve exactly the models they list, all resident.
        return [
            RunningModel(
                name=str(m.get("id", "")), backend=self.name, context_length=m.get("max_model_len")
            )
            for m in models
            if isinstance(m, Mapping)
        ]

    async def tokenize(self, model: str, text: str) -> list[int]:
        await self.probe()
        if not self.capabilities.tokenize:
            raise NotSupported(f"{self.engine} has no tokenizer endpoint.")
        root = await self._url_for(model)
        reply = await self._request("POST", root + "/tokenize", model=model, json={"content": text})
        tokens = reply.json().get("tokens", [])
        # With `with_pieces` llama.cpp returns {id, piece} objects instead of bare ids.
        return [int(t["id"]) if isinstance(t, Mapping) else int(t) for t in tokens]

    async def tokenize_prompt(self, request: ChatRequest, raw: str | None = None) -> list[int]:
        """llama-server's own view of a prompt: ``/apply-template`` renders the chat (tools
        and template options included, from the same body the chat sends), then
        ``/tokenize`` with the special tokens the completion adds itself (its BOS)."""
        await self.probe()
        if self.kind != "llamacpp":
            raise NotSupported(f"{self.engine} cannot show a prompt's tokens.")
        root = await self._url_for(request.model)
        if raw is None:
            body = chat_body(request, ttl=self.capabilities.keep_alive)
            reply = await self._request("POST", root + "/apply-template", json=body)
            raw = str(reply.json().get("prompt", ""))
        content = {"content": raw, "add_special": True}
        reply = await self._request("POST", root + "/tokenize", model=request.model, json=content)
        return [int(t) for t in reply.json().get("tokens", [])]

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
            if await self._load(model, settings, force=True) is None:
                raise NotSupported(f"{self.engine} is too old to load models through its API.")
        return True

    async def _load(
        self, model: str, settings: LoadSettings | None, *, force: bool
    ) -> dict[str, Any] | bool | None:
        loaded = await self._lmstudio.load(model, settings, force=force)
        if loaded is None:
            self._without_load_api()
        return loaded

    async def unload(self, model: str) -> None:
        await self.probe()
        if not self.capabilities.unload:
            raise NotSupported(f"{self.engine} does not let autotune unload models.")
        for instance in await self._lmstudio.instances(model) or []:
            await self._lmstudio.unload(str(instance.get("id")))

    # ---------------------------------------------------------------- chat

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        await self.probe()
        loaded: dict[str, Any] | bool | None = None
        if request.load is not None and self.capabilities.load_control:
            async with self._load_lock:
                loaded = await self._load(request.model, request.load, force=False)
        # Without load control, launch-time settings belong to whoever started the server.
        root = await self._url_for(request.model)
        body = chat_body(request, ttl=self.capabilities.keep_alive)
        # llama.cpp lets text come before a required call: ask for the call as a schema.
        forced = forced_call_params(body) if self.kind == "llamacpp" else None
        reply = await self._opened(root + "/v1/chat/completions", forced or body)
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
        except AIO_TRANSPORT as exc:
            raise self.unavailable(transport_detail(exc)) from None
        finally:
            reply.release()

    async def _opened(self, url: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        """POST and return the streaming response, retried once on a stale kept-alive
        connection (see :func:`once_more_if_stale`); an engine that is down is a 503."""
        session = self._session()
        try:
            # aiohttp reports a stale connection as a disconnect, or as a reset / broken pipe
            # while sending; a refused connection (a ClientOSError too) means the engine is down.
            return await once_more_if_stale(
                lambda: session.post(url, json=body),
                (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError),
                refused=(aiohttp.ClientConnectorError,),
            )
        except AIO_TRANSPORT as exc:
            raise self.unavailable(transport_detail(exc)) from None

    async def _relay(
        self,
        events: AsyncIterator[tuple[str, str]],
        loaded: dict[str, Any] | bool | None = None,
    ) -> AsyncIterator[Chunk]:
        """Pass chunks through as they come; hold back only the closing ones (finish_reason,
        usage, timings) so the very last chunk can carry the engine's stats. ``loaded`` is what
        the LM Studio load step did for this request (see :meth:`LmStudio.load`)."""
        held: dict[str, Any] | None = None
        final: dict[str, Any] = {}
        done = False
        async for kind, text in events:
            # Read on past [DONE] to the end of the response: a fully read response hands its
            # connection back to the pool; an abandoned one costs a new TCP connection next time.
            done = done or text == "[DONE]"
            if done or not text:
                continue
            data = event_data(kind, text, self.engine)
            if held is not None:
                yield Chunk(held)
                held = None
            if closing(data, final):
                held = data
            else:
                yield Chunk(data)
        if held is not None:
            yield Chunk(held, final_stats(final, loaded))

    # ---------------------------------------------------------------- completions

    async def stream_completion(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        """``/v1/completions``; with a ``suffix`` on llama.cpp, its ``/infill`` (which builds
        the fill-in-the-middle prompt from the model's FIM tokens)."""
        await self.probe()
        root = await self._url_for(request.model)
        infill = request.suffix is not None and self.kind == "llamacpp"
        if infill:
            reply = await self._opened(root + "/infill", infill_body(request))
        else:
            reply = await self._opened(root + "/v1/completions", completion_body(request))
        try:
            if reply.status >= 400:
                text = await reply.text()
                if infill and reply.status == 501:
                    raise no_fim(request.model, error_text(reply.status, text))
                raise self._error_from(reply.status, text, request.model)
            events = sse_events(reply.content)
            if infill:
                events = infill_as_completions(events, request.model)
            async for chunk in self._relay(events):
                yield chunk
        except AIO_TRANSPORT as exc:
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


def from_settings(spec: EngineSpec, settings: Settings) -> OpenAICompatBackend:
    """An OpenAI-compatible engine at its configured URL (the engine table's builder)."""
    url = getattr(settings, spec.url_setting, None) if spec.url_setting else None
    if not url:
        setting = f"AUTOTUNE_{(spec.url_setting or 'openai_url').upper()}"
        raise BackendError(f"No URL set for {spec.label}.", hint=f"Set {setting} to its base URL.")
    api_key = settings.openai_api_key if spec.name == "openai" else None
    kind = spec.name if spec.name != "openai" else None  # a generic server is probed
    return OpenAICompatBackend(url, name=spec.name, api_key=api_key, kind=kind)
