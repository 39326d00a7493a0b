"""The MLX engine on Apple Silicon: chats go to an ``mlx_lm.server``, either one already running
(``AUTOTUNE_MLX_URL``) or one autotune starts as its own child process on a free loopback port.

mlx_lm.server is OpenAI-compatible, so the HTTP side is
:class:`~autotune.backends.openai_compat.OpenAICompatBackend` (kind ``mlx``); this class adds
the lifecycle of the child, Ollama names (``qwen3:8b`` → ``mlx-community/Qwen3-8B-4bit``, see
:mod:`autotune.backends.mlx_models`) and the engine's timing fields. mlx-lm itself is an
optional extra (``pip install 'autotune[mlx]'``) and is never imported here: its server runs in
the child, which keeps a model load from freezing autotune (as with the embedded engine).
Facts (mlx-lm ``server.py``): ``/health`` answers ``{"status": "ok"}``; ``/v1/models`` lists the
MLX repos in the Hugging Face cache; a model is loaded on first request by its repo id; the
prompt cache reuses the nearest prefix and ``usage.prompt_tokens_details.cached_tokens`` says
how much; ``timings`` carries ``prompt_n`` (computed tokens), ``predicted_n`` and per-second
rates but no milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from autotune.backends.mlx_models import (
    is_apple_silicon,
    local_mlx_models,
    mlx_meta_from_config,
    ollama_names_for,
    resolve_mlx_repo,
)
from autotune.backends.openai_compat import OpenAICompatBackend
from autotune.backends.worker_process import stop_process
from autotune.ground.errors import BackendError, EngineUnavailable, ModelNotFound
from autotune.ground.types import (
    ChatRequest,
    Chunk,
    EngineStats,
    ModelEntry,
    ModelMeta,
    PullProgress,
)

__all__ = ["DEFAULT_COMMAND", "MlxBackend", "fill_mlx_timings", "mlx_lm_installed"]

#: How autotune starts its own mlx_lm.server; ``{port}`` is replaced by a free port.
DEFAULT_COMMAND: tuple[str, ...] = (
    sys.executable,
    "-m",
    "mlx_lm.server",
    "--host",
    "127.0.0.1",
    "--port",
    "{port}",
)
_INSTALL_HINT = "Install it on Apple Silicon with `pip install 'autotune[mlx]'` (or mlx-lm)."


def mlx_lm_installed() -> bool:
    """mlx-lm is importable (checked without importing it)."""
    return importlib.util.find_spec("mlx_lm") is not None


def fill_mlx_timings(stats: EngineStats) -> EngineStats:
    """Milliseconds from mlx_lm's ``timings`` (token counts and tokens per second only)."""
    timings = stats.raw.get("timings") or {}
    prompt_n, prompt_tps = timings.get("prompt_n"), timings.get("prompt_per_second")
    predicted_n, predicted_tps = timings.get("predicted_n"), timings.get("predicted_per_second")
    if stats.prompt_ms is None and isinstance(prompt_n, (int, float)) and prompt_tps:
        stats.prompt_ms = prompt_n / prompt_tps * 1000.0
    if stats.decode_ms is None and isinstance(predicted_n, (int, float)) and predicted_tps:
        stats.decode_ms = predicted_n / predicted_tps * 1000.0
    return stats


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MlxBackend(OpenAICompatBackend):
    """mlx_lm.server at ``base_url``, or autotune's own child server when no URL is given."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        command: Sequence[str] | None = None,
        hub_dir: Path | None = None,
        start_timeout: float = 120.0,
        log_dir: Path | None = None,
    ) -> None:
        super().__init__(base_url or "http://127.0.0.1:0", name="mlx", kind="mlx")
        self.start_hint = (
            "Start it with `mlx_lm.server --model MODEL`."
            if base_url
            else "autotune starts mlx_lm.server itself. " + _INSTALL_HINT
        )
        self._managed = base_url is None
        self._command = tuple(command) if command is not None else None
        self._hub_dir = hub_dir
        self._start_timeout = start_timeout
        self._log_dir = log_dir
        self._proc: subprocess.Popen[bytes] | None = None
        self._start_lock: asyncio.Lock | None = None

    # ------------------------------------------------------------------ the child server

    def _can_start(self) -> str | None:
        """Why autotune cannot start its own server here, or None when it can."""
        if self._command is not None:
            return None  # an explicit command: the caller knows what it runs
        if not is_apple_silicon():
            return "MLX needs Apple Silicon (macOS on arm64)"
        if not mlx_lm_installed():
            return "mlx-lm is not installed"
        return None

    async def _url_for(self, model: str | None) -> str:
        if self._managed:
            await self._ensure_server()
        return self.base_url

    async def _ensure_server(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._proc is not None and self._proc.poll() is None:
                return
            reason = self._can_start()
            if reason is not None:
                raise EngineUnavailable(f"The MLX engine cannot run: {reason}.", hint=_INSTALL_HINT)
            port = _free_port()
            command = [
                part.replace("{port}", str(port)) for part in self._command or DEFAULT_COMMAND
            ]
            self._proc = await asyncio.to_thread(self._spawn, command)
            self.base_url = f"http://127.0.0.1:{port}"
            await self._wait_ready(self._proc)

    def _spawn(self, command: list[str]) -> subprocess.Popen[bytes]:
        log: Any = subprocess.DEVNULL
        if self._log_dir is not None:
            self._log_dir.mkdir(parents=True, exist_ok=True)
            log = open(self._log_dir / "mlx-server.log", "ab")  # noqa: SIM115 (child owns it)
        try:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C in a terminal chat must not kill the engine
            )
        except OSError as exc:
            raise EngineUnavailable(
                f"Could not start mlx_lm.server ({exc.strerror}).", hint=_INSTALL_HINT
            ) from None
        finally:
            if log is not subprocess.DEVNULL:
                log.close()

    async def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self._start_timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise EngineUnavailable(
                        f"mlx_lm.server exited with code {proc.returncode} while starting.",
                        hint=_INSTALL_HINT,
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(self.base_url + "/health")).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        await asyncio.to_thread(stop_process, proc, grace=5)
        raise EngineUnavailable(
            f"mlx_lm.server did not answer within {self._start_timeout:g} s.", hint=_INSTALL_HINT
        )

    # ------------------------------------------------------------------ Backend API

    def describe(self) -> dict[str, Any]:
        """What ``/backends`` shows for MLX."""
        return {
            "name": self.name,
            "engine": "mlx_lm",
            "url": None if self._managed and self._proc is None else self.base_url,
            "managed": self._managed,
            "available": self._can_start() is None if self._managed else None,
        }

    async def health(self) -> bool:
        if self._managed and (self._proc is None or self._proc.poll() is not None):
            return self._can_start() is None  # ready to start on first use
        return await super().health()

    async def list_models(self) -> list[ModelEntry]:
        """The MLX models on disk (the server's own list when it is not ours), each also under
        its Ollama names so ``qwen3:8b`` resolves here when its MLX conversion is present."""
        entries: list[ModelEntry] = []
        if self._managed:
            for local in await asyncio.to_thread(local_mlx_models, self._hub_dir):
                entries.append(
                    ModelEntry(
                        local.repo, self.name, size_bytes=local.size_bytes, path=str(local.path)
                    )
                )
        else:
            entries = await super().list_models()
        aliases = [
            dataclasses.replace(entry, name=alias)
            for entry in entries
            for alias in ollama_names_for(entry.name)
        ]
        return entries + aliases

    def _error_from(self, status: int, text: str, model: str | None) -> BackendError:
        # mlx_lm.server answers 404 {"error": "..."} whenever it cannot load the requested
        # model (not on the hub, not in the cache offline, not an MLX conversion).
        if status == 404 and model:
            return ModelNotFound(model)
        return super()._error_from(status, text, model)

    def _repo(self, model: str) -> str:
        return resolve_mlx_repo(model) or model

    async def model_meta(self, model: str) -> ModelMeta:
        repo = self._repo(model)
        for local in await asyncio.to_thread(local_mlx_models, self._hub_dir):
            if local.repo.lower() == repo.lower():
                config = json.loads((local.path / "config.json").read_text(encoding="utf-8"))
                meta = mlx_meta_from_config(model, config)
                return dataclasses.replace(meta, size_bytes=local.size_bytes, path=str(local.path))
        raise ModelNotFound(model)

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        # mlx_lm.server loads a model by its Hugging Face repo id.
        upstream = dataclasses.replace(request, model=self._repo(request.model))
        async for chunk in super().stream_chat(upstream):
            if chunk.stats is not None:
                fill_mlx_timings(chunk.stats)
            yield chunk

    async def pull(self, model: str) -> AsyncIterator[PullProgress]:
        """Download the MLX repo for ``model`` into the Hugging Face cache."""
        repo = resolve_mlx_repo(model)
        if repo is None:
            raise ModelNotFound(model)
        try:
            from huggingface_hub import snapshot_download
        except ImportError:
            raise EngineUnavailable(
                "Downloading MLX models needs huggingface_hub (installed with mlx-lm).",
                hint=_INSTALL_HINT,
            ) from None
        yield PullProgress(status=f"pulling {repo}")
        path = await asyncio.to_thread(snapshot_download, repo_id=repo)
        yield PullProgress(status=f"success: {path}")

    async def aclose(self) -> None:
        await super().aclose()
        proc, self._proc = self._proc, None
        if proc is not None:
            await asyncio.to_thread(stop_process, proc, grace=5)
