"""Memory estimates: KV, compute buffer, weights and overhead, checked against llama.cpp's own logs.

The "engine logged" numbers were read from the embedded engine (xllamacpp, verbosity 4) when
loading the bundled model and two synthetic GGUFs; see ``autotune.models.estimate``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.ground.types import ModelMeta
from autotune.ground.units import MiB
from autotune.models.estimate import (
    KV_BYTES_PER_ELEMENT,
    OVERHEAD_BYTES,
    MemoryEstimate,
    compute_buffer_bytes,
    estimate_memory,
    kv_bytes_per_token,
    kv_cache_bytes,
    padded_context,
    weights_bytes,
)
from autotune.models.gguf import read_gguf_meta

# SmolLM2-135M as read from the bundled GGUF (kept literal so these tests need no file).
SMOL = ModelMeta(
    name="smollm2:135m",
    architecture="llama",
    parameter_count=134_515_008,
    block_count=30,
    head_count=9,
    head_count_kv=3,
    embedding_length=576,
    key_length=64,
    value_length=64,
    context_length=8192,
    vocab_size=49152,
    quantization="Q4_1",
    size_bytes=98_362_432,
)

# The synthetic gemma2 GGUF the SWA numbers were measured on: 4 layers, every other one
# sliding with a 256-token window.
GEMMA2 = ModelMeta(
    name="gemma2-synthetic",
    architecture="gemma2",
    block_count=4,
    head_count=8,
    head_count_kv=2,
    embedding_length=512,
    key_length=64,
    value_length=64,
    sliding_window=256,
    swa_layers=[True, False, True, False],
    context_length=32768,
    vocab_size=49152,
    size_bytes=82_546_848,
)

# The synthetic llama GGUF with n_ff = 4·n_embd (the ratio the compute formula assumes).
WIDE = ModelMeta(
    name="llama-synthetic",
    architecture="llama",
    block_count=4,
    head_count=16,
    head_count_kv=4,
    embedding_length=1024,
    key_length=64,
    value_length=64,
    context_length=32768,
    vocab_size=49152,
    size_bytes=224_106_112,
)


# --------------------------------------------------------------------------- KV cache


def test_bundled_kv_is_23040_bytes_per_token(bundled_gguf: Path) -> None:
    meta = read_gguf_meta(bundled_gguf)
    # 30 layers × 3 KV heads × (64 + 64) × 2 bytes (f16)
    assert kv_bytes_per_token(meta) == 30 * 3 * (64 + 64) * 2 == 23_040
    assert kv_cache_bytes(meta, 2048) == 2048 * 23_040
    # llama.cpp logs "KV buffer size = 180.00 MiB" for n_ctx 8192 and 720.00 MiB for 32768.
    assert kv_cache_bytes(meta, 8192) == 180 * MiB
    assert kv_cache_bytes(meta, 32768) == 720 * MiB


def test_q8_0_kv_matches_the_engine_log() -> None:
    # llama.cpp at n_ctx 4096, -ctk/-ctv q8_0: "size = 47.81 MiB … K (q8_0): 23.91 MiB".
    expected = 4096 * 30 * 3 * 128 * 34 / 32
    assert kv_cache_bytes(SMOL, 4096, cache_type_k="q8_0", cache_type_v="q8_0") == expected
    assert round(expected / MiB, 2) == 47.81


def test_mixed_and_quantized_cache_types() -> None:
    f16 = kv_cache_bytes(SMOL, 2048)
    q8_k = kv_cache_bytes(SMOL, 2048, cache_type_k="q8_0")
    q4 = kv_cache_bytes(SMOL, 2048, cache_type_k="q4_0", cache_type_v="q4_0")
    assert q8_k == f16 / 2 + f16 / 2 * (34 / 32) / 2
    assert q4 == f16 * (18 / 32) / 2
    assert kv_cache_bytes(SMOL, 2048, cache_type_k="F32", cache_type_v="f32") == 2 * f16
    assert set(KV_BYTES_PER_ELEMENT) >= {"f16", "q8_0", "q4_0"}


def test_unknown_cache_type_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown KV cache type 'q3_k'"):
        kv_cache_bytes(SMOL, 2048, cache_type_k="q3_k")


def test_context_is_padded_to_256_cells() -> None:
    # llama.cpp: n_ctx 1000 → "1024 cells".
    assert padded_context(1000) == 1024
    assert padded_context(1024) == 1024
    assert kv_cache_bytes(SMOL, 1000) == kv_cache_bytes(SMOL, 1024)
    with pytest.raises(ValueError):
        padded_context(0)


def test_parallel_sequences_multiply_the_cache() -> None:
    # llama.cpp with -c 4096 -np 2 allocates 2 × 2048 cells ("90.00 MiB", 2/2 seqs).
    assert kv_cache_bytes(SMOL, 2048, n_parallel=2) == 2 * kv_cache_bytes(SMOL, 2048) == 90 * MiB
    with pytest.raises(ValueError):
        kv_cache_bytes(SMOL, 2048, n_parallel=0)


def test_per_layer_kv_heads_with_attention_free_layers() -> None:
    hybrid = ModelMeta(
        name="hybrid",
        block_count=4,
        head_count=4,
        head_count_kv=[0, 2, 0, 2],
        embedding_length=256,
    )
    # Two attention layers × 2 heads × (64 + 64) × 2 bytes; key/value default to 256 / 4.
    assert kv_bytes_per_token(hybrid) == 2 * 2 * 128 * 2
    assert kv_cache_bytes(hybrid, 4096) == 4096 * 1024
    recurrent = dataclasses.replace(hybrid, head_count_kv=[0, 0, 0, 0])
    assert kv_cache_bytes(recurrent, 4096) == 0
    # A pure recurrent model (mamba: 0 heads, so no head size either) holds no KV at all.
    mamba = ModelMeta(name="mamba", block_count=4, head_count=0, head_count_kv=0)
    assert kv_cache_bytes(mamba, 4096) == 0 and kv_bytes_per_token(mamba) == 0


def test_uneven_key_and_value_lengths() -> None:
    meta = ModelMeta(name="mla", block_count=2, head_count_kv=1, key_length=576, value_length=512)
    assert kv_bytes_per_token(meta) == 2 * (576 + 512) * 2


@pytest.mark.parametrize(
    ("n_ctx", "n_ubatch", "mib"),
    [
        # Engine log: non-SWA cache 1024/2048/8192 cells + SWA cache 512 or 768 cells.
        (1000, 128, 1.5),
        (2048, 128, 2.5),
        (8192, 128, 8.5),
        (1000, 512, 1.75),
        (2048, 512, 2.75),
        (8192, 512, 8.75),
    ],
)
def test_sliding_window_layers_match_the_engine(n_ctx: int, n_ubatch: int, mib: float) -> None:
    assert kv_cache_bytes(GEMMA2, n_ctx, n_ubatch=n_ubatch) == mib * MiB


def test_sliding_window_is_capped_by_the_context() -> None:
    wide_window = dataclasses.replace(GEMMA2, sliding_window=100_000)
    no_swa = dataclasses.replace(GEMMA2, sliding_window=None, swa_layers=None)
    assert kv_cache_bytes(wide_window, 4096) == kv_cache_bytes(no_swa, 4096)
    # Per token of extra context only the two full layers grow.
    assert kv_bytes_per_token(GEMMA2) == 2 * 2 * 128 * 2
    assert kv_bytes_per_token(no_swa) == 4 * 2 * 128 * 2


def test_missing_metadata_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="block_count"):
        kv_cache_bytes(ModelMeta(name="x", head_count_kv=2, key_length=64), 2048)
    with pytest.raises(ValueError, match="lacks key_length and value_length"):
        kv_cache_bytes(ModelMeta(name="x", block_count=2, head_count_kv=2), 2048)
    with pytest.raises(ValueError, match="lacks value_length"):
        kv_cache_bytes(ModelMeta(name="x", block_count=2, head_count_kv=2, key_length=64), 2048)


# --------------------------------------------------------------------------- compute buffer


# (meta, n_ctx, n_ubatch, flash_attn, MiB from "CPU compute buffer size" + 0.19 MiB output buffer)
ENGINE_COMPUTE = [
    (SMOL, 8192, 512, False, 167.51),
    (SMOL, 32768, 512, False, 647.51),
    (SMOL, 2048, 128, False, 11.88),
    (SMOL, 512, 2048, False, 17.51),  # ubatch clamped to the context
    (WIDE, 2048, 512, True, 36.02),
    (WIDE, 8192, 512, True, 42.02),
    (WIDE, 8192, 128, True, 10.50),
    (WIDE, 8192, 512, False, 285.01),
    (GEMMA2, 8192, 512, True, 25.78),
    (GEMMA2, 8192, 512, False, 152.52),
    (GEMMA2, 1000, 128, True, 4.63),
]


@pytest.mark.parametrize(("meta", "n_ctx", "n_ubatch", "fa", "mib"), ENGINE_COMPUTE)
def test_compute_buffer_within_one_percent_of_the_engine(
    meta: ModelMeta, n_ctx: int, n_ubatch: int, fa: bool, mib: float
) -> None:
    engine = (mib + 0.1875) * MiB  # + the f32 logits row ("output buffer size = 0.19 MiB")
    estimate = compute_buffer_bytes(meta, n_ctx, n_ubatch=n_ubatch, flash_attn=fa)
    assert estimate == pytest.approx(engine, rel=0.01)


def test_bundled_flash_attention_compute_errs_on_the_safe_side() -> None:
    # SmolLM2's FFN is 2.67 × n_embd, narrower than the assumed 4 ×: the estimate is higher.
    for n_ctx, engine_mib in ((512, 15.14), (2048, 16.64), (32768, 46.64)):
        estimate = compute_buffer_bytes(SMOL, n_ctx) / MiB
        assert engine_mib < estimate < engine_mib + 6


def test_flash_attention_saves_compute_at_long_context() -> None:
    with_fa = compute_buffer_bytes(SMOL, 32768, flash_attn=True)
    without = compute_buffer_bytes(SMOL, 32768, flash_attn=False)
    assert without > 10 * with_fa


# --------------------------------------------------------------------------- totals


def test_estimate_parts_and_total() -> None:
    estimate = estimate_memory(SMOL, 4096)
    assert isinstance(estimate, MemoryEstimate)
    assert estimate.weights == SMOL.size_bytes
    assert estimate.kv_cache == kv_cache_bytes(SMOL, 4096)
    assert estimate.compute == compute_buffer_bytes(SMOL, 4096)
    assert estimate.overhead == OVERHEAD_BYTES
    assert estimate.total == sum(
        (estimate.weights, estimate.kv_cache, estimate.compute, estimate.overhead)
    )


def test_quantized_v_cache_needs_flash_attention() -> None:
    with pytest.raises(ValueError, match="flash attention"):
        estimate_memory(SMOL, 2048, cache_type_v="q8_0", flash_attn=False)
    # A quantized K alone is allowed without flash attention, as in llama.cpp.
    estimate_memory(SMOL, 2048, cache_type_k="q8_0", flash_attn=False)


def test_weights_fall_back_to_parameters_times_bits() -> None:
    no_size = dataclasses.replace(SMOL, size_bytes=None, quantization="Q8_0")
    assert weights_bytes(no_size) == int(134_515_008 * 8.5 / 8)
    unknown_quant = dataclasses.replace(SMOL, size_bytes=None, quantization=None)
    assert weights_bytes(unknown_quant) == 134_515_008 * 2
    with pytest.raises(ValueError):
        weights_bytes(dataclasses.replace(SMOL, size_bytes=None, parameter_count=None))


# --------------------------------------------------------------------------- properties


@st.composite
def metas(draw: st.DrawFn) -> ModelMeta:
    n_layer = draw(st.integers(1, 48))
    per_layer = draw(st.booleans())
    heads_kv: int | list[int]
    if per_layer:
        heads_kv = draw(st.lists(st.integers(0, 8), min_size=n_layer, max_size=n_layer))
    else:
        heads_kv = draw(st.integers(1, 8))
    window = draw(st.one_of(st.none(), st.integers(64, 8192)))
    swa = draw(st.lists(st.booleans(), min_size=n_layer, max_size=n_layer)) if window else None
    return ModelMeta(
        name="random",
        block_count=n_layer,
        head_count=16,
        head_count_kv=heads_kv,
        embedding_length=draw(st.sampled_from([256, 1024, 4096])),
        key_length=draw(st.sampled_from([64, 128, 256])),
        value_length=draw(st.sampled_from([64, 128, 256])),
        sliding_window=window,
        swa_layers=swa,
        vocab_size=32000,
        size_bytes=draw(st.integers(1, 10**11)),
    )


CACHE_TYPES = st.sampled_from(["f16", "q8_0", "q4_0", "f32"])


@settings(max_examples=200, deadline=None)
@given(
    meta=metas(),
    a=st.integers(1, 200_000),
    b=st.integers(1, 200_000),
    ctk=CACHE_TYPES,
    fa=st.booleans(),
    ubatch=st.sampled_from([64, 512, 2048]),
)
def test_estimates_never_shrink_with_more_context(
    meta: ModelMeta, a: int, b: int, ctk: str, fa: bool, ubatch: int
) -> None:
    small, large = sorted((a, b))
    kv = {"cache_type_k": ctk, "flash_attn": fa, "n_ubatch": ubatch}
    lo = estimate_memory(meta, small, **kv)
    hi = estimate_memory(meta, large, **kv)
    assert lo.kv_cache <= hi.kv_cache
    assert lo.compute <= hi.compute
    assert lo.total <= hi.total


@settings(max_examples=100, deadline=None)
@given(meta=metas(), n_ctx=st.integers(256, 65536), n_parallel=st.integers(1, 8))
def test_kv_scales_linearly_with_parallel_sequences(
    meta: ModelMeta, n_ctx: int, n_parallel: int
) -> None:
    one = kv_cache_bytes(meta, n_ctx)
    assert kv_cache_bytes(meta, n_ctx, n_parallel=n_parallel) == pytest.approx(n_parallel * one)


@settings(max_examples=100, deadline=None)
@given(meta=metas(), n_ctx=st.integers(256, 65536))
def test_kv_is_bounded_by_the_full_attention_formula(meta: ModelMeta, n_ctx: int) -> None:
    full = dataclasses.replace(meta, sliding_window=None, swa_layers=None)
    assert kv_cache_bytes(meta, n_ctx) <= kv_cache_bytes(full, n_ctx)
    assert kv_cache_bytes(full, n_ctx) == pytest.approx(
        padded_context(n_ctx) * kv_bytes_per_token(full)
    )
