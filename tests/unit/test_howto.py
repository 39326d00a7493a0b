"""How to get a well-known model: which names count, which commands, and the catalog's verdict."""

from __future__ import annotations

from autotune.models.catalog import recommend
from autotune.models.howto import AUTOTUNE_PULL, Machine, how_to_get, known_model

GIB = 1024**3
MACHINE = Machine(16 * GIB, 20.0, "assumed for the test")


def test_catalog_names_and_exact_tags_are_known_other_names_are_not() -> None:
    found = known_model("Qwen3:8B")
    assert found is not None and found[1] == "qwen3:8b"
    tag = "mistral-small:24b-instruct-2501-q8_0"
    found = known_model(tag)
    assert found is not None and found[0].name == "mistral-small:24b" and found[1] == tag
    assert known_model("smollm2:13") is None and known_model("qwen3") is None
    assert how_to_get("my-own-finetune:7b", ollama=True, machine=MACHINE) == []


def test_ollama_running_or_not_changes_the_sentence_not_the_command() -> None:
    running = how_to_get("qwen3:8b", ollama=True, autotune_pull=False)
    assert running == ["Get it with Ollama, which is running here: ollama pull qwen3:8b"]
    (absent,) = how_to_get("qwen3:8b", ollama=False, autotune_pull=False)
    assert "`ollama pull qwen3:8b`" in absent and "installed and running" in absent


def test_autotune_pull_comes_first_now_that_it_exists() -> None:
    assert AUTOTUNE_PULL is True  # issue 16 turned it on
    lines = how_to_get("qwen3:8b", ollama=True)
    assert lines[0] == "Get it with: autotune pull qwen3:8b"
    assert "ollama pull qwen3:8b" in lines[1]


def test_the_fit_line_is_the_catalog_ranking_for_this_machine() -> None:
    *_, fit = how_to_get("qwen3:32b", ollama=False, machine=MACHINE)
    found = known_model("qwen3:32b")
    assert found is not None
    recs = {r.quant: r for r in recommend(16 * GIB, 20.0, bandwidth_source="x", models=[found[0]])}
    assert fit.startswith("On this machine (budget 16.0 GiB, 8,192-token context): ")
    for quant in ("Q4_K_M", "Q8_0"):
        assert f"{quant} {recs[quant].fit} (" in fit
    assert recs["Q8_0"].fit == "will not fit"  # 32B at 8.5 bits is ~35 GB: a real verdict
