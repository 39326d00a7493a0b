"""Memory a llama.cpp engine needs for a model at a context size: weights, KV, compute, overhead.

Pure functions over :class:`ModelMeta`; no I/O. Every number below says where it comes from.
``n_ctx`` is the context *each sequence* gets (Ollama's ``num_ctx``); the KV cache holds
``n_ctx × n_parallel`` cells. llama-server's ``-c`` is the total instead (each of ``-np``
slots gets ``c / np``), so for it pass ``n_ctx = c // np``.

Measured here on the CPU build of the embedded engine (xllamacpp, verbosity 4 shows
``llama_kv_cache: size = …`` and ``sched_reserve: CPU compute buffer size = …``) with the
bundled SmolLM2-135M (n_embd 576, n_ff 1536, 9 heads) and two synthetic GGUFs built with
``gguf.GGUFWriter`` (llama n_embd 1024 / n_ff 4096 / 16 heads; gemma2 n_embd 512 / n_ff 2048 /
8 heads with a 256-token window):

* KV: exactly the BACKENDS.md formula per layer, with the cell count padded up to 256
  (n_ctx 1000 → 1024 cells) and sliding-window layers holding
  ``min(cells, pad256(window + n_ubatch))`` cells (window 256, ubatch 512 → 768 cells).
* Compute buffer (CPU): linear in the effective ubatch ``min(n_ubatch, n_batch, total cells)``:

  - flash attention on:  ``ubatch × (2·cells + 20·n_embd + 12·n_ff)``
    (2·cells: the f16 KQ mask, one per KV cache);
  - flash attention off: ``ubatch × (4·cells·n_head + 4·cells + 27·n_embd)``
    (the f32 KQ scores of all heads, and an f32 mask per KV cache).

  All three models fit these within 0.5 %. ``ModelMeta`` carries no FFN width, so
  ``n_ff ≈ 4·n_embd`` is assumed (68·n_embd in total): SmolLM2's real 2.67× ratio makes that
  4.5 MiB too high for the bundled model, the safe side.

A draft model for speculative decoding (``LoadSettings.draft_path``) is a second llama.cpp
context in the same process, with the target's context size, batch and slots (llama-server
gives the draft the slot's context) and an f16 KV cache (llama.cpp's default for drafts):
:func:`load_estimate` adds its weights, KV, compute and overhead. Its metadata is the one
thing read from disk here (once per process and file, through the GGUF metadata cache).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from autotune.ground.types import LoadSettings, ModelMeta
from autotune.ground.units import MiB

__all__ = [
    "COMPUTE_BYTES_PER_EMBD_FA",
    "COMPUTE_BYTES_PER_EMBD_NO_FA",
    "CONTEXT_PADDING",
    "KV_BYTES_PER_ELEMENT",
    "OVERHEAD_BYTES",
    "MemoryEstimate",
    "compute_buffer_bytes",
    "draft_estimate",
    "estimate_memory",
    "kv_bytes_per_token",
    "kv_cache_bytes",
    "load_estimate",
    "padded_context",
    "weights_bytes",
]

#: Bytes per cached element. ggml block sizes: q8_0 = 34 bytes per 32 values, q4_0 = 18,
#: q4_1 = 20, q5_0 = 22, q5_1 = 24 (``GGML_QUANT_SIZES`` in the gguf package).
KV_BYTES_PER_ELEMENT: dict[str, float] = {
    "f32": 4,
    "f16": 2,
    "bf16": 2,
    "q8_0": 34 / 32,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "q5_0": 22 / 32,
    "q5_1": 24 / 32,
}

#: llama.cpp rounds the KV cache (and the sliding-window cache) up to a multiple of 256 cells
#: (measured: n_ctx 1000 → "1024 cells"; window 256 + ubatch 128 → "512 cells").
CONTEXT_PADDING = 256

#: Compute-buffer bytes per ubatch token per unit of n_embd besides the attention terms
#: (fit on three models, see the module docstring): 20·n_embd + 12·n_ff with n_ff ≈ 4·n_embd.
COMPUTE_BYTES_PER_EMBD_FA = 68
COMPUTE_BYTES_PER_EMBD_NO_FA = 27

#: Fixed runtime allowance beyond weights + KV + compute. Measured on the bundled model: the
#: process RSS after loading it in xllamacpp and answering one chat grew by 138 MiB, of which
#: the file is 93.8 MiB and the KV 11.25 MiB (n_ctx 512); the 33 MiB left is the HTTP server
#: threads, tokenizer tables, graph metadata and the few compute-buffer pages a short prompt
#: touches. Rounded up to 48 MiB because tokenizer tables grow with the vocabulary (49k here,
#: 150k+ for Qwen/Gemma).
OVERHEAD_BYTES = 48 * MiB
# Not counted: llama-server's host prompt cache (`cache_ram_mib`, default 8192 MiB) keeps copies
# of idle slots' KV in RAM when another task starts; the embedded backend should cap it.
# llama.cpp also "fits" settings at load (common_fit_params, on by default): it lowers them only
# when less than 1024 MiB of memory would stay free ("will leave … >= 1024 MiB … no changes").

#: Nominal bits per weight by quantization (llama.cpp ``tools/quantize`` table), used only
#: when the file size is unknown (engine metadata without a size).
_BITS_PER_WEIGHT: dict[str, float] = {
    "F32": 32,
    "F16": 16,
    "BF16": 16,
    "Q8_0": 8.5,
    "Q6_K": 6.56,
    "Q5_K_M": 5.69,
    "Q5_K_S": 5.54,
    "Q5_1": 6.0,
    "Q5_0": 5.5,
    "Q4_K_M": 4.89,
    "Q4_K_S": 4.58,
    "Q4_1": 5.0,
    "Q4_0": 4.5,
    "IQ4_NL": 4.5,
    "IQ4_XS": 4.25,
    "MXFP4_MOE": 4.25,
    "Q3_K_L": 4.27,
    "Q3_K_M": 3.91,
    "Q3_K_S": 3.5,
    "Q2_K": 2.96,
    "Q2_K_S": 2.7,
    "IQ3_M": 3.66,
    "IQ3_XXS": 3.06,
    "IQ2_M": 2.7,
    "IQ2_XS": 2.31,
    "IQ2_XXS": 2.06,
    "IQ1_M": 1.75,
    "IQ1_S": 1.56,
}


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes an engine needs for one loaded model, by part."""

    weights: int
    kv_cache: int
    compute: int
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.overhead


