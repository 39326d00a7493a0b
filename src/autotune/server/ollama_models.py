"""Pure translation of what autotune knows about models into Ollama's listings: ``/api/tags``
entries, ``/api/ps`` entries, and ``/api/show``'s ``details`` and ``model_info``."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from autotune.ground.types import ModelEntry, ModelMeta, RunningModel
from autotune.server.ollama_reply import created_at

__all__ = ["details", "model_info", "ps_entry", "tag_entry"]

_FOREVER = timedelta(days=365 * 292)  # what Ollama shows for a negative keep_alive


def _parameter_size(count: int | None) -> str:
    if not count:
        return ""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            value = count / scale
            return f"{value:.2f}".rstrip("0").rstrip(".") + unit
    return str(count)


def _of(obj: ModelEntry | ModelMeta | None, name: str) -> Any:
    """A field of an entry or of metadata; None when there is neither."""
    return getattr(obj, name, None) if obj is not None else None


def details(entry: ModelEntry | None, meta: ModelMeta | None) -> dict[str, Any]:
    """Ollama's ``details``: format, family, parameter size, quantisation level."""
    family = _of(entry, "family") or _of(meta, "family") or _of(meta, "architecture")
    parameter_size = _of(entry, "parameter_size") or _parameter_size(_of(meta, "parameter_count"))
    quant = _of(entry, "quantization") or _of(meta, "quantization")
    gguf = bool(_of(entry, "path") or _of(meta, "path"))
    return {
        "parent_model": "",
        "format": "gguf" if gguf else "",
        "family": family or "",
        "families": [family] if family else None,
        "parameter_size": parameter_size or "",
        "quantization_level": quant or "",
    }


def tag_entry(
    entry: ModelEntry, meta: ModelMeta | None, *, digest: str, modified: float | None
) -> dict[str, Any]:
    """One model of ``/api/tags``."""
    stamp = entry.modified_at or created_at(modified if modified is not None else 0)
    return {
        "name": entry.name,
        "model": entry.name,
        "modified_at": stamp,
        "size": entry.size_bytes or (meta.size_bytes if meta else None) or 0,
        "digest": digest,
        "details": details(entry, meta),
    }


def ps_entry(running: RunningModel, meta: ModelMeta | None, *, digest: str) -> dict[str, Any]:
    """One model of ``/api/ps``; a model kept for ever shows an expiry centuries ahead."""
    if running.expires_at is None:
        expires = datetime.now(tz=timezone.utc) + _FOREVER
    else:
        expires = datetime.fromtimestamp(running.expires_at, tz=timezone.utc)
    entry_details = details(None, meta)
    if running.quantization and not entry_details["quantization_level"]:
        entry_details["quantization_level"] = running.quantization
    return {
        "name": running.name,
        "model": running.name,
        "size": running.size_bytes or 0,
        "size_vram": running.vram_bytes or 0,
        "digest": digest,
        "details": entry_details,
        "expires_at": expires.isoformat().replace("+00:00", "Z"),
        "context_length": running.context_length,
    }


def model_info(meta: ModelMeta) -> dict[str, Any]:
    """``/api/show`` ``model_info`` from the model's metadata, under the GGUF key names."""
    arch = meta.architecture or meta.family or "unknown"
    keys: dict[str, Any] = {
        "general.architecture": arch,
        "general.parameter_count": meta.parameter_count,
        "general.quantization": meta.quantization,
        f"{arch}.block_count": meta.block_count,
        f"{arch}.context_length": meta.context_length,
        f"{arch}.embedding_length": meta.embedding_length,
        f"{arch}.attention.head_count": meta.head_count,
        f"{arch}.attention.head_count_kv": meta.head_count_kv,
        f"{arch}.attention.key_length": meta.key_length,
        f"{arch}.attention.value_length": meta.value_length,
        f"{arch}.attention.sliding_window": meta.sliding_window,
        f"{arch}.vocab_size": meta.vocab_size,
        f"{arch}.expert_count": meta.expert_count,
        f"{arch}.expert_used_count": meta.expert_used_count,
    }
    return {k: v for k, v in keys.items() if v is not None}
