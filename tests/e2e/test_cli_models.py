"""The ``autotune`` command as a user runs it: a real subprocess, real files, the real engine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.backends.embedded import EmbeddedBackend
from autotune.ground.config import get_settings
from autotune.ground.types import ChatRequest, LoadSettings
from fakes.ollama import FakeOllama
from fakes.server import closed_port_url, serve

DIGEST = "sha256:" + "ab" * 32


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "AUTOTUNE_BACKEND": "embedded", "NO_COLOR": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "autotune", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def ollama_store(
    root: Path, gguf: Path, tag: str = "registry.ollama.ai/library/tinychat/1b"
) -> Path:
    """A throw-away Ollama store: one manifest whose model layer is a copy of the bundled GGUF.

    A copy, not a link: discovery rightly treats one file reached by two names as one model.
    """
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    shutil.copyfile(gguf, blobs / DIGEST.replace(":", "-"))
    manifest = root / "manifests" / tag
    manifest.parent.mkdir(parents=True)
    manifest.write_text(
        json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "config": {
                    "mediaType": "application/vnd.docker.container.image.v1+json",
                    "digest": "sha256:" + "cd" * 32,
                    "size": 485,
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.ollama.image.model",
                        "digest": DIGEST,
                        "size": gguf.stat().st_size,
                    }
                ],
            }
        )
    )
    return root


def test_ls_names_a_model_in_an_ollama_store_by_its_tag(bundled_gguf: Path, tmp_path: Path) -> None:
    store = ollama_store(tmp_path / "ollama", bundled_gguf)
    done = cli("ls", "--json", env={"OLLAMA_MODELS": str(store)})
    assert done.returncode == 0, done.stderr
    models = {m["name"]: m for m in json.loads(done.stdout)["models"]}
    assert "tinychat:1b" in models and "smollm2:135m" in models
    tiny = models["tinychat:1b"]
    assert tiny["verdict"] == "fits comfortably" and tiny["architecture"] == "llama"
    assert tiny["max_context"] == 8192 and tiny["recommended_profile"] in ("balanced", "quality")


@pytest.mark.engine
async def test_the_embedded_engine_answers_under_the_ollama_name(
    bundled_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model pulled by Ollama runs by its Ollama name with Ollama not running."""
    monkeypatch.setenv("OLLAMA_MODELS", str(ollama_store(tmp_path / "ollama", bundled_gguf)))
    get_settings.cache_clear()
    backend = EmbeddedBackend(memory_budget=4 * 1024**3)
    try:
        request = ChatRequest(
            "tinychat:1b",
            [{"role": "user", "content": "Hi!"}],
            {"max_tokens": 8},
            LoadSettings(n_ctx=1024),
        )
        chunks = [c async for c in backend.stream_chat(request)]
        assert chunks[-1].stats and chunks[-1].stats.completion_tokens
        assert chunks[0].data["model"] == "tinychat:1b"
    finally:
        await backend.aclose()


def test_an_unknown_model_is_one_line_with_the_closest_names() -> None:
    done = cli("show", "smollm2:13")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "Unknown model 'smollm2:13'" in done.stderr and "smollm2:135m" in done.stderr
    assert len(done.stderr.strip().splitlines()) <= 2


def test_broken_gguf_files_are_reported_and_skipped(bundled_gguf: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "truncated.gguf").write_bytes(bundled_gguf.read_bytes()[:100_000])
    (models / "notes.gguf").write_text("this is not a model")
    done = cli("ls", "--json", env={"AUTOTUNE_MODELS_DIR": str(models)})
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    report = json.loads(done.stdout)
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"truncated.gguf", "notes.gguf"}
    assert all(reason for reason in skipped.values())
    assert sorted(m["name"] for m in report["models"]) == ["gemma3:270m", "smollm2:135m"]
    human = cli("ls", env={"AUTOTUNE_MODELS_DIR": str(models)})
    assert "skipped" in human.stderr and "truncated.gguf" in human.stderr


@pytest.mark.parametrize(
    ("engine", "variable", "hint"),
    [
        ("ollama", "AUTOTUNE_OLLAMA_URL", "ollama serve"),
        ("lmstudio", "AUTOTUNE_LMSTUDIO_URL", "LM Studio"),
    ],
)
def test_an_unreachable_engine_names_its_url_and_how_to_start_it(
    engine: str, variable: str, hint: str
) -> None:
    done = cli("ls", env={"AUTOTUNE_BACKEND": engine, variable: "http://127.0.0.1:9"})
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "http://127.0.0.1:9" in done.stderr and hint in done.stderr


def test_auto_detection_falls_back_to_the_embedded_engine() -> None:
    free = {
        "AUTOTUNE_BACKEND": "auto",
        "AUTOTUNE_OLLAMA_URL": "http://127.0.0.1:9",
        "AUTOTUNE_LMSTUDIO_URL": "http://127.0.0.1:9",
        "AUTOTUNE_LLAMACPP_URL": "http://127.0.0.1:9",
    }
    done = cli("ls", "--json", env=free)
    assert done.returncode == 0, done.stderr
    models = json.loads(done.stdout)["models"]
    assert [m["name"] for m in models] and all(m["engines"] == ["embedded"] for m in models)


