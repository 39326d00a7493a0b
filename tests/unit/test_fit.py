"""Fit verdicts, the largest context that fits, and profile recommendations."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.ground.profiles import PROFILES
from autotune.ground.types import ModelMeta
from autotune.ground.units import GiB, MiB
from autotune.models.estimate import estimate_memory
from autotune.models.fit import (
    COMFORTABLE_FRACTION,
    CONTEXT_STEP,
    MIN_CONTEXT,
    TIGHT_FRACTION,
    Verdict,
    assess_fit,
    max_context_that_fits,
    profile_context,
)
from autotune.models.gguf import read_gguf_meta

# Llama-3.1-8B-like dimensions (32 layers, 8 KV heads of 128, 128k trained) at Q4_K_M size.
LLAMA8B = ModelMeta(
    name="llama3.1:8b",
    architecture="llama",
    block_count=32,
    head_count=32,
    head_count_kv=8,
    embedding_length=4096,
    key_length=128,
    value_length=128,
    context_length=131072,
    vocab_size=128256,
    size_bytes=4_920_000_000,
)

SMOL = ModelMeta(
    name="smollm2:135m",
    block_count=30,
    head_count=9,
    head_count_kv=3,
    embedding_length=576,
    context_length=8192,
    vocab_size=49152,
    size_bytes=98_362_432,
)


def test_profiles_from_the_issues() -> None:
    assert (PROFILES["fast"].context_cap, PROFILES["fast"].kv_cache_type) == (2048, "q8_0")
    assert (PROFILES["balanced"].context_cap, PROFILES["balanced"].kv_cache_type) == (8192, "f16")
    assert (PROFILES["quality"].context_cap, PROFILES["quality"].kv_cache_type) == (32768, "f16")
    assert profile_context(SMOL, "quality") == 8192  # never above the trained context
    assert profile_context(LLAMA8B, "quality") == 32768


@pytest.mark.parametrize(
    ("share", "verdict"),
    [
        (COMFORTABLE_FRACTION, Verdict.COMFORTABLE),
        (TIGHT_FRACTION, Verdict.TIGHT),
        (1.0, Verdict.SWAP_RISK),
    ],
)
def test_verdict_thresholds(share: float, verdict: Verdict) -> None:
    total = estimate_memory(LLAMA8B, 8192).total
    at_limit = math.ceil(total / share)  # the estimate is exactly at (just under) the share
    assert assess_fit(LLAMA8B, at_limit, n_ctx=8192).verdict is verdict
    just_over = int(total / share) - 1
    worse = assess_fit(LLAMA8B, just_over, n_ctx=8192).verdict
    order = list(Verdict)
    assert order.index(worse) == order.index(verdict) + 1


def test_verdict_values_read_as_sentences() -> None:
    assert [v.value for v in Verdict] == ["fits comfortably", "tight", "swap risk", "will not fit"]


def test_no_budget_will_not_fit() -> None:
    fit = assess_fit(SMOL, 0)
    assert fit.verdict is Verdict.WONT_FIT
    assert fit.max_context is None
    assert fit.recommended_profile == "fast"


@pytest.mark.parametrize(
    ("budget", "profile", "n_ctx"),
    [
        (16 * GiB, "quality", 32768),  # ~9.5 GiB at 32k: 59 %
        (12 * GiB, "balanced", 8192),  # 32k would be 79 %, 8k is ~6.1 GiB: 51 %
        (8 * GiB, "fast", 2048),  # 8k would be 76 %
    ],
)
def test_recommended_profile(budget: int, profile: str, n_ctx: int) -> None:
    fit = assess_fit(LLAMA8B, budget)
    assert fit.recommended_profile == profile
    assert fit.n_ctx == n_ctx  # without n_ctx the verdict is for the profile's context
    quality = estimate_memory(LLAMA8B, 32768).total
    balanced = estimate_memory(LLAMA8B, 8192).total
    assert (quality <= COMFORTABLE_FRACTION * budget) == (profile == "quality")
    assert (balanced <= COMFORTABLE_FRACTION * budget) == (profile in ("quality", "balanced"))


def test_bundled_model_on_a_gigabyte(bundled_gguf: Path) -> None:
    meta = read_gguf_meta(bundled_gguf, "smollm2:135m")
    fit = assess_fit(meta, 1 * GiB)
    assert fit.verdict is Verdict.COMFORTABLE
    assert fit.recommended_profile == "quality"
    assert fit.n_ctx == 8192  # quality's 32k capped at the trained 8,192
    assert fit.max_context == 8192
    assert "8,192 tokens" in fit.reason and "1.0 GiB" in fit.reason


def test_explicit_context_and_cache_types() -> None:
    f16 = assess_fit(LLAMA8B, 12 * GiB, n_ctx=65536)
    q8 = assess_fit(LLAMA8B, 12 * GiB, n_ctx=65536, cache_type_k="q8_0", cache_type_v="q8_0")
    assert f16.n_ctx == q8.n_ctx == 65536
    assert f16.estimate.kv_cache == 8 * GiB
    assert q8.estimate.kv_cache == 8 * GiB * 34 / 64
    assert f16.verdict is Verdict.WONT_FIT  # 4.6 GiB weights + 8 GiB KV > 12 GiB
    assert q8.verdict is Verdict.TIGHT  # 4.6 + 4.25 + compute + overhead ≈ 76 %
    assert q8.max_context is not None and f16.max_context is not None
    assert q8.max_context > f16.max_context


def test_reason_is_one_sentence_with_numbers() -> None:
    fit = assess_fit(LLAMA8B, 8 * GiB, n_ctx=8192)
    assert fit.reason.endswith(".")
    assert fit.reason.count(". ") == 0
    assert "8,192 tokens" in fit.reason and "8.0 GiB" in fit.reason
    assert f"up to {fit.max_context:,} tokens fit" in fit.reason


def test_max_context_examples() -> None:
    assert max_context_that_fits(SMOL, 8 * GiB) == 8192  # trained context is the ceiling
    assert max_context_that_fits(SMOL, 100 * MiB) is None  # not even the weights + overhead
    got = max_context_that_fits(LLAMA8B, 8 * GiB)
    assert got is not None and got % CONTEXT_STEP == 0
    assert estimate_memory(LLAMA8B, got).total <= 8 * GiB
    assert estimate_memory(LLAMA8B, got + CONTEXT_STEP).total > 8 * GiB


def test_max_context_honours_cache_type_and_parallel() -> None:
    base = max_context_that_fits(LLAMA8B, 8 * GiB)
    q4 = max_context_that_fits(LLAMA8B, 8 * GiB, cache_type_k="q4_0", cache_type_v="q4_0")
    two = max_context_that_fits(LLAMA8B, 8 * GiB, n_parallel=2)
    assert base is not None and q4 is not None and two is not None
    assert q4 > base > two


def test_unknown_trained_context_is_searched_to_a_ceiling() -> None:
    open_ended = dataclasses.replace(SMOL, context_length=None)
    got = max_context_that_fits(open_ended, 2 * GiB)
    assert got is not None and got > 8192


def test_tiny_trained_context() -> None:
    tiny = dataclasses.replace(SMOL, context_length=300)
    assert max_context_that_fits(tiny, 1 * GiB) == 300


@settings(max_examples=60, deadline=None)
@given(
    budget=st.integers(50 * MiB, 64 * GiB),
    kv_type=st.sampled_from(["f16", "q8_0", "q4_0"]),
    trained=st.sampled_from([4096, 8192, 32768, 131072]),
    n_layer=st.integers(4, 64),
)
def test_max_context_fits_and_the_next_step_does_not(
    budget: int, kv_type: str, trained: int, n_layer: int
) -> None:
    meta = dataclasses.replace(LLAMA8B, context_length=trained, block_count=n_layer)
    kv = {"cache_type_k": kv_type, "cache_type_v": kv_type}
    got = max_context_that_fits(meta, budget, **kv)
    if got is None:
        assert estimate_memory(meta, MIN_CONTEXT, **kv).total > budget
        return
    assert MIN_CONTEXT <= got <= trained
    assert got % CONTEXT_STEP == 0
    assert estimate_memory(meta, got, **kv).total <= budget
    if got + CONTEXT_STEP <= trained:
        assert estimate_memory(meta, got + CONTEXT_STEP, **kv).total > budget


@settings(max_examples=60, deadline=None)
@given(budget=st.integers(1, 64 * GiB), n_ctx=st.integers(512, 131072))
def test_verdict_agrees_with_the_share_of_the_budget(budget: int, n_ctx: int) -> None:
    fit = assess_fit(LLAMA8B, budget, n_ctx=n_ctx)
    share = fit.estimate.total / budget
    expected = (
        Verdict.COMFORTABLE
        if share <= COMFORTABLE_FRACTION
        else Verdict.TIGHT
        if share <= TIGHT_FRACTION
        else Verdict.SWAP_RISK
        if share <= 1
        else Verdict.WONT_FIT
    )
    assert fit.verdict is expected
    # max_context agrees: whatever fits at n_ctx fits up to at least n_ctx, and vice versa.
    if fit.verdict is Verdict.WONT_FIT:
        assert fit.max_context is None or fit.max_context < n_ctx
    else:
        assert fit.max_context is not None and fit.max_context >= n_ctx
