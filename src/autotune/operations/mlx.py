"""MLX models on Apple Silicon for ``autotune mlx``: which repo an Ollama name stands for, the
MLX models in the Hugging Face cache, and a download through the MLX engine."""

from __future__ import annotations

from collections.abc import AsyncIterator

from autotune.backends.mlx_models import (
    OLLAMA_TO_MLX,
    LocalMlxModel,
    is_apple_silicon,
    local_mlx_models,
    ollama_names_for,
    resolve_mlx_repo,
)
from autotune.ground.types import PullProgress

__all__ = [
    "OLLAMA_TO_MLX",
    "LocalMlxModel",
    "is_apple_silicon",
    "local_mlx_models",
    "ollama_names_for",
    "pull_mlx",
    "resolve_mlx_repo",
]


async def pull_mlx(name: str) -> AsyncIterator[PullProgress]:
    """Download the MLX model for ``name`` into the Hugging Face cache, step by step."""
    from autotune.backends.mlx import MlxBackend  # mlx-lm's engine: only when pulling

    backend = MlxBackend()
    try:
        async for step in backend.pull(name):
            yield step
    finally:
        await backend.aclose()
