"""Model catalog and ``recommend``: every number sourced, sizes sane, the speed bound honest.

Pure logic on the shipped ``catalog.json``; nothing is faked. The 2-core profile below is
built with the real ``assemble_profile`` from plain numbers matching this development VM.
"""

from __future__ import annotations

import json
from importlib import resources

import pytest

from autotune.ground.units import GiB
from autotune.hardware.profile import CpuInfo, assemble_profile, effective_budget
from autotune.models.catalog import (
    DEFAULT_CONTEXT,
    FIT_COMFORTABLE,
    FIT_NO,
    FIT_SWAP,
    FIT_TIGHT,
    LOOKED_UP,
    QUANT_BITS,
    catalog,
    catalog_meta,
    file_size,
    fit_class,
    quality_score,
    recommend,
    speed_bound_tps,
)
from autotune.models.estimate import kv_cache_bytes

REQUIRED = {
    "qwen3:4b",
    "qwen3:8b",
    "qwen3:14b",
    "qwen3:30b-a3b",
    "qwen3:32b",
    "gemma3:4b",
    "gemma3:12b",
    "gemma3:27b",
    "llama3.1:8b",
    "llama3.2:3b",
    "qwen2.5-coder:7b",
    "qwen2.5-coder:14b",
    "deepseek-r1:7b",
    "deepseek-r1:14b",
    "phi4:14b",
    "mistral:7b",
    "mistral-small:24b",
    "smollm2:135m",
    "smollm2:1.7b",
}


def by_name() -> dict:
    return {m.name: m for m in catalog()}


def raw_catalog() -> dict:
    text = resources.files("autotune.models").joinpath("catalog.json").read_text("utf-8")
    return json.loads(text)


def two_core_cpu_profile():
    return assemble_profile(
        os_name="linux",
        os_version="test",
        machine="x86_64",
        cpu=CpuInfo("Intel(R) Xeon(R) Processor", 2, 2),
        ram_total=24 * GiB,
        ram_available=23 * GiB,
        swap_total=0,
        swap_used=0,
    )


# --------------------------------------------------------------------------- sources


def test_catalog_has_the_required_models_and_date() -> None:
    assert REQUIRED.issubset(by_name())
    assert raw_catalog()["looked_up"] == LOOKED_UP == "2026-11-25"


def test_every_number_in_the_json_carries_a_source() -> None:
    doc = raw_catalog()
    sources = doc["sources"]
    numbers_checked = 0

    def walk(node: object, path: str) -> None:
        nonlocal numbers_checked
        if isinstance(node, dict):
            if "value" in node or "score" in node:
                source = node.get("source")
                assert isinstance(source, str) and source.strip(), f"{path} has no source"
                resolved = sources.get(source, source)
                assert resolved.strip(), f"{path} has an empty source"
                numbers_checked += 1
            for key, child in node.items():
                if key in ("value", "score"):
                    assert isinstance(child, (int, float)), path
                    continue
                walk(child, f"{path}.{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{path}[{i}]")
        else:
            assert not isinstance(node, (int, float)) or isinstance(node, bool), (
                f"bare number at {path}: every number needs {{value, source}}"
            )

    walk(doc["models"], "models")
    assert numbers_checked > 19 * 6


def test_cited_sources_point_somewhere() -> None:
    for model in catalog():
        numbers = [
            model.params_total,
            model.params_active,
            model.context_trained,
            model.layers,
            model.kv_heads,
            model.head_dim,
            *model.sizes.values(),
        ]
        for number in numbers:
            assert number.value > 0, model.name
            text = number.source
            assert any(
                marker in text for marker in ("http", "arXiv", "measured:", "dense model")
            ), f"{model.name}: {text!r} names no place"
        for bench in model.benchmarks:
            assert 0 < bench.score <= 100, (model.name, bench.name)
            assert "http" in bench.source or "arXiv" in bench.source, (model.name, bench.source)
            assert bench.setting


def test_unverified_numbers_are_marked_not_hidden() -> None:
    unverified = [
        (m.name, s)
        for m in catalog()
        for s in (m.params_total, m.context_trained, m.layers, m.kv_heads, m.head_dim)
        if not s.verified
    ]
    assert unverified, "the catalog admits numbers recalled rather than read; they must be flagged"
    assert all(s.source for _, s in unverified)


def test_gaps_are_none_not_made_up() -> None:
    models = by_name()
    for name in ("qwen2.5-coder:7b", "qwen2.5-coder:14b", "deepseek-r1:7b", "smollm2:135m"):
        assert quality_score(models[name]) == (None, None), name
    # Mistral's published MMLU is for v0.1; Ollama's mistral:7b is v0.3, so it must not score it.
    assert quality_score(models["mistral:7b"]) == (None, None)
    assert any(b.name == "MMLU" for b in models["mistral:7b"].benchmarks)