def padded_context(n_ctx: int) -> int:
    """The cell count llama.cpp allocates for ``n_ctx`` (rounded up to 256)."""
    if n_ctx <= 0:
        raise ValueError(f"context size must be positive, got {n_ctx}")
    return math.ceil(n_ctx / CONTEXT_PADDING) * CONTEXT_PADDING


def _bytes_per_element(cache_type: str) -> float:
    try:
        return KV_BYTES_PER_ELEMENT[cache_type.strip().lower()]
    except KeyError:
        known = ", ".join(KV_BYTES_PER_ELEMENT)
        raise ValueError(f"unknown KV cache type {cache_type!r}; use one of {known}") from None


def _missing(meta: ModelMeta, *names: str) -> None:
    absent = [n for n in names if getattr(meta, n) is None]
    if absent:
        raise ValueError(f"model {meta.name!r} lacks {', '.join(absent)}; cannot estimate memory")


def _layers(meta: ModelMeta) -> list[tuple[int, bool]]:
    """(KV heads, uses sliding window) per layer, with BACKENDS.md's defaults filled in."""
    heads = meta.head_count_kv if meta.head_count_kv is not None else meta.head_count
    if isinstance(heads, list):
        n_layer = meta.block_count or len(heads)
        per_layer = (list(heads) + [heads[-1] if heads else 0] * n_layer)[:n_layer]
    else:
        _missing(meta, "block_count")
        if heads is None:
            _missing(meta, "head_count_kv")
        n_layer = int(meta.block_count or 0)
        per_layer = [int(heads or 0)] * n_layer
    swa = list(meta.swa_layers or []) if meta.sliding_window else []
    swa = (swa + [False] * n_layer)[:n_layer]
    return [(int(h), bool(s)) for h, s in zip(per_layer, swa, strict=True)]


