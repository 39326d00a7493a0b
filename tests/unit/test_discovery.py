"""Discovery over throw-away Ollama, LM Studio, HF cache and models_dir stores built in tmp_path.

Model files are either symlinks to the real bundled GGUF or small real GGUFs written with
``gguf.GGUFWriter``; broken files are real broken files.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest

from autotune.ground.config import get_settings
from autotune.ground.errors import ModelNotFound
from autotune.models.bundled import BUNDLED_NAME, SECOND_NAME
from autotune.models.discovery import (
    Discovery,
    LocalModel,
    discover,
    huggingface_hub_dir,
    lmstudio_model_dirs,
    ollama_models_dir,
)
from autotune.models.gguf import GGUFError, read_gguf_meta

#: What a machine with nothing installed has: the models `make` installs beside autotune.
BUNDLED = sorted([BUNDLED_NAME, SECOND_NAME])


def small_gguf(path: Path, rows: int = 4) -> Path:
    """A valid GGUF of a few KB; ``rows`` makes files differ."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(2)
    writer.add_tensor("token_embd.weight", np.zeros((rows, 32), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def truncated_copy(bundled: Path, dest: Path, n: int = 1000) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(bundled, "rb") as src:
        dest.write_bytes(src.read(n))
    return dest


def link(dest: Path, target: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(target)
    return dest


def by_name(found: Discovery) -> dict[str, LocalModel]:
    return {m.name: m for m in found.models}


def reasons(found: Discovery) -> dict[Path, str]:
    return {s.path: s.reason for s in found.skipped}


# --------------------------------------------------------------------------- bundled


def test_empty_machine_has_only_the_bundled_models(bundled_gguf: Path) -> None:
    found = discover()
    assert found.names() == BUNDLED
    model = found.find(BUNDLED_NAME)
    assert model.source == "bundled"
    assert model.path == bundled_gguf
    assert model.size_bytes == bundled_gguf.stat().st_size
    assert found.skipped == []


def test_store_locations_follow_home_and_env(
    isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ollama_models_dir() == isolated_home / ".ollama" / "models"
    assert huggingface_hub_dir() == isolated_home / ".cache" / "huggingface" / "hub"
    assert lmstudio_model_dirs()[-2:] == [
        isolated_home / ".lmstudio" / "models",
        isolated_home / ".cache" / "lm-studio" / "models",
    ]
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "o"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("LMSTUDIO_HOME", str(tmp_path / "lms"))
    assert ollama_models_dir() == tmp_path / "o"
    assert huggingface_hub_dir() == tmp_path / "hf" / "hub"
    assert lmstudio_model_dirs()[0] == tmp_path / "lms" / "models"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub2"))
    assert huggingface_hub_dir() == tmp_path / "hub2"


# --------------------------------------------------------------------------- Ollama


def _manifest(root: Path, rel: str, digest: str | None, *, raw: str | None = None) -> Path:
    path = root / "manifests" / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if raw is not None:
        path.write_text(raw)
        return path
    layers = [{"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:0123"}]
    if digest:
        layers.insert(0, {"mediaType": "application/vnd.ollama.image.model", "digest": digest})
    path.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    return path


@pytest.fixture
def ollama_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundled_gguf: Path) -> Path:
    root = tmp_path / "ollama"
    monkeypatch.setenv("OLLAMA_MODELS", str(root))
    blobs = root / "blobs"
    small_gguf(blobs / "sha256-aaa1", rows=4)
    small_gguf(blobs / "sha256-bbb2", rows=5)
    small_gguf(blobs / "sha256-ccc3", rows=6)
    small_gguf(blobs / "sha256-ddd4", rows=7)
    link(blobs / "sha256-5mol", bundled_gguf)
    (blobs / "sha256-e0e0").write_text("not a model at all")
    (blobs / "sha256-e1e1").write_bytes(b"")
    truncated_copy(bundled_gguf, blobs / "sha256-e2e2")
    _manifest(root, "registry.ollama.ai/library/qwen3/8b", "sha256:aaa1")
    _manifest(root, "registry.ollama.ai/library/llama3/latest", "sha256:bbb2")
    _manifest(root, "registry.ollama.ai/someuser/mymodel/q4", "sha256:ccc3")
    _manifest(root, "hf.co/bartowski/Some-GGUF/Q4_K_M", "sha256:ddd4")
    _manifest(root, "registry.ollama.ai/library/smol/latest", "sha256:5mol")
    _manifest(root, "registry.ollama.ai/library/qwen3/latest", "sha256:aaa1")  # same blob
    _manifest(root, "registry.ollama.ai/library/badjson/latest", None, raw="{not json")
    _manifest(root, "registry.ollama.ai/library/noblob/1b", "sha256:ffff")
    _manifest(root, "registry.ollama.ai/library/nolayer/1b", None)
    _manifest(root, "registry.ollama.ai/library/text/1b", "sha256:e0e0")
    _manifest(root, "registry.ollama.ai/library/empty/1b", "sha256:e1e1")
    _manifest(root, "registry.ollama.ai/library/cut/1b", "sha256:e2e2")
    return root


def test_ollama_names(ollama_store: Path) -> None:
    found = discover()
    models = by_name(found)
    assert set(models) == {
        *BUNDLED,
        "qwen3:8b",
        "llama3:latest",
        "someuser/mymodel:q4",
        "hf.co/bartowski/Some-GGUF:Q4_K_M",
    }
    assert models["qwen3:8b"].path == ollama_store / "blobs" / "sha256-aaa1"
    assert models["qwen3:8b"].source == "ollama"
    assert models["qwen3:8b"].size_bytes == (ollama_store / "blobs" / "sha256-aaa1").stat().st_size
    assert models["llama3:latest"].aliases == ("llama3",)
    assert found.find("llama3").name == "llama3:latest"
    assert found.find("LLAMA3:Latest").name == "llama3:latest"
    assert found.find("hf.co/bartowski/some-gguf:q4_k_m").source == "ollama"


def test_ollama_same_blob_under_two_names_is_listed_once(ollama_store: Path) -> None:
    found = discover()
    qwen = found.find("qwen3:8b")
    assert "qwen3:latest" in qwen.aliases and "qwen3" in qwen.aliases
    assert found.find("qwen3") is qwen
    # A tag pointing at the bundled file joins the bundled model instead of duplicating it.
    bundled = found.find(BUNDLED_NAME)
    assert bundled.source == "bundled"
    assert {"smol:latest", "smol"} <= set(bundled.aliases)
    assert found.find("smol") is bundled
    paths = [m.path.resolve() for m in found.models]
    assert len(paths) == len(set(paths))


def test_broken_ollama_entries_are_skipped_with_reasons(ollama_store: Path) -> None:
    found = discover()
    why = reasons(found)
    manifests = ollama_store / "manifests" / "registry.ollama.ai" / "library"
    assert "not valid JSON" in why[manifests / "badjson" / "latest"]
    assert "sha256-ffff is missing" in why[manifests / "noblob" / "1b"]
    assert "no model layer" in why[manifests / "nolayer" / "1b"]
    assert "not a GGUF file" in why[manifests / "text" / "1b"]
    assert "empty file" in why[manifests / "empty" / "1b"]
    assert "truncated" in why[manifests / "cut" / "1b"]
    assert why[manifests / "cut" / "1b"].startswith("cut:1b: ")
    for bad in ("sha256-e0e0", "sha256-e1e1", "sha256-e2e2"):
        with pytest.raises(GGUFError):
            read_gguf_meta(ollama_store / "blobs" / bad)


# --------------------------------------------------------------------------- LM Studio


def test_lmstudio_layout(isolated_home: Path, bundled_gguf: Path) -> None:
    root = isolated_home / ".lmstudio" / "models"
    small_gguf(root / "lmstudio-community" / "Qwen3-8B-GGUF" / "Qwen3-8B-Q4_K_M.gguf")
    small_gguf(root / "lmstudio-community" / "Qwen3-8B-GGUF" / "mmproj-Qwen3-8B-F16.gguf", 9)
    truncated_copy(bundled_gguf, root / "pub" / "broken" / "cut.gguf")
    (root / "pub" / "fake" / "fake.gguf").parent.mkdir(parents=True)
    (root / "pub" / "fake" / "fake.gguf").write_text("I am text")
    old = isolated_home / ".cache" / "lm-studio" / "models"
    small_gguf(old / "TheBloke" / "Old-GGUF" / "old.Q4_0.gguf", 11)

    found = discover()
    models = by_name(found)
    qwen = models["lmstudio-community/Qwen3-8B-GGUF/Qwen3-8B-Q4_K_M.gguf"]
    assert qwen.source == "lmstudio"
    assert qwen.aliases == ("Qwen3-8B-Q4_K_M",)
    assert found.find("qwen3-8b-q4_k_m") is qwen
    assert models["TheBloke/Old-GGUF/old.Q4_0.gguf"].source == "lmstudio"
    assert not any("mmproj" in name for name in models)
    why = reasons(found)
    mmproj = root / "lmstudio-community" / "Qwen3-8B-GGUF" / "mmproj-Qwen3-8B-F16.gguf"
    assert "projector" in why[mmproj]
    assert "truncated" in why[root / "pub" / "broken" / "cut.gguf"]
    assert "not a GGUF file" in why[root / "pub" / "fake" / "fake.gguf"]


def test_split_models_are_listed_once_with_all_shards(isolated_home: Path) -> None:
    folder = isolated_home / ".lmstudio" / "models" / "org" / "Big-GGUF"
    first = small_gguf(folder / "Big-Q8_0-00001-of-00002.gguf", 4)
    second = small_gguf(folder / "Big-Q8_0-00002-of-00002.gguf", 5)
    small_gguf(folder / "Lonely-00001-of-00003.gguf", 6)
    found = discover()
    model = found.find("Big-Q8_0-00001-of-00002")
    assert model.size_bytes == first.stat().st_size + second.stat().st_size
    why = reasons(found)
    assert "shard 2 of 2" in why[second]
    assert "missing shards" in why[folder / "Lonely-00001-of-00003.gguf"]


# --------------------------------------------------------------------------- Hugging Face


def _hf_repo(hub: Path, repo: str, rev: str, files: dict[str, Path], *, main: bool = True) -> Path:
    """A hub-cache repo whose snapshot files are symlinks into blobs/, as huggingface_hub makes."""
    folder = hub / ("models--" + repo.replace("/", "--"))
    snapshot = folder / "snapshots" / rev
    for rel, source in files.items():
        blob = folder / "blobs" / f"{rev}-{rel.replace('/', '_')}"
        if not blob.exists():
            blob.parent.mkdir(parents=True, exist_ok=True)
            if source.stat().st_size > 1_000_000:
                blob.symlink_to(source)  # the bundled 98 MB file: link, do not copy
            else:
                blob.write_bytes(source.read_bytes())
        link(snapshot / rel, blob)
    if main:
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(rev)
    return folder


def test_huggingface_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundled_gguf: Path
) -> None:
    hub = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    a = small_gguf(tmp_path / "src" / "a.gguf", 4)
    b = small_gguf(tmp_path / "src" / "b.gguf", 5)
    c = small_gguf(tmp_path / "src" / "c.gguf", 6)
    _hf_repo(hub, "Qwen/Qwen3-0.6B-GGUF", "abc123", {"Qwen3-0.6B-Q8_0.gguf": a})
    _hf_repo(
        hub,
        "bartowski/Multi-GGUF",
        "def456",
        {"Multi-Q4_K_M.gguf": b, "sub/Multi-Q8_0.gguf": c, "mmproj-f16.gguf": a},
    )
    _hf_repo(hub, "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF", "0a0a", {"smol.gguf": bundled_gguf})
    found = discover()
    models = by_name(found)
    qwen = models["Qwen/Qwen3-0.6B-GGUF:Qwen3-0.6B-Q8_0"]
    assert qwen.source == "huggingface"
    assert qwen.path.name == "Qwen3-0.6B-Q8_0.gguf"
    assert found.find("Qwen/Qwen3-0.6B-GGUF") is qwen  # a single-model repo answers to its id
    assert found.find("Qwen3-0.6B-Q8_0") is qwen
    assert "bartowski/Multi-GGUF:Multi-Q4_K_M" in models
    assert "bartowski/Multi-GGUF:sub/Multi-Q8_0" in models
    with pytest.raises(ModelNotFound):
        found.find("bartowski/Multi-GGUF")  # two models: the bare repo id is ambiguous
    assert "projector" in " ".join(reasons(found).values())
    # The snapshot symlink resolves to the bundled file: one model, one more alias.
    assert "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:smol" in found.find(BUNDLED_NAME).aliases


def test_huggingface_prefers_the_main_revision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    old = small_gguf(tmp_path / "src" / "old.gguf", 4)
    new = small_gguf(tmp_path / "src" / "new.gguf", 8)
    _hf_repo(hub, "org/repo", "1111", {"m.gguf": old}, main=False)
    folder = _hf_repo(hub, "org/repo", "2222", {"m.gguf": new})
    found = discover()
    model = found.find("org/repo:m")
    assert model.path == folder / "snapshots" / "2222" / "m.gguf"
    assert model.size_bytes == new.stat().st_size
    assert any("older snapshot" in s.reason for s in found.skipped)


# --------------------------------------------------------------------------- models_dir


def test_models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bundled_gguf: Path) -> None:
    folder = tmp_path / "mine"
    small_gguf(folder / "alpha.gguf", 4)
    small_gguf(folder / "deep" / "down" / "beta.gguf", 5)
    small_gguf(folder / "x" / "same.gguf", 6)
    small_gguf(folder / "y" / "same.gguf", 7)
    truncated_copy(bundled_gguf, folder / "cut.gguf")
    (folder / "empty.gguf").write_bytes(b"")
    (folder / "readme.txt").write_text("not considered")
    monkeypatch.setenv("AUTOTUNE_MODELS_DIR", str(folder))
    get_settings.cache_clear()
    found = discover()
    models = by_name(found)
    assert {"alpha", "beta", "x/same", "y/same"} <= set(models)
    assert models["alpha"].source == "models_dir"
    why = reasons(found)
    assert "truncated" in why[folder / "cut.gguf"]
    assert why[folder / "empty.gguf"] == "empty file"
    assert folder / "readme.txt" not in why


def test_explicit_settings_are_honoured(tmp_path: Path) -> None:
    from autotune.ground.config import Settings

    small_gguf(tmp_path / "mine" / "gamma.gguf")
    found = discover(Settings(models_dir=tmp_path / "mine"))
    assert "gamma" in found.names()


# --------------------------------------------------------------------------- find


def test_find_with_a_typo_suggests_the_right_name(ollama_store: Path) -> None:
    found = discover()
    with pytest.raises(ModelNotFound) as err:
        found.find("smollm2:13m")
    assert BUNDLED_NAME in err.value.suggestions
    assert len(err.value.suggestions) <= 3
    with pytest.raises(ModelNotFound) as err:
        found.find("qwen3:8")
    assert err.value.suggestions[0] == "qwen3:8b"
    assert err.value.status == 404


def test_find_nothing_close_has_no_suggestions() -> None:
    with pytest.raises(ModelNotFound) as err:
        discover().find("zzzzzzzzzzzzzzzz")
    assert err.value.suggestions == []


def test_unreadable_store_roots_do_not_raise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    # Stores that are files, dangling symlinks and loops must not break discovery.
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("x")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "missing"))
    lms = isolated_home / ".lmstudio" / "models"
    lms.mkdir(parents=True)
    (lms / "loop").symlink_to(lms)
    (lms / "dangling.gguf").symlink_to(tmp_path / "gone.gguf")
    found = discover()
    assert found.names() == BUNDLED
    assert "file missing" in reasons(found)[lms / "dangling.gguf"]
