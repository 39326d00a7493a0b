"""Workers for embedding GGUFs on the embedded engine, kept apart from its chat workers."""

from __future__ import annotations

import asyncio
import secrets
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autotune.backends.openai_compat import OpenAICompatBackend
from autotune.backends.worker_process import key_file, stop_worker
from autotune.ground.errors import InvalidRequest
from autotune.ground.types import LoadSettings, ModelMeta

if TYPE_CHECKING:
    from autotune.backends.embedded import EmbeddedBackend

__all__ = ["EmbeddingWorkers"]


@dataclass
class _Embedder:
    proc: subprocess.Popen[bytes]
    client: OpenAICompatBackend
    estimate: int


class EmbeddingWorkers:
    """Workers for embedding GGUFs (started with ``embedding`` on and the model's pooling).

    Kept apart from the chat workers: an embedding model has no conversation, context plan
    or prompt cache to keep. Each is started on first use, counted against the memory
    budget (idle chat models make room for it), and stopped by ``unload`` or ``aclose``.
    """

    #: Context (and batch: llama.cpp embeds an input in one batch) at most.
    MAX_CTX = 8192

    def __init__(self) -> None:
        self._workers: dict[str, _Embedder] = {}
        self._lock: asyncio.Lock | None = None

    def resident_bytes(self) -> int:
        return sum(w.estimate for w in self._workers.values())

    async def embed(
        self, backend: EmbeddedBackend, meta: ModelMeta, texts: list[str]
    ) -> list[list[float]]:
        from autotune.models.roles import pooling_type

        assert meta.path is not None
        pooling = await asyncio.to_thread(pooling_type, meta.path)
        if pooling is None:
            raise InvalidRequest(
                f"{meta.name} is a text-generation model, not an embedding model (its GGUF "
                "declares no pooling type). Ask for an embedding model: all-minilm "
                "(autotune's offline MiniLM) or an embedding GGUF such as nomic-embed-text.",
                param="model",
            )
        worker = await self._worker(backend, meta, pooling)
        return await worker.client.embed(meta.name, texts)

    async def _worker(self, backend: EmbeddedBackend, meta: ModelMeta, pooling: int) -> _Embedder:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            worker = self._workers.get(meta.name)
            if worker is not None and worker.proc.poll() is None:
                return worker
            n_ctx = min(meta.context_length or 512, self.MAX_CTX)
            settings = LoadSettings(n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx)
            estimate = backend._estimator(meta, settings)
            await backend._make_room(meta.name, estimate + self.resident_bytes())
            spec = {
                "path": meta.path,
                "alias": meta.name,
                "verbosity": backend.verbosity,
                "embedding": True,
                "pooling": pooling,
                "n_threads": backend.threads,
                **settings.as_dict(),
            }
            api_key = secrets.token_urlsafe(32)  # like a chat worker: it answers autotune only
            with key_file(api_key) as key_path:
                spec["api_key_file"] = key_path
                proc, url = await asyncio.to_thread(backend._spawn, spec)
            client = OpenAICompatBackend(url, name=backend.name, kind="llamacpp", api_key=api_key)
            worker = self._workers[meta.name] = _Embedder(proc, client, estimate)
            return worker

    async def stop(self, model: str | None = None) -> None:
        names = list(self._workers) if model is None else [model]
        for name in names:
            worker = self._workers.pop(name, None)
            if worker is not None:
                await worker.client.aclose()
                await asyncio.to_thread(stop_worker, worker.proc)