def test_quality_is_chance_corrected_mmlu() -> None:
    q, bench = quality_score(by_name()["llama3.1:8b"])
    assert bench is not None and bench.score == 69.4
    assert q == pytest.approx((69.4 - 25) / 75)


# --------------------------------------------------------------------------- sizes and KV


def test_sizes_grow_with_parameters_within_each_family() -> None:
    families: dict[str, list] = {}
    for model in catalog():
        families.setdefault(model.family, []).append(model)
    for members in families.values():
        members.sort(key=lambda m: m.params_total.value)
        for quant in QUANT_BITS:
            sizes = [file_size(m, quant).value for m in members]
            assert sizes == sorted(sizes), (members[0].family, quant, sizes)


def test_q8_is_bigger_than_q4_for_every_model() -> None:
    for model in catalog():
        assert file_size(model, "Q8_0").value > 1.5 * file_size(model, "Q4_K_M").value, model.name


def test_size_estimate_agrees_with_every_published_size() -> None:
    checked = 0
    for model in catalog():
        for quant, published in model.sizes.items():
            estimate = model.params_total.value * QUANT_BITS[quant] / 8
            assert estimate == pytest.approx(published.value, rel=0.06), (model.name, quant)
            checked += 1
    assert checked >= 5


def test_estimated_sizes_say_they_are_estimates() -> None:
    size = file_size(by_name()["qwen3:32b"], "Q4_K_M")
    assert size.source.startswith("estimate:") and not size.verified
    assert size.value == pytest.approx(32.8e9 * 4.9 / 8)
    with pytest.raises(ValueError, match="unknown quantisation"):
        file_size(by_name()["qwen3:32b"], "Q3_K_S")


def test_catalog_kv_matches_the_measured_smollm2_figure() -> None:
    smol = catalog_meta(by_name()["smollm2:135m"], "Q8_0")
    # BACKENDS.md: measured 23,040 bytes per token
    assert kv_cache_bytes(smol, 8192) == 23_040 * 8192


def test_sliding_window_layers_cap_gemma3_kv() -> None:
    gemma = catalog_meta(by_name()["gemma3:12b"], "Q4_K_M")
    per_token = 48 * 8 * 256 * 2 * 2
    assert kv_cache_bytes(gemma, 1024) == 1024 * per_token  # within the window: all layers full
    long = kv_cache_bytes(gemma, 32768, n_ubatch=512)
    global_layers = 48 // 6
    window_cells = 1024 + 512  # llama.cpp: window + ubatch, padded to 256
    expected = (global_layers * 32768 + (48 - global_layers) * window_cells) * 8 * 256 * 2 * 2
    assert long == expected
    assert long < 32768 * per_token / 4


# --------------------------------------------------------------------------- speed bound


def test_speed_bound_formula() -> None:
    tps = speed_bound_tps(4e9, "Q4_K_M", 20.0)
    assert tps == pytest.approx(20e9 / (4e9 * 4.9 / 8))
    assert speed_bound_tps(4e9, "Q4_K_M", 40.0) == pytest.approx(2 * tps)
    assert speed_bound_tps(4e9, "Q8_0", 20.0) < tps
    assert speed_bound_tps(4e9, "Q4_K_M", 0.0) == 0.0


def test_moe_speed_follows_active_parameters() -> None:
    recs = {
        (r.name, r.quant): r
        for r in recommend(200 * GiB, 100.0, bandwidth_source="test", quants=("Q4_K_M",))
    }
    moe = recs[("qwen3:30b-a3b", "Q4_K_M")]
    dense_4b = recs[("qwen3:4b", "Q4_K_M")]
    dense_32b = recs[("qwen3:32b", "Q4_K_M")]
    assert moe.tokens_per_s_max == pytest.approx(speed_bound_tps(3.3e9, "Q4_K_M", 100.0))
    assert moe.tokens_per_s_max > dense_4b.tokens_per_s_max > dense_32b.tokens_per_s_max
    assert any("mixture of experts" in note for note in moe.notes)


# --------------------------------------------------------------------------- fit and ranking


def test_fit_classes_are_the_verdicts_ls_gives() -> None:
    assert fit_class(70, 100) == FIT_COMFORTABLE
    assert fit_class(71, 100) == FIT_TIGHT
    assert fit_class(90, 100) == FIT_TIGHT
    assert fit_class(100, 100) == FIT_SWAP
    assert fit_class(101, 100) == FIT_NO
    assert fit_class(1, 0) == FIT_NO