def test_hardware_json_describes_this_machine() -> None:
    done = cli("hardware", "--json")
    assert done.returncode == 0, done.stderr
    hw = json.loads(done.stdout)
    assert hw["physical_cores"] >= 1 and hw["ram_total"] > 0
    assert 0 < hw["budget_bytes"] <= hw["ram_total"]
    assert hw["bandwidth_source"]


def test_memory_budget_setting_is_honoured() -> None:
    done = cli("hardware", "--json", env={"AUTOTUNE_MEMORY_BUDGET": "3GiB"})
    assert json.loads(done.stdout)["budget_bytes"] == 3 * 1024**3
    bad = cli("hardware", env={"AUTOTUNE_MEMORY_BUDGET": "lots"})
    assert bad.returncode == 2 and "AUTOTUNE_MEMORY_BUDGET" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_recommend_is_honest_about_speed_on_a_small_cpu() -> None:
    done = cli("recommend", "--json", "--limit", "0", env={"AUTOTUNE_MEMORY_BUDGET": "16GiB"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    recs = report["recommendations"]
    assert report["bandwidth_source"]
    fastest = [r for r in recs if "fastest" in r["labels"]]
    assert len(fastest) == 1
    fits = [r for r in recs if r["fit"] in ("fits comfortably", "tight")]
    assert fastest[0]["tokens_per_s_max"] == max(r["tokens_per_s_max"] for r in fits)
    assert all(r["memory_bytes"] <= 16 * 1024**3 for r in fits)


def test_help_lists_the_commands() -> None:
    done = cli("--help")
    assert done.returncode == 0
    for command in ("hardware", "ls", "ps", "recommend", "show", "serve"):
        assert command in done.stdout


def test_ls_at_80_columns_piped_keeps_every_name_whole(bundled_gguf: Path, tmp_path: Path) -> None:
    """Piped output is 80 columns wide: names wrap or stay whole, never ``smoll…``."""
    tag = "registry.ollama.ai/library/tinychat-instruct-preview/1b-q4_1"
    store = ollama_store(tmp_path / "ollama", bundled_gguf, tag=tag)
    env = {"OLLAMA_MODELS": str(store), "COLUMNS": "80"}
    done = cli("ls", env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "…" not in done.stdout and all(len(line) <= 80 for line in lines)
    for name in ("smollm2:135m", "tinychat-instruct-preview:1b-q4_1"):
        assert any(name in line for line in lines), name  # whole, on one line
    assert "verdict" in done.stdout  # what matters comes first and is kept
    full = json.loads(cli("ls", "--json", env=env).stdout)
    assert {m["name"] for m in full["models"]} == {
        "smollm2:135m",
        "gemma3:270m",
        "tinychat-instruct-preview:1b-q4_1",
    }


@pytest.mark.parametrize("command", ["show", "run"])
def test_a_well_known_model_that_is_not_here_says_how_to_get_it(command: str) -> None:
    """The README's own example: ``qwen3:8b`` is in the catalog, so this is no typo."""
    env = {"AUTOTUNE_OLLAMA_URL": closed_port_url(), "AUTOTUNE_MEMORY_BUDGET": "16GiB"}
    done = cli(command, "qwen3:8b", env=env)
    assert done.returncode == 1 and done.stdout == ""
    err = " ".join(done.stderr.split())
    assert "Traceback" not in err and "Unknown model" not in err
    assert err.startswith("error: qwen3:8b is not on this machine yet")
    assert "Get it with: autotune pull qwen3:8b" in err  # first, since issue 16 added it
    assert "with Ollama installed and running, `ollama pull qwen3:8b` gets it" in err
    # The catalog's verdicts for a 16 GiB budget: ~6.0 GiB (Q4_K_M) and ~9.4 GiB (Q8_0).
    assert "On this machine (budget 16.0 GiB, 8,192-token context): Q4_K_M fits comfortably" in err
    assert "Q8_0 fits comfortably" in err


def test_the_fit_verdict_follows_the_memory_budget() -> None:
    env = {"AUTOTUNE_OLLAMA_URL": closed_port_url(), "AUTOTUNE_MEMORY_BUDGET": "4GiB"}
    err = " ".join(cli("show", "qwen3:8b", env=env).stderr.split())
    assert "Q4_K_M will not fit" in err and "Q8_0 will not fit" in err


def test_with_ollama_running_the_hint_is_the_pull_command() -> None:
    """Ollama cannot be installed here: the fake answers ``/api/version`` as docs/api.md says."""
    fake = FakeOllama()
    with serve(fake.app) as url:
        done = cli("show", "qwen3:8b", env={"AUTOTUNE_OLLAMA_URL": url})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "Get it with Ollama, which is running here: ollama pull qwen3:8b" in done.stderr
    assert any(r["path"] == "/api/version" for r in fake.requests)


def test_an_unheard_of_name_gets_suggestions_and_no_pull_hint() -> None:
    done = cli("show", "smollm2:13", env={"AUTOTUNE_OLLAMA_URL": closed_port_url()})
    assert done.returncode == 1
    assert (
        "Unknown model 'smollm2:13'" in done.stderr and "Did you mean: smollm2:135m?" in done.stderr
    )
    assert "pull" not in done.stderr