def _head_dims(meta: ModelMeta) -> tuple[int, int]:
    default = None
    if meta.embedding_length and meta.head_count:
        default = meta.embedding_length // meta.head_count
    key = meta.key_length or default
    value = meta.value_length or default
    if key is None or value is None:
        absent = [n for n, v in (("key_length", key), ("value_length", value)) if v is None]
        raise ValueError(
            f"model {meta.name!r} lacks {' and '.join(absent)} (or embedding_length and "
            "head_count to derive it); cannot estimate memory"
        )
    return int(key), int(value)


def _swa_cells(meta: ModelMeta, cells: int, n_ubatch: int) -> int:
    # llama.cpp (llama-kv-cache-iswa.cpp): the SWA cache holds window + ubatch cells, padded.
    window = int(meta.sliding_window or 0)
    return min(cells, math.ceil((window + n_ubatch) / CONTEXT_PADDING) * CONTEXT_PADDING)


def kv_cache_bytes(
    meta: ModelMeta,
    n_ctx: int,
    *,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    n_parallel: int = 1,
    n_ubatch: int = 512,
) -> int:
    """Bytes of KV cache for ``n_parallel`` sequences of ``n_ctx`` tokens each.

    BACKENDS.md: n_ctx × n_parallel × Σ_layers n_kv_heads(l) × (key_length + value_length) ×
    bytes/element, with layers of 0 KV heads holding nothing and sliding-window layers holding
    ``min(n_ctx, window + n_ubatch)`` cells (both padded to 256 as llama.cpp does).
    """
    if n_parallel < 1:
        raise ValueError(f"n_parallel must be at least 1, got {n_parallel}")
    bpe_k = _bytes_per_element(cache_type_k)
    bpe_v = _bytes_per_element(cache_type_v)
    layers = _layers(meta)
    cells = padded_context(n_ctx)
    if not any(heads for heads, _ in layers):
        return 0  # attention-free (recurrent) models keep a fixed state, counted in overhead
    key_len, value_len = _head_dims(meta)
    swa_cells = _swa_cells(meta, cells, n_ubatch)
    total = 0.0
    for heads, sliding in layers:
        layer_cells = swa_cells if sliding else cells
        total += layer_cells * heads * (key_len * bpe_k + value_len * bpe_v)
    return round(total * n_parallel)


def kv_bytes_per_token(
    meta: ModelMeta, *, cache_type_k: str = "f16", cache_type_v: str = "f16"
) -> float:
    """KV bytes one more token of context costs (layers with a sliding window excluded)."""
    bpe_k = _bytes_per_element(cache_type_k)
    bpe_v = _bytes_per_element(cache_type_v)
    layers = _layers(meta)
    if not any(heads for heads, _ in layers):
        return 0.0
    key_len, value_len = _head_dims(meta)
    return sum(
        heads * (key_len * bpe_k + value_len * bpe_v) for heads, sliding in layers if not sliding
    )


def compute_buffer_bytes(
    meta: ModelMeta,
    n_ctx: int,
    *,
    n_parallel: int = 1,
    n_batch: int = 2048,
    n_ubatch: int = 512,
    flash_attn: bool = True,
) -> int:
    """llama.cpp's CPU compute buffer (the formula and its measurements: module docstring).

    Counted in full: pages are committed lazily (a 2.5 GiB buffer left RSS unchanged after a
    short chat), but one full-ubatch prefill touches all of it.
    """
    _missing(meta, "embedding_length")
    cells = padded_context(n_ctx)
    # llama.cpp clamps n_batch to the total context and n_ubatch to n_batch
    # (measured: n_ctx 512 with n_ubatch 1024 or 2048 reserves the same buffer as 512).
    ubatch = max(1, min(n_ubatch, n_batch, cells * max(1, n_parallel)))
    layers = _layers(meta)
    has_full = any(h > 0 and not s for h, s in layers)
    has_swa = any(h > 0 and s for h, s in layers)
    swa_cells = _swa_cells(meta, cells, ubatch)
    # One KQ mask per KV cache (full and sliding); the mask spans one sequence's cells
    # (measured: 2 slots × 2048 reserve the same compute buffer as 1 × 2048).
    mask_cells = (cells if has_full else 0) + (swa_cells if has_swa else 0)
    n_embd = int(meta.embedding_length or 0)
    vocab_out = 4 * int(meta.vocab_size or 0)  # "output buffer": f32 logits of 1 output row
    if flash_attn:
        per_token = 2 * mask_cells + COMPUTE_BYTES_PER_EMBD_FA * n_embd
    else:
        n_head = int(meta.head_count or 0)
        widest = cells if has_full else (swa_cells if has_swa else 0)
        per_token = 4 * widest * n_head + 4 * mask_cells + COMPUTE_BYTES_PER_EMBD_NO_FA * n_embd
    return ubatch * per_token + vocab_out


