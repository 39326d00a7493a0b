"""What ``autotune pull NAME`` fetches: names to repos and quantisations, the file(s) chosen from
a repo listing, the names a pulled file answers to, and the fit verdict shown before a download.
Pure functions (``autotune.models.pull``), plus discovery over a hub cache built in tmp_path."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest

from autotune.models.catalog import catalog
from autotune.models.discovery import discover
from autotune.models.fit import Verdict
from autotune.models.pull import (
    OLLAMA_LATEST,
    OLLAMA_TO_GGUF,
    HubFileInfo,
    PullError,
    PullTarget,
    choose_files,
    parse_pull_name,
    pull_fit,
    pulled_names,
    quant_of,
)

GIB = 1024**3


@pytest.mark.parametrize(
    ("name", "repo", "quant"),
    [
        ("hf.co/bartowski/Qwen_Qwen3-8B-GGUF:Q8_0", "bartowski/Qwen_Qwen3-8B-GGUF", "Q8_0"),
        ("huggingface.co/org/repo-GGUF", "org/repo-GGUF", None),
        ("https://huggingface.co/org/repo-GGUF:q4_k_m", "org/repo-GGUF", "q4_k_m"),
        ("org/repo-GGUF:IQ4_XS", "org/repo-GGUF", "IQ4_XS"),
        ("qwen3:8b", "bartowski/Qwen_Qwen3-8B-GGUF", "Q4_K_M"),
        ("Qwen3", "bartowski/Qwen_Qwen3-8B-GGUF", "Q4_K_M"),  # :latest is the 8b
        ("qwen3:latest", "bartowski/Qwen_Qwen3-8B-GGUF", "Q4_K_M"),
        ("qwen3:8b-q8_0", "bartowski/Qwen_Qwen3-8B-GGUF", "Q8_0"),
        ("llama3.2:3b", "bartowski/Llama-3.2-3B-Instruct-GGUF", "Q4_K_M"),
        ("gemma3:1b", "bartowski/google_gemma-3-1b-it-GGUF", "Q4_K_M"),
    ],
)
def test_names_map_to_a_repo_and_a_quantisation(name: str, repo: str, quant: str | None) -> None:
    target = parse_pull_name(name)
    assert (target.repo, target.quant) == (repo, quant)


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("qwen3:7b", "Did you mean"),  # a size the table does not have
        ("my-finetune", "hf.co/ORG/REPO:QUANT"),
        ("hf.co/just-one-part", "not a Hugging Face repository"),
        ("hf.co/org/re po", "not a Hugging Face repository"),
        ("hf.co/org/repo:Q4 K", "not a quantisation"),
    ],
)
def test_names_that_cannot_be_pulled_say_why(name: str, words: str) -> None:
    with pytest.raises(PullError, match=words):
        parse_pull_name(name)


def test_every_catalog_name_and_tag_can_be_pulled() -> None:
    """The model hints say `autotune pull <catalog name>`: each one must resolve."""
    for model in catalog():
        for name in (model.name, *model.ollama_tags.values()):
            assert parse_pull_name(name).repo, name
    for base, size in OLLAMA_LATEST.items():
        assert f"{base}:{size}" in OLLAMA_TO_GGUF


@pytest.mark.parametrize(
    ("path", "quant"),
    [
        ("Qwen_Qwen3-8B-Q4_K_M.gguf", "Q4_K_M"),
        ("qwen2.5-coder-7b-instruct-q4_k_m.gguf", "Q4_K_M"),
        ("Model-IQ4_XS.gguf", "IQ4_XS"),
        ("Model-Q8_0.gguf", "Q8_0"),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
        ("model-bf16.gguf", "BF16"),
        ("Q4_K_M/Model-Q4_K_M-00001-of-00002.gguf", "Q4_K_M"),
        ("Qwen_Qwen3-8B.gguf", None),
    ],
)
def test_the_quantisation_is_read_from_the_file_name(path: str, quant: str | None) -> None:
    assert quant_of(path) == quant


LISTING = [
    HubFileInfo("README.md", 10),
    HubFileInfo("Model-Q8_0.gguf", 800, "a" * 64),
    HubFileInfo("Model-Q4_K_M.gguf", 400, "b" * 64),
    HubFileInfo("Model-Q4_K_M-imat.gguf", 401, "c" * 64),
    HubFileInfo("Model-Q4_K_L.gguf", 420, "d" * 64),
    HubFileInfo("mmproj-Model-f16.gguf", 100, "e" * 64),
    HubFileInfo("Model-Q6_K/Model-Q6_K-00002-of-00002.gguf", 300, "f" * 64),
    HubFileInfo("Model-Q6_K/Model-Q6_K-00001-of-00002.gguf", 300, "0" * 64),
]


def target(quant: str | None) -> PullTarget:
    return PullTarget(name="x", repo="org/Model-GGUF", quant=quant)


def test_the_file_of_the_quantisation_is_chosen_plainest_name_first() -> None:
    assert [f.path for f in choose_files(target("q8_0"), LISTING)] == ["Model-Q8_0.gguf"]
    assert [f.path for f in choose_files(target(None), LISTING)] == ["Model-Q4_K_M.gguf"]
    assert [f.path for f in choose_files(target("Q4_K_L"), LISTING)] == ["Model-Q4_K_L.gguf"]


def test_a_split_model_is_every_shard_in_order() -> None:
    chosen = choose_files(target("Q6_K"), LISTING)
    assert [f.path.rsplit("/", 1)[1] for f in chosen] == [
        "Model-Q6_K-00001-of-00002.gguf",
        "Model-Q6_K-00002-of-00002.gguf",
    ]


def test_a_missing_quantisation_lists_the_ones_there_are() -> None:
    with pytest.raises(PullError) as caught:
        choose_files(target("Q2_K"), LISTING)
    message = str(caught.value)
    assert "no Q2_K file" in message and "Q4_K_M" in message and "Q8_0" in message
    assert "F16" not in message  # the vision projector is not a model file


def test_a_repo_with_one_gguf_needs_no_quantisation() -> None:
    only = [HubFileInfo("README.md"), HubFileInfo("tiny.gguf", 5)]
    assert [f.path for f in choose_files(target(None), only)] == ["tiny.gguf"]
    with pytest.raises(PullError, match="no GGUF"):
        choose_files(target(None), [HubFileInfo("model.safetensors")])


def test_a_pulled_file_answers_to_the_names_it_was_pulled_by() -> None:
    names = pulled_names("bartowski/Qwen_Qwen3-8B-GGUF", "Qwen_Qwen3-8B-Q4_K_M.gguf")
    assert {"hf.co/bartowski/Qwen_Qwen3-8B-GGUF:Q4_K_M", "qwen3:8b", "qwen3"} <= set(names)
    other = pulled_names("bartowski/Qwen_Qwen3-8B-GGUF", "Qwen_Qwen3-8B-Q8_0.gguf")
    assert "qwen3:8b-q8_0" in other and "qwen3:8b" not in other
    assert pulled_names("someone/else-GGUF", "thing.gguf") == []


def test_the_fit_uses_the_catalog_when_it_knows_the_model() -> None:
    big = parse_pull_name("qwen3:32b")
    files = [HubFileInfo("Qwen_Qwen3-32B-Q4_K_M.gguf", int(19.8e9))]
    verdict = pull_fit(big, files, 8 * GIB)
    assert verdict.verdict is Verdict.WONT_FIT and not verdict.fits
    assert "KV" in verdict.text  # the catalog's architecture: weights and KV cache
    assert pull_fit(big, files, 64 * GIB).fits


def test_the_fit_of_an_unknown_model_is_its_file_size() -> None:
    unknown = parse_pull_name("hf.co/org/Unknown-GGUF:Q4_K_M")
    files = [HubFileInfo("Unknown-Q4_K_M.gguf", 6 * GIB)]
    assert pull_fit(unknown, files, 4 * GIB).verdict is Verdict.WONT_FIT
    small = pull_fit(unknown, files, 32 * GIB)
    assert small.verdict is Verdict.COMFORTABLE and "the file alone is 6.0 GiB" in small.text


def small_gguf(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((4, 32), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_discovery_finds_a_pulled_file_by_the_name_it_was_pulled_by(
    isolated_home: Path,
) -> None:
    snapshot = (
        isolated_home
        / ".cache/huggingface/hub/models--bartowski--Llama-3.2-3B-Instruct-GGUF/snapshots/abc"
    )
    small_gguf(snapshot / "Llama-3.2-3B-Instruct-Q4_K_M.gguf")
    found = discover()
    for name in ("llama3.2:3b", "LLAMA3.2", "hf.co/bartowski/Llama-3.2-3B-Instruct-GGUF:q4_k_m"):
        model = found.find(name)
        assert model.name == "bartowski/Llama-3.2-3B-Instruct-GGUF:Llama-3.2-3B-Instruct-Q4_K_M"
