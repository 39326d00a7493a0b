"""The planner is pure: these tests run it on hand-built inputs, no engine involved."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autotune.ground.profiles import get_profile
from autotune.ground.tuned import TunedSettings
from autotune.ground.types import Capabilities, LoadSettings, ModelMeta
from autotune.tuning.planner import (
    CONTEXT_BUCKETS,
    MemoryState,
    PlanInput,
    bucket_for,
    context_need,
    plan,
)

EMBEDDED = Capabilities(
    load_control=True,
    kv_cache_type=True,
    flash_attention=True,
    context_change_reloads=True,
    keep_alive=True,
)
OLLAMA = Capabilities(
    per_request_context=True, env_load_settings=True, keep_alive=True, context_change_reloads=True
)
VLLM = Capabilities(prefix_cache=True, reports_cached_tokens=True)
META = ModelMeta(
    name="m",
    context_length=32768,
    block_count=30,
    head_count=9,
    head_count_kv=3,
    embedding_length=576,
    size_bytes=100_000_000,
)


def run(need: int, profile: str = "balanced", caps: Capabilities = EMBEDDED, **kw: object):
    return plan(
        PlanInput(
            profile=get_profile(profile),
            capabilities=caps,
            meta=kw.pop("meta", META),
            need_tokens=need,
            **kw,
        )
    )  # type: ignore[arg-type]


def test_first_request_sizes_to_its_need_not_the_profile_maximum() -> None:
    p = run(1500, "quality")
    assert p.load is not None and p.load.n_ctx == 2048
    assert not p.reload_expected


def test_a_loaded_context_that_fits_is_kept_without_reload() -> None:
    current = LoadSettings(n_ctx=4096, cache_type_k="f16", cache_type_v="f16")
    p = run(3000, current=current, loaded=True)
    assert p.load == current
    assert not p.reload_expected


def test_context_grows_to_the_next_bucket_only_when_needed() -> None:
    current = LoadSettings(n_ctx=4096, cache_type_k="f16", cache_type_v="f16")
    p = run(5000, current=current, loaded=True)
    assert p.load is not None and p.load.n_ctx == 8192
    assert p.reload_expected


def test_never_shrinks_while_loaded_even_when_the_profile_cap_is_smaller() -> None:
    current = LoadSettings(n_ctx=8192, cache_type_k="f16", cache_type_v="f16")
    p = run(1000, "fast", current=current, loaded=True)
    assert p.load == current  # no q8_0 switch either: that would reload
    assert any(d.key == "kv" and "next load" in d.reason for d in p.decisions)


def test_context_never_exceeds_the_trained_length() -> None:
    meta = ModelMeta(name="m", context_length=4096)
    p = run(10_000, "quality", meta=meta)
    assert p.load is not None and p.load.n_ctx == 4096


def test_ollama_gets_num_ctx_but_kv_and_flash_attention_only_as_advice() -> None:
    p = run(1000, "fast", caps=OLLAMA)
    assert p.load is not None
    assert p.load.cache_type_k is None and p.load.cache_type_v is None
    assert p.load.flash_attn is None
    assert p.env_advice == {"OLLAMA_FLASH_ATTENTION": "1", "OLLAMA_KV_CACHE_TYPE": "q8_0"}


def test_engine_managed_context_gets_no_load_settings() -> None:
    p = run(1000, caps=VLLM)
    assert p.load is None
    assert p.keep_alive is None  # this engine has no keep-alive control


def test_quantized_v_cache_turns_flash_attention_on() -> None:
    p = run(1000, "fast")
    assert p.load is not None and p.load.cache_type_v == "q8_0" and p.load.flash_attn is True


@pytest.mark.parametrize(
    ("used", "ctx", "kv", "batch"),
    [
        (0.50, 8192, "f16", None),
        (0.82, 7168, "f16", None),
        (0.90, 6144, "q8_0", None),
        (0.95, 5120, "q8_0", 512),
    ],
)
def test_pressure_tiers_shape_the_next_load(
    used: float, ctx: int, kv: str, batch: int | None
) -> None:
    memory = MemoryState(available=20 * 1024**3, used_fraction=used)
    p = run(5000, memory=memory)  # need 5000 → 8192 bucket; halved, but never below 5120
    assert p.load is not None
    assert p.load.n_ctx == ctx
    assert p.load.cache_type_k == kv
    assert p.load.n_batch == batch


def test_pressure_never_shrinks_below_the_request_need() -> None:
    memory = MemoryState(available=20 * 1024**3, used_fraction=0.95)
    p = run(7000, memory=memory)
    assert p.load is not None and p.load.n_ctx >= 7000


def test_pressure_leaves_a_loaded_model_alone() -> None:
    current = LoadSettings(n_ctx=8192, cache_type_k="f16", cache_type_v="f16")
    memory = MemoryState(available=20 * 1024**3, used_fraction=0.95)
    p = run(3000, current=current, loaded=True, memory=memory)
    assert p.load == current and not p.reload_expected


def _linear(meta: ModelMeta, s: LoadSettings) -> int:
    return 1_000_000_000 + 100_000 * s.n_ctx  # 1 GB of weights + 100 kB per token


def test_no_swap_guard_shrinks_the_context_to_what_fits() -> None:
    memory = MemoryState(available=1_500_000_000, used_fraction=0.3)
    p = run(7000, memory=memory, estimator=_linear)
    assert p.load is not None
    assert p.load.n_ctx % 256 == 0
    assert _linear(META, p.load) <= 1_500_000_000 < _linear(META, LoadSettings(p.load.n_ctx + 256))
    assert p.refused is None
    assert any("no-swap" in d.reason for d in p.decisions)


def test_no_swap_guard_refuses_with_numbers_when_nothing_fits() -> None:
    memory = MemoryState(available=900_000_000, used_fraction=0.3)
    p = run(1000, memory=memory, estimator=_linear)
    assert p.refused is not None
    assert "GiB" in p.refused or "MiB" in p.refused


def test_guard_counts_the_memory_a_reload_frees() -> None:
    current = LoadSettings(n_ctx=2048, cache_type_k="f16", cache_type_v="f16")
    memory = MemoryState(available=100_000_000, used_fraction=0.3)  # little free besides the model
    p = run(3000, current=current, loaded=True, memory=memory, estimator=_linear)
    assert p.refused is None and p.load is not None and p.load.n_ctx >= 2048


def test_remote_engines_skip_the_memory_guard() -> None:
    remote = Capabilities(per_request_context=True, remote=True)
    memory = MemoryState(available=1, used_fraction=0.99)
    p = run(1000, caps=remote, memory=memory, estimator=_linear)
    assert p.refused is None


def test_profile_temperature_only_fills_an_unset_value() -> None:
    assert run(100, "fast").params == {"temperature": 0.1}
    assert run(100, "fast", client_params={"temperature": 1.2}).params == {}


def test_measured_settings_are_used_and_attributed() -> None:
    tuned = TunedSettings(n_batch=1024, n_ubatch=256, n_threads=2, flash_attn=False)
    p = run(1000, tuned=tuned)
    assert p.load is not None
    assert (p.load.n_batch, p.load.n_ubatch, p.load.n_threads, p.load.flash_attn) == (
        1024,
        256,
        2,
        False,
    )
    assert any("measured" in d.reason for d in p.decisions)


def test_summary_names_what_was_applied() -> None:
    s = run(1000, "fast").summary()
    assert "profile=fast" in s and "ctx=2048" in s and "kv=q8_0" in s


def test_context_need_reserves_output_and_margin() -> None:
    assert context_need(1000, 200) == 1000 + 200 + 256
    assert context_need(1000, None) > context_need(1000, 200)


@given(st.integers(1, 300_000), st.sampled_from([2048, 8192, 32768, 131072]))
def test_bucket_is_a_bucket_within_the_cap_and_holds_the_need_when_it_can(
    need: int, cap: int
) -> None:
    b = bucket_for(need, cap)
    assert b <= max(cap, 512)
    assert b in CONTEXT_BUCKETS or b == cap
    if need <= cap:
        assert b >= need


@given(st.lists(st.integers(100, 40_000), min_size=1, max_size=30))
def test_a_conversation_only_ever_grows_its_context(needs: list[int]) -> None:
    current = None
    for need in needs:
        p = run(need, "quality", current=current, loaded=current is not None)
        assert p.load is not None
        if current is not None:
            assert p.load.n_ctx >= current.n_ctx
            assert p.reload_expected == (p.load.n_ctx != current.n_ctx)
        current = p.load


def test_a_model_trained_on_fewer_than_512_tokens_keeps_its_own_context() -> None:
    tiny = ModelMeta(name="tiny", context_length=256)
    p = run(100, "quality", meta=tiny)
    assert p.load is not None and p.load.n_ctx == 256


def test_the_guard_counts_on_memory_the_engine_would_free() -> None:
    """The pipeline adds idle models' memory to `available` (the engine unloads them first)."""
    memory = MemoryState(available=1_500_000_000 + 2_000_000_000, used_fraction=0.5)
    p = run(7000, memory=memory, estimator=_linear)
    assert p.refused is None and p.load is not None and p.load.n_ctx == 8192


