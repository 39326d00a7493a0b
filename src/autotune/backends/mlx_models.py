"""Which MLX model stands for an Ollama name, which MLX models are on disk, and when MLX should
serve a chat — pure decisions and a read-only scan of the Hugging Face cache.

MLX models come from the ``mlx-community`` organisation on the Hugging Face hub (BACKENDS.md).
The name table maps Ollama library tags (ollama.com/library: ``qwen3:8b`` …; a bare name means
its ``:latest`` tag, which the library points at the size listed in :data:`OLLAMA_LATEST`) to
the 4-bit conversions that ``mlx-community`` publishes under the upstream model's own name
(``Qwen3-8B-4bit``, ``Llama-3.2-3B-Instruct-4bit``, ``gemma-3-4b-it-4bit`` …). Any name
containing a ``/`` is taken as a Hugging Face repo id as it is.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.ground.types import ModelMeta

__all__ = [
    "OLLAMA_LATEST",
    "OLLAMA_TO_MLX",
    "LocalMlxModel",
    "is_apple_silicon",
    "local_mlx_models",
    "mlx_first",
    "mlx_meta_from_config",
    "mlx_route",
    "ollama_names_for",
    "resolve_mlx_repo",
]

#: Ollama tag → mlx-community repo (4-bit unless the model is tiny).
OLLAMA_TO_MLX: dict[str, str] = {
    "qwen3:0.6b": "mlx-community/Qwen3-0.6B-4bit",
    "qwen3:1.7b": "mlx-community/Qwen3-1.7B-4bit",
    "qwen3:4b": "mlx-community/Qwen3-4B-4bit",
    "qwen3:8b": "mlx-community/Qwen3-8B-4bit",
    "qwen3:14b": "mlx-community/Qwen3-14B-4bit",
    "qwen3:30b": "mlx-community/Qwen3-30B-A3B-4bit",
    "qwen2.5:0.5b": "mlx-community/Qwen2.5-0.5B-Instruct-4bit",
    "qwen2.5:7b": "mlx-community/Qwen2.5-7B-Instruct-4bit",
    "qwen2.5-coder:7b": "mlx-community/Qwen2.5-Coder-7B-Instruct-4bit",
    "llama3.2:1b": "mlx-community/Llama-3.2-1B-Instruct-4bit",
    "llama3.2:3b": "mlx-community/Llama-3.2-3B-Instruct-4bit",
    "llama3.1:8b": "mlx-community/Meta-Llama-3.1-8B-Instruct-4bit",
    "gemma3:1b": "mlx-community/gemma-3-1b-it-4bit",
    "gemma3:4b": "mlx-community/gemma-3-4b-it-4bit",
    "gemma3:12b": "mlx-community/gemma-3-12b-it-4bit",
    "mistral:7b": "mlx-community/Mistral-7B-Instruct-v0.3-4bit",
    "phi4:14b": "mlx-community/phi-4-4bit",
    "smollm2:135m": "mlx-community/SmolLM2-135M-Instruct",
}

#: The size each Ollama library name's ``:latest`` tag points at.
OLLAMA_LATEST: dict[str, str] = {
    "qwen3": "8b",
    "qwen2.5": "7b",
    "qwen2.5-coder": "7b",
    "llama3.2": "3b",
    "llama3.1": "8b",
    "gemma3": "4b",
    "mistral": "7b",
    "phi4": "14b",
}


def resolve_mlx_repo(name: str) -> str | None:
    """The Hugging Face repo for ``name`` (an Ollama tag or a repo id), or None if unknown."""
    name = name.strip()
    if "/" in name:
        return name
    lowered = name.lower()
    base, _, tag = lowered.partition(":")
    if not tag or tag == "latest":
        latest = OLLAMA_LATEST.get(base)
        if latest is None:
            return None
        lowered = f"{base}:{latest}"
    return OLLAMA_TO_MLX.get(lowered)


def ollama_names_for(repo: str) -> list[str]:
    """The Ollama names that map to ``repo`` (``qwen3:8b``, and ``qwen3`` when it is latest)."""
    names = [tag for tag, r in OLLAMA_TO_MLX.items() if r.lower() == repo.lower()]
    for base, size in OLLAMA_LATEST.items():
        if f"{base}:{size}" in names:
            names.append(base)
    return names


def is_apple_silicon(system: str | None = None, machine: str | None = None) -> bool:
    """macOS on arm64 (what MLX needs)."""
    system = platform.system() if system is None else system
    machine = platform.machine() if machine is None else machine
    return system == "Darwin" and machine.lower() in ("arm64", "aarch64")


def mlx_route(model: str, *, apple_silicon: bool, local_repos: Iterable[str]) -> str | None:
    """The MLX repo that should serve a chat for ``model`` on this machine, or None.

    MLX serves it on Apple Silicon when the MLX model is already on disk; otherwise the
    other engines do (a chat never starts a multi-gigabyte download by itself).
    """
    if not apple_silicon:
        return None
    repo = resolve_mlx_repo(model)
    if repo is None:
        return None
    present = {r.lower() for r in local_repos}
    return repo if repo.lower() in present else None


def mlx_first(order: list[str], *, apple_silicon: bool, mlx_ready: bool) -> list[str]:
    """The engine order with ``mlx`` first on Apple Silicon when MLX can run (its inventory
    holds only models on disk, so every other model still falls through to the others)."""
    if not apple_silicon or not mlx_ready or "mlx" in order:
        return list(order)
    return ["mlx", *order]


@dataclass(frozen=True)
class LocalMlxModel:
    """An MLX model in the Hugging Face cache."""

    repo: str
    path: Path
    size_bytes: int


def _is_mlx(repo: str, config: dict[str, Any]) -> bool:
    # mlx_lm.convert writes a "quantization" table into config.json; mlx-community is MLX only.
    return repo.lower().startswith("mlx-community/") or "quantization" in config


def _read_config(snapshot: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((snapshot / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def local_mlx_models(hub_dir: Path | None = None) -> list[LocalMlxModel]:
    """MLX models downloaded into the Hugging Face hub cache (complete snapshots only)."""
    if hub_dir is None:
        from autotune.models.discovery import huggingface_hub_dir

        hub_dir = huggingface_hub_dir()
    found = []
    try:
        repos = sorted(hub_dir.glob("models--*--*"))
    except OSError:
        return []
    for repo_dir in repos:
        org, _, name = repo_dir.name[len("models--") :].partition("--")
        model = _newest_mlx_snapshot(f"{org}/{name}", repo_dir)
        if model is not None:
            found.append(model)
    return found


def _newest_mlx_snapshot(repo: str, repo_dir: Path) -> LocalMlxModel | None:
    """The newest complete MLX snapshot of one cached repo."""
    snapshots = [p for p in (repo_dir / "snapshots").glob("*") if p.is_dir()]
    for snapshot in sorted(snapshots, key=lambda p: p.stat().st_mtime, reverse=True):
        config = _read_config(snapshot)
        weights = list(snapshot.glob("*.safetensors"))
        if config is None or not weights or not _is_mlx(repo, config):
            continue
        size = _total_size(weights)
        if size is not None:
            return LocalMlxModel(repo, snapshot, size)
    return None


def _total_size(files: list[Path]) -> int | None:
    """Bytes of ``files`` (following the blob symlinks); None when one's blob is missing, as
    after an interrupted download."""
    try:
        return sum(file.stat().st_size for file in files)
    except OSError:
        return None


def mlx_meta_from_config(name: str, config: dict[str, Any]) -> ModelMeta:
    """Architecture facts from an MLX model's ``config.json`` (Hugging Face field names)."""
    nested = config.get("text_config")
    text: dict[str, Any] = nested if isinstance(nested, dict) else config

    def number(*keys: str) -> int | None:
        for key in keys:
            value = text.get(key, config.get(key))
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return int(value)
        return None

    heads = number("num_attention_heads")
    hidden = number("hidden_size")
    head_dim = number("head_dim") or (hidden // heads if hidden and heads else None)
    quant = config.get("quantization")
    bits = quant.get("bits") if isinstance(quant, dict) else None
    architectures = config.get("architectures")
    return ModelMeta(
        name=name,
        architecture=str(config.get("model_type") or "") or None,
        block_count=number("num_hidden_layers"),
        head_count=heads,
        head_count_kv=number("num_key_value_heads") or heads,
        embedding_length=hidden,
        key_length=head_dim,
        value_length=head_dim,
        sliding_window=number("sliding_window"),
        context_length=number("max_position_embeddings"),
        vocab_size=number("vocab_size"),
        expert_count=number("num_experts", "num_local_experts"),
        expert_used_count=number("num_experts_per_tok"),
        quantization=f"{bits}bit" if bits else None,
        family=architectures[0] if isinstance(architectures, list) and architectures else None,
    )
