"""Speculative decoding without an engine: vocabularies, the choice rule, the worker's params,
the draft's memory, what is stored and what is shown."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from autotune.backends.engine_worker import build_params
from autotune.bench.proof_figures import SideFigures, verdict
from autotune.bench.texts import chat_prompts, edit_prompts, quote_prompts
from autotune.chat.render import footer_text
from autotune.ground.records import RunRecord
from autotune.ground.tuned import Candidate, SpecCandidate, SpecChoice, SpecTrial, Trial
from autotune.ground.types import LoadSettings
from autotune.models.bundled import bundled_model_path, second_model_path
from autotune.models.estimate import load_estimate
from autotune.models.gguf import read_gguf_meta, read_vocabulary, vocabulary_mismatch
from autotune.store.db import Database
from autotune.store.telemetry import TelemetryStore
from autotune.store.tuning import TuningStore
from autotune.tuning.calibrate import choose_speculation


def _models() -> tuple[Path, Path]:
    smollm, gemma = bundled_model_path(), second_model_path()
    assert smollm is not None and gemma is not None, "the test models are missing: make setup"
    return smollm, gemma


# --------------------------------------------------------------------------- vocabulary


def test_the_two_test_models_do_not_share_a_vocabulary() -> None:
    smollm, gemma = _models()
    a, b = read_vocabulary(smollm), read_vocabulary(gemma)
    assert (a.model, a.size) == ("gpt2", 49152)
    assert (b.model, b.size) == ("llama", 262144)
    why = vocabulary_mismatch(a, b)
    assert why is not None and "49,152" in why and "262,144" in why
    assert vocabulary_mismatch(a, read_vocabulary(smollm)) is None


def _tokenizer_gguf(path: Path, tokens: list[str], *, bos: int = 1, eos: int = 2) -> Path:
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_llama_cpp_s_rule_for_a_draft_vocabulary(tmp_path: Path) -> None:
    words = [f"tok{i}" for i in range(300)]
    target = read_vocabulary(_tokenizer_gguf(tmp_path / "t.gguf", words))
    assert target.tokens[7] == b"tok7" and (target.bos, target.eos) == (1, 2)
    # Up to 128 tokens more or fewer, and the first five ids, may differ.
    extra = read_vocabulary(_tokenizer_gguf(tmp_path / "e.gguf", words + ["x"] * 100))
    control = read_vocabulary(_tokenizer_gguf(tmp_path / "c.gguf", ["<s>"] * 5 + words[5:]))
    assert vocabulary_mismatch(target, extra) is None
    assert vocabulary_mismatch(target, control) is None
    changed = [*words[:7], "other", *words[8:]]
    why = vocabulary_mismatch(
        target, read_vocabulary(_tokenizer_gguf(tmp_path / "d.gguf", changed))
    )
    assert why is not None and "token 7" in why
    longer = read_vocabulary(_tokenizer_gguf(tmp_path / "l.gguf", words + ["x"] * 200))
    assert "vocabulary differs" in (vocabulary_mismatch(target, longer) or "")
    special = read_vocabulary(_tokenizer_gguf(tmp_path / "s.gguf", words, eos=3))
    assert "special tokens" in (vocabulary_mismatch(target, special) or "")


# --------------------------------------------------------------------------- the choice


def _trial(mode: str, copy: float | None, chat: float | None, error: str | None = None):
    trial = SpecTrial(SpecCandidate(mode), copy_gain=copy, chat_gain=chat, error=error)
    trial.drafted, trial.accepted = 100, 80
    return trial


def test_the_largest_copy_gain_that_keeps_chat_within_3_percent_wins() -> None:
    choice = choose_speculation(
        [
            _trial("ngram_simple", 0.9, -0.10),  # fastest edits, but chat pays for it
            _trial("ngram_mod", 0.6, -0.02),
            _trial("ngram_cache", 0.3, 0.01),
        ]
    )
    assert choice.mode == "ngram_mod" and choice.copy_gain == 0.6 and choice.acceptance == 0.8
    assert "+60%" in choice.reason and "-2%" in choice.reason


def test_speculation_that_does_not_pay_is_said_plainly() -> None:
    choice = choose_speculation([_trial("ngram_mod", 0.05, 0.0), _trial("ngram_simple", 0.4, -0.2)])
    assert choice.mode == "none"
    assert choice.reason.startswith("does not pay on this machine")
    assert "ngram_simple" in choice.reason and "-20%" in choice.reason
    failed = choose_speculation([_trial("ngram_mod", None, None, error="did not load")])
    assert failed.mode == "none" and failed.reason.startswith("not measured")


def test_a_draft_model_choice_carries_its_path() -> None:
    trial = SpecTrial(
        SpecCandidate("draft", "small", "/m/small.gguf"), copy_gain=0.5, chat_gain=0.2
    )
    choice = choose_speculation([trial, _trial("ngram_mod", 0.2, 0.0)])
    assert (choice.mode, choice.draft, choice.draft_path) == ("draft", "small", "/m/small.gguf")


# --------------------------------------------------------------------------- the engine worker


@pytest.mark.parametrize(
    ("mode", "member"),
    [
        ("ngram_simple", "NGRAM_SIMPLE"),
        ("ngram_map_k", "NGRAM_MAP_K"),
        ("ngram_map_k4v", "NGRAM_MAP_K4V"),
        ("ngram_mod", "NGRAM_MOD"),
        ("ngram_cache", "NGRAM_CACHE"),
    ],
)
def test_worker_params_name_the_speculative_type(mode: str, member: str) -> None:
    import xllamacpp as x

    p = build_params({"path": "/m.gguf", "alias": "m", "speculative": mode})
    assert list(p.speculative.types) == [
        getattr(x.common_speculative_type, "COMMON_SPECULATIVE_TYPE_" + member)
    ]
    assert p.speculative.draft.mparams.path == ""


def test_worker_params_for_a_draft_model_and_for_none() -> None:
    import xllamacpp as x

    kinds = x.common_speculative_type
    p = build_params(
        {
            "path": "/m.gguf",
            "alias": "m",
            "speculative": "draft",
            "draft_path": "/d.gguf",
            "n_threads": 3,
        }
    )
    assert list(p.speculative.types) == [kinds.COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE]
    assert p.speculative.draft.mparams.path == "/d.gguf"
    assert p.speculative.draft.cpuparams.n_threads == 3
    for spec in ({}, {"speculative": "none"}):
        p = build_params({"path": "/m.gguf", "alias": "m", **spec})
        assert list(p.speculative.types) == [kinds.COMMON_SPECULATIVE_TYPE_NONE]
    with pytest.raises(ValueError, match="draft_path"):
        build_params({"path": "/m.gguf", "alias": "m", "speculative": "draft"})


# --------------------------------------------------------------------------- memory


def test_a_draft_model_adds_its_own_weights_kv_and_compute_to_the_estimate() -> None:
    smollm, gemma = _models()
    target = read_gguf_meta(smollm)
    plain = LoadSettings(n_ctx=4096)
    ngram = LoadSettings(n_ctx=4096, speculative="ngram_mod")
    with_draft = LoadSettings(n_ctx=4096, speculative="draft", draft_path=str(gemma))
    assert load_estimate(target, ngram) == load_estimate(target, plain)  # no second model
    draft_meta = read_gguf_meta(gemma)
    added = load_estimate(target, with_draft) - load_estimate(target, plain)
    assert added == load_estimate(draft_meta, plain)  # same context, f16 KV, same batch
    assert added > (draft_meta.size_bytes or 0)
    bigger = LoadSettings(n_ctx=8192, speculative="draft", draft_path=str(gemma))
    assert load_estimate(target, bigger) - load_estimate(target, LoadSettings(n_ctx=8192)) > added


# --------------------------------------------------------------------------- stored and shown


def _store(tmp_path: Path) -> TuningStore:
    return TuningStore(Database(tmp_path / "t.db"))


def _save(store: TuningStore, profile: str, choice: SpecChoice | None) -> None:
    trial = Trial(candidate=Candidate())
    store.save(
        "embedded", "m", profile, trial, trial, defaults_best=True, trials=1, speculation=choice
    )


def test_the_tuned_choice_is_stored_and_read_back_for_the_planner(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _save(store, "balanced", SpecChoice("ngram_mod", "r", copy_gain=0.7, chat_gain=-0.01))
    _save(store, "fast", None)
    _save(store, "quality", SpecChoice("none", "does not pay", copy_gain=0.02, chat_gain=-0.1))
    balanced = store.lookup("embedded", "m", "balanced")
    assert balanced is not None and balanced.speculative == "ngram_mod"
    assert (balanced.spec_copy_gain, balanced.spec_chat_gain) == (0.7, -0.01)
    fast = store.lookup("embedded", "m", "fast")
    assert fast is not None and fast.speculative is None  # not measured: today's behaviour
    quality = store.lookup("embedded", "m", "quality")
    assert quality is not None and quality.speculative == "none"
    rows = {r["profile"]: r for r in store.rows()}
    assert rows["balanced"]["speculation"]["mode"] == "ngram_mod"
    assert rows["fast"]["speculation"] is None


def test_a_stored_draft_model_that_left_the_disk_is_not_loaded(tmp_path: Path) -> None:
    store = _store(tmp_path)
    draft = tmp_path / "small.gguf"
    draft.write_bytes(b"GGUF")
    _save(store, "balanced", SpecChoice("draft", "r", "small", str(draft), copy_gain=0.4))
    tuned = store.lookup("embedded", "m", "balanced")
    assert tuned is not None and (tuned.speculative, tuned.draft_path) == ("draft", str(draft))
    draft.unlink()
    _save(store, "balanced", SpecChoice("draft", "r", "small", str(draft), copy_gain=0.4))
    tuned = store.lookup("embedded", "m", "balanced")
    assert tuned is not None and tuned.speculative is None and tuned.draft_path is None


def test_telemetry_keeps_drafted_and_accepted_tokens(tmp_path: Path) -> None:
    telemetry = TelemetryStore(Database(tmp_path / "t.db"))
    record = RunRecord(id="run_1", model="m", backend="embedded", profile="balanced", source="t")
    record.draft_tokens, record.draft_accepted = 120, 90
    telemetry.record_run(record)
    telemetry.record_run(RunRecord(id="run_2", model="m", backend="e", profile="p", source="t"))
    runs = {r["id"]: r for r in telemetry.runs()}
    assert (runs["run_1"]["draft_tokens"], runs["run_1"]["draft_accepted"]) == (120, 90)
    assert runs["run_2"]["draft_tokens"] is None
    assert record.acceptance == 0.75


def test_the_chat_footer_shows_the_acceptance_rate() -> None:
    record = RunRecord(id="r", model="m", backend="e", profile="p", source="t", ttft_ms=80)
    record.tokens_per_s, record.completion_tokens = 120.0, 50
    assert "drafts" not in footer_text(record)
    record.draft_tokens, record.draft_accepted = 40, 30
    assert footer_text(record) == "TTFT 80 ms · 120.0 tok/s · drafts 75% accepted"


def _side(decode: float, acceptance: float | None = None) -> SideFigures:
    return SideFigures(
        n=3,
        errors=0,
        ttft_ms={"median": 100.0},
        prefill_ms={},
        load_ms={},
        decode_tps={"median": decode},
        cached_share=None,
        n_ctx=4096,
        kv_bytes=None,
        rss_bytes=None,
        acceptance=acceptance,
    )


def test_proof_verdict_compares_decoding_where_the_scenario_asks() -> None:
    said = verdict(_side(80), _side(130, 0.82), decode=True)
    assert said.startswith("Decoding 1.62× the raw engine's (130 vs 80 tok/s, 82% of drafts")
    assert "slower" in verdict(_side(80), _side(70), decode=True)
    assert "no faster" in verdict(_side(80), _side(81), decode=True)
    assert "ecod" not in verdict(_side(80), _side(130), decode=False)


def test_workload_prompts_are_distinct_and_the_edit_carries_its_file() -> None:
    for make in (edit_prompts, quote_prompts, chat_prompts):
        texts = [m[0]["content"] for m in make(4)]
        assert len(set(texts)) == 4
        assert make(2, offset=1)[0] == make(3)[1]
    assert "def invoice_amount_1(record):" in edit_prompts(1)[0][0]["content"]


def test_stored_speculation_reads_plainly_in_tune_show() -> None:
    from autotune.cli.tune import _spec_cell

    assert _spec_cell(None) == "not measured"
    assert _spec_cell({"mode": "ngram_mod", "copy_gain": 0.52}) == "ngram_mod (edits +52%)"
    assert _spec_cell({"mode": "none", "copy_gain": 0.04}) == "none (does not pay)"
    draft = {"mode": "draft", "draft": "qwen3:0.6b", "copy_gain": 0.3}
    assert _spec_cell(draft) == "draft qwen3:0.6b (edits +30%)"