def test_two_core_cpu_never_calls_a_14b_fastest() -> None:
    profile = two_core_cpu_profile()
    assert profile.memory_bandwidth_gbs == pytest.approx(20.0)
    recs = recommend(
        effective_budget(profile, None),
        profile.memory_bandwidth_gbs,
        bandwidth_source=profile.bandwidth_source,
    )
    by_key = {(r.name, r.quant): r for r in recs}
    b14 = by_key[("qwen3:14b", "Q4_K_M")]
    b4 = by_key[("qwen3:4b", "Q4_K_M")]
    assert b14.fits and b4.fits
    assert b14.tokens_per_s_max < b4.tokens_per_s_max
    assert b14.tokens_per_s_max < 3.0  # 20 GB/s ÷ ~9 GB per token

    (fastest,) = [r for r in recs if "fastest" in r.labels]
    assert "14b" not in fastest.name
    assert all(fastest.tokens_per_s_max >= r.tokens_per_s_max for r in recs if r.fits)
    by_speed = sorted((r for r in recs if r.fits), key=lambda r: -r.tokens_per_s_max)
    assert "14b" not in by_speed[0].name
    assert "14b" not in recs[0].name
    assert all(r.bandwidth_source == profile.bandwidth_source for r in recs)
    assert b14.speed_text.startswith("≤ ") and b14.speed_text.endswith(" tok/s")


def test_models_that_do_not_fit_go_last_and_are_marked() -> None:
    recs = recommend(8 * GiB, 50.0, bandwidth_source="test")
    fits = [r.fits for r in recs]
    first_misfit = fits.index(False)
    assert all(fits[:first_misfit]) and not any(fits[first_misfit:])
    misfits = recs[first_misfit:]
    assert {r.fit for r in misfits} <= {FIT_SWAP, FIT_NO}
    assert [r.fit for r in misfits] == sorted((r.fit for r in misfits), key=lambda f: f != FIT_SWAP)
    assert all(not r.labels for r in misfits)
    assert [r.rank for r in recs] == list(range(1, len(recs) + 1))


def test_unknown_quality_is_ranked_after_known_quality_not_guessed() -> None:
    recs = [r for r in recommend(64 * GiB, 400.0, bandwidth_source="test") if r.fits]
    known = [i for i, r in enumerate(recs) if r.quality is not None]
    unknown = [i for i, r in enumerate(recs) if r.quality is None]
    assert unknown and known
    assert max(known) < min(unknown)
    assert all(recs[i].score is None for i in unknown)
    assert all(recs[i].tokens_per_s_max > 0 for i in unknown)


def test_fast_hardware_ranks_by_quality() -> None:
    recs = [r for r in recommend(200 * GiB, 3350.0, bandwidth_source="H100") if r.fits]
    scored = [r for r in recs if r.score is not None]
    assert scored[0].labels[:1] == ("best overall",)
    assert "best quality" in scored[0].labels
    assert scored[0].quality == max(r.quality for r in scored)


def test_nothing_fits_a_zero_budget() -> None:
    recs = recommend(0, 20.0, bandwidth_source="test")
    assert all(r.fit == FIT_NO for r in recs)
    assert all(not r.labels for r in recs)


def test_tiny_budget_leaves_only_the_smallest_model() -> None:
    recs = recommend(1 * GiB, 20.0, bandwidth_source="test")
    fitting = {r.name for r in recs if r.fits}
    assert fitting == {"smollm2:135m"}
    assert recs[0].name == "smollm2:135m"


def test_context_is_capped_at_the_trained_length() -> None:
    recs = recommend(200 * GiB, 20.0, bandwidth_source="t", context_tokens=65536)
    phi = next(r for r in recs if r.name == "phi4:14b")
    assert phi.context_tokens == 16384
    default = recommend(200 * GiB, 20.0, bandwidth_source="t")
    assert {r.context_tokens for r in default if r.name == "qwen3:8b"} == {DEFAULT_CONTEXT}


def test_memory_comes_from_the_shared_estimator_unless_replaced() -> None:
    calls: list[tuple[str, str, int]] = []

    def memory_for(model, quant, ctx) -> int:
        calls.append((model.name, quant, ctx))
        return 1

    recs = recommend(1 * GiB, 20.0, bandwidth_source="t", memory_for=memory_for)
    assert len(calls) == len(recs)
    assert all(r.memory_bytes == 1 and r.fit == FIT_COMFORTABLE for r in recs)

    shared = recommend(200 * GiB, 20.0, bandwidth_source="t")
    assert all(r.memory_bytes == r.weights_bytes + r.kv_bytes + r.overhead_bytes for r in shared)


def test_recommend_is_deterministic() -> None:
    first = recommend(16 * GiB, 100.0, bandwidth_source="t")
    second = recommend(16 * GiB, 100.0, bandwidth_source="t")
    assert first == second