def weights_bytes(meta: ModelMeta) -> int:
    """The file size (tensors are mmapped whole); from parameters × bits when size is unknown."""
    if meta.size_bytes:
        return int(meta.size_bytes)
    if meta.parameter_count:
        bits = _BITS_PER_WEIGHT.get((meta.quantization or "").upper(), 16)
        return int(meta.parameter_count * bits / 8)
    raise ValueError(f"model {meta.name!r} has neither a file size nor a parameter count")


def estimate_memory(
    meta: ModelMeta,
    n_ctx: int,
    *,
    cache_type_k: str = "f16",
    cache_type_v: str = "f16",
    n_parallel: int = 1,
    n_batch: int = 2048,
    n_ubatch: int = 512,
    flash_attn: bool = True,
) -> MemoryEstimate:
    """Weights + KV + compute + overhead for ``meta`` loaded at ``n_ctx`` tokens per sequence."""
    if not flash_attn and _bytes_per_element(cache_type_v) not in (2, 4):
        # llama.cpp refuses to load: "quantized V cache requires flash_attn to be enabled".
        raise ValueError("a quantized V cache needs flash attention (llama.cpp refuses to load)")
    ubatch = min(n_ubatch, n_batch)
    return MemoryEstimate(
        weights=weights_bytes(meta),
        kv_cache=kv_cache_bytes(
            meta,
            n_ctx,
            cache_type_k=cache_type_k,
            cache_type_v=cache_type_v,
            n_parallel=n_parallel,
            n_ubatch=ubatch,
        ),
        compute=compute_buffer_bytes(
            meta,
            n_ctx,
            n_parallel=n_parallel,
            n_batch=n_batch,
            n_ubatch=n_ubatch,
            flash_attn=flash_attn,
        ),
        overhead=OVERHEAD_BYTES,
    )


def load_estimate(meta: ModelMeta, settings: LoadSettings) -> int:
    """Total bytes a load with these :class:`LoadSettings` needs (engine defaults where unset),
    a draft model for speculative decoding included."""
    total = estimate_memory(
        meta,
        settings.n_ctx,
        cache_type_k=settings.cache_type_k or "f16",
        cache_type_v=settings.cache_type_v or "f16",
        n_parallel=settings.n_parallel,
        n_batch=settings.n_batch or 2048,
        n_ubatch=settings.n_ubatch or 512,
        flash_attn=settings.flash_attn is not False,
    ).total
    if settings.speculative == "draft" and settings.draft_path:
        total += draft_estimate(_draft_meta(settings.draft_path), settings)
    return total


def draft_estimate(draft: ModelMeta, settings: LoadSettings) -> int:
    """Bytes a draft model adds to a load with ``settings``: its own weights, an f16 KV cache
    of the same context and slots, its compute buffer and overhead."""
    return estimate_memory(
        draft,
        settings.n_ctx,
        n_parallel=settings.n_parallel,
        n_batch=settings.n_batch or 2048,
        n_ubatch=settings.n_ubatch or 512,
        flash_attn=settings.flash_attn is not False,
    ).total


@functools.lru_cache(maxsize=16)
def _draft_meta(path: str) -> ModelMeta:
    from autotune.models.gguf import GGUFError, read_gguf_meta

    try:
        return read_gguf_meta(path)
    except GGUFError as exc:
        raise ValueError(f"the draft model cannot be read: {exc}") from None
