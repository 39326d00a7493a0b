"""The Ollama backend: chat, models and memory state through Ollama's native ``/api/*`` API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import ollama

from autotune.backends.base import Backend
from autotune.backends.compat_http import transport_detail
from autotune.backends.ollama_codec import (
    ENGINE,
    RELOAD_THRESHOLD_MS,
    ChunkWriter,
    expiry,
    first_int,
    int_or_list,
    ollama_chat_body,
    ollama_stats,
    parse_line,
)
from autotune.ground.config import Settings
from autotune.ground.engines import EngineSpec
from autotune.ground.errors import BackendError, ModelNotFound, UpstreamError
from autotune.ground.types import (
    Capabilities,
    ChatRequest,
    Chunk,
    ModelEntry,
    ModelMeta,
    PullProgress,
    RunningModel,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "RELOAD_THRESHOLD_MS",
    "OllamaBackend",
    "from_settings",
    "ollama_chat_body",
    "ollama_stats",
]


#: Reads wait long: the first line of a chat comes only after a (re)load, which can take minutes.
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=5.0)

_HEALTH_TIMEOUT = httpx.Timeout(5.0, connect=2.0)


class OllamaBackend(Backend):
    """Ollama through its native API, with one pooled official ``ollama.AsyncClient``."""

    name = "ollama"
    start_hint = "Start it with `ollama serve` (or open the Ollama app)."
    capabilities = Capabilities(
        per_request_context=True,
        context_change_reloads=True,
        load_control=False,
        env_load_settings=True,
        kv_cache_type=False,
        flash_attention=False,
        prefix_cache=True,
        reports_cached_tokens=False,
        running_models=True,
        keep_alive=True,
        pull=True,
        unload=True,
        embeddings=True,
        tokenize=False,
    )

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:11434",
        *,
        timeout: float | httpx.Timeout | None = DEFAULT_TIMEOUT,
        api_key: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        self._client = ollama.AsyncClient(host=self.base_url, timeout=timeout, headers=headers)

    @property
    def _http(self) -> httpx.AsyncClient:
        # The official client's own pooled connection. /api/chat goes through it raw because the
        # client's pydantic `Tool` model drops JSON-schema keys (nested properties, anyOf,
        # default…) and its `Message` model drops tool-call ids; /api/version has no method.
        return self._client._client

    def _error(self, status: int, message: str, model: str | None) -> BackendError:
        text = str(message)
        lowered = text.lower()
        # Ollama answers 404 {"error": "model 'x' not found"}; "404 page not found" is a bad route.
        if status == 404 and model and "not found" in lowered and "page not found" not in lowered:
            return ModelNotFound(model)
        return UpstreamError(status, text, ENGINE)

    async def _call(self, awaitable: Any, model: str | None = None) -> Any:
        try:
            return await awaitable
        except ollama.ResponseError as exc:
            raise self._error(exc.status_code, exc.error, model) from None
        except (ConnectionError, httpx.TransportError) as exc:
            raise self.unavailable(transport_detail(exc)) from None

    # ---------------------------------------------------------------- simple endpoints

    async def health(self) -> bool:
        try:
            response = await self._http.get("/api/version", timeout=_HEALTH_TIMEOUT)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def version(self) -> str:
        """The Ollama server version (``GET /api/version``)."""
        try:
            response = await self._http.get("/api/version", timeout=_HEALTH_TIMEOUT)
        except httpx.TransportError as exc:
            raise self.unavailable(transport_detail(exc)) from None
        if response.status_code != 200:
            raise UpstreamError(response.status_code, _error_text(response), ENGINE)
        return str(response.json().get("version", ""))

    async def list_models(self) -> list[ModelEntry]:
        listing = await self._call(self._client.list())
        entries = []
        for m in listing.models:
            details = m.details
            entries.append(
                ModelEntry(
                    name=m.model or "",
                    backend=self.name,
                    size_bytes=int(m.size) if m.size is not None else None,
                    quantization=details.quantization_level if details else None,
                    parameter_size=details.parameter_size if details else None,
                    family=details.family if details else None,
                    modified_at=m.modified_at.isoformat() if m.modified_at else None,
                )
            )
        return entries

    async def running_models(self) -> list[RunningModel]:
        listing = await self._call(self._client.ps())
        running = []
        for m in listing.models:
            running.append(
                RunningModel(
                    name=m.model or m.name or "",
                    backend=self.name,
                    size_bytes=int(m.size) if m.size is not None else None,
                    vram_bytes=int(m.size_vram) if m.size_vram is not None else None,
                    context_length=m.context_length,
                    quantization=m.details.quantization_level if m.details else None,
                    expires_at=expiry(m.expires_at),
                )
            )
        return running

    async def model_meta(self, model: str) -> ModelMeta:
        shown = await self._call(self._client.show(model), model)
        info: Mapping[str, Any] = shown.modelinfo or {}
        arch = info.get("general.architecture")

        def arch_key(key: str) -> Any:
            return info.get(f"{arch}.{key}") if arch else None

        pattern = arch_key("attention.sliding_window_pattern")
        details = shown.details
        return ModelMeta(
            name=model,
            architecture=arch,
            parameter_count=first_int(info.get("general.parameter_count")),
            block_count=first_int(arch_key("block_count")),
            head_count=first_int(arch_key("attention.head_count")),
            head_count_kv=int_or_list(arch_key("attention.head_count_kv")),
            embedding_length=first_int(arch_key("embedding_length")),
            key_length=first_int(arch_key("attention.key_length")),
            value_length=first_int(arch_key("attention.value_length")),
            sliding_window=first_int(arch_key("attention.sliding_window")),
            swa_layers=[bool(v) for v in pattern] if isinstance(pattern, list) else None,
            context_length=first_int(arch_key("context_length")),
            vocab_size=first_int(arch_key("vocab_size")),
            expert_count=first_int(arch_key("expert_count")),
            expert_used_count=first_int(arch_key("expert_used_count")),
            quantization=details.quantization_level if details else None,
            family=details.family if details else None,
        )

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        result = await self._call(self._client.embed(model=model, input=texts), model)
        return [[float(x) for x in vector] for vector in result.embeddings]

    async def unload(self, model: str) -> None:
        # An empty generate with keep_alive 0 unloads the model (docs/api.md, "Unload a model").
        await self._call(self._client.generate(model=model, keep_alive=0), model)

    async def pull(self, model: str) -> AsyncIterator[PullProgress]:
        stream = await self._call(self._client.pull(model, stream=True), model)
        try:
            async for step in stream:
                yield PullProgress(
                    status=step.status or "", completed=step.completed, total=step.total
                )
        except ollama.ResponseError as exc:
            raise self._error(exc.status_code, exc.error, model) from None
        except (ConnectionError, httpx.TransportError) as exc:
            raise self.unavailable(transport_detail(exc)) from None

    async def aclose(self) -> None:
        await self._client.close()

    # ---------------------------------------------------------------- chat

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        body = ollama_chat_body(request)  # raises UnsupportedOption before the engine is contacted
        writer = ChunkWriter(request.model)
        try:
            async with self._http.stream("POST", "/api/chat", json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self._error(response.status_code, _error_text(response), request.model)
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    part = parse_line(line)
                    if part.get("error"):
                        raise UpstreamError(500, str(part["error"]), ENGINE)
                    writer.model = part.get("model") or writer.model
                    delta = writer.delta(part.get("message") or {})
                    if part.get("done"):
                        if set(delta) - {"role"}:
                            writer.role_sent = True
                            yield Chunk(writer.chunk(delta))
                        yield self._final(writer, part)
                        return
                    if delta:
                        writer.role_sent = True
                        yield Chunk(writer.chunk(delta))
        except httpx.TransportError as exc:
            raise self.unavailable(transport_detail(exc)) from None
        raise UpstreamError(502, "the reply ended before Ollama said it was done", ENGINE)

    def _final(self, writer: ChunkWriter, part: Mapping[str, Any]) -> Chunk:
        if writer.tool_calls:
            reason = "tool_calls"
        elif part.get("done_reason") == "length":
            reason = "length"
        else:
            reason = "stop"
        stats = ollama_stats(part)
        prompt = stats.prompt_tokens or 0
        completion = stats.completion_tokens or 0
        data = writer.chunk({} if writer.role_sent else {"role": "assistant"}, reason)
        data["usage"] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        return Chunk(data, stats)


def _error_text(response: httpx.Response) -> str:
    try:
        payload = response.json()
    except ValueError:
        return response.text.strip() or f"HTTP {response.status_code}"
    if isinstance(payload, dict) and payload.get("error"):
        return str(payload["error"])
    return response.text.strip() or f"HTTP {response.status_code}"


def from_settings(spec: EngineSpec, settings: Settings) -> OllamaBackend:
    """Ollama at its configured URL (the engine table's builder)."""
    return OllamaBackend(settings.ollama_url)