# --------------------------------------------------------------------------- speculation

SPECULATIVE = Capabilities(
    load_control=True,
    kv_cache_type=True,
    flash_attention=True,
    context_change_reloads=True,
    keep_alive=True,
    speculative=True,
)
MEASURED = TunedSettings(
    speculative="ngram_mod", spec_copy_gain=0.6, spec_chat_gain=-0.01, source="autotune tune, X"
)


def test_a_measured_speculative_mode_is_loaded_and_shown_in_the_plan() -> None:
    p = run(1000, caps=SPECULATIVE, tuned=MEASURED)
    assert p.load is not None and p.load.speculative == "ngram_mod" and p.load.draft_path is None
    spec = p.last("spec")
    assert spec is not None and spec.value == "ngram_mod"
    assert spec.reason.startswith("measured") and "+60%" in spec.reason
    assert "spec=ngram_mod" in p.summary()


def test_a_model_never_measured_keeps_today_s_load_and_header() -> None:
    for tuned in (None, TunedSettings(n_threads=2)):
        with_caps = run(1000, caps=SPECULATIVE, tuned=tuned)
        without = run(1000, caps=EMBEDDED, tuned=tuned)
        assert with_caps.load == without.load and with_caps.load is not None
        assert with_caps.load.speculative is None
        assert with_caps.summary() == without.summary() and "spec=" not in with_caps.summary()


def test_measured_not_to_pay_loads_without_speculation_and_says_so() -> None:
    tuned = TunedSettings(speculative="none", spec_copy_gain=0.02, spec_chat_gain=-0.08)
    p = run(1000, caps=SPECULATIVE, tuned=tuned)
    assert p.load is not None and p.load.speculative is None
    assert "spec=none" in p.summary()
    spec = p.last("spec")
    assert spec is not None and "does not pay" in spec.reason


def test_an_engine_that_cannot_speculate_ignores_the_measurement() -> None:
    p = run(1000, caps=EMBEDDED, tuned=MEASURED)
    assert p.load is not None and p.load.speculative is None and p.last("spec") is None


def test_a_loaded_model_keeps_its_mode_measured_later_waits_for_the_next_load() -> None:
    current = LoadSettings(n_ctx=4096, cache_type_k="f16", cache_type_v="f16")
    p = run(1000, caps=SPECULATIVE, tuned=MEASURED, current=current, loaded=True)
    assert p.load == current and not p.reload_expected
    spec = p.last("spec")
    assert spec is not None and spec.value == "none" and "next load" in spec.reason
    # ...and a model loaded with speculation keeps it on every later request.
    speculating = LoadSettings(n_ctx=4096, cache_type_k="f16", cache_type_v="f16", **_NGRAM)
    for tuned in (MEASURED, None, TunedSettings(speculative="none")):
        p = run(1000, caps=SPECULATIVE, tuned=tuned, current=speculating, loaded=True)
        assert p.load == speculating and not p.reload_expected
        assert "spec=ngram_mod" in p.summary()


_NGRAM: dict[str, str] = {"speculative": "ngram_mod"}
DRAFTED = TunedSettings(
    speculative="draft", draft_path="/models/small.gguf", spec_copy_gain=0.4, spec_chat_gain=0.1
)


def _with_draft(meta: ModelMeta, s: LoadSettings) -> int:
    return _linear(meta, s) + (400_000_000 if s.draft_path else 0)


def test_a_draft_model_is_loaded_by_path_and_counted_by_the_guard() -> None:
    memory = MemoryState(available=8_000_000_000, used_fraction=0.3)
    p = run(1000, caps=SPECULATIVE, tuned=DRAFTED, memory=memory, estimator=_with_draft)
    assert p.load is not None
    assert (p.load.speculative, p.load.draft_path) == ("draft", "/models/small.gguf")


def test_a_draft_model_is_dropped_before_the_context_is_shrunk() -> None:
    # 1 GB + 8192 × 100 kB fits in 1.9 GB, but not with the draft's 0.4 GB beside it.
    memory = MemoryState(available=1_900_000_000, used_fraction=0.3)
    p = run(7000, caps=SPECULATIVE, tuned=DRAFTED, memory=memory, estimator=_with_draft)
    assert p.load is not None and p.load.n_ctx == 8192
    assert p.load.speculative is None and p.load.draft_path is None
    spec = p.last("spec")
    assert spec is not None and spec.value == "none" and spec.reason.startswith("no-swap")
    assert "spec=none" in p.summary()


def test_no_draft_model_under_high_memory_pressure_but_n_grams_stay() -> None:
    high = MemoryState(available=8_000_000_000, used_fraction=0.90)
    p = run(1000, caps=SPECULATIVE, tuned=DRAFTED, memory=high)
    assert p.load is not None and p.load.speculative is None
    spec = p.last("spec")
    assert spec is not None and spec.reason.startswith("pressure")
    p = run(1000, caps=SPECULATIVE, tuned=MEASURED, memory=high)
    assert p.load is not None and p.load.speculative == "ngram_mod"
