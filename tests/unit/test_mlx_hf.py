"""The MLX and Hugging Face Inference API backends, without Apple Silicon and without the network.

MLX needs Apple Silicon, so the mlx_lm.server path runs against ``tests/fakes/mlx_server.py``,
a fake built from mlx-lm's own ``server.py`` (its ``/health``, ``/v1/models``, streamed chunks,
``usage.prompt_tokens_details.cached_tokens`` and ``timings``), both as a server autotune is
pointed at and as the child process autotune starts. huggingface.co is never contacted: the
Hugging Face router is ``tests/fakes/hf_router.py`` on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from autotune.backends import mlx_models
from autotune.backends.hf import HFAuthError, HFBackend, HFTokenMissing
from autotune.backends.mlx import MlxBackend, fill_mlx_timings
from autotune.backends.mlx_models import (
    is_apple_silicon,
    local_mlx_models,
    mlx_first,
    mlx_meta_from_config,
    mlx_route,
    ollama_names_for,
    resolve_mlx_repo,
)
from autotune.backends.registry import make_backend
from autotune.cli import mlx as mlx_cli
from autotune.ground.config import Settings
from autotune.ground.errors import EngineUnavailable, ModelNotFound
from autotune.ground.types import ChatRequest
from fakes.hf_router import MODEL as HF_MODEL
from fakes.hf_router import FakeHFRouter
from fakes.mlx_server import FakeMlxServer
from fakes.server import Swappable, serve

FAKE_MLX_SCRIPT = Path(__file__).resolve().parents[1] / "fakes" / "mlx_server.py"
QWEN_REPO = "mlx-community/Qwen3-8B-4bit"

#: The fields of mlx-community/Qwen3-8B-4bit's config.json that matter here.
QWEN3_8B_CONFIG: dict[str, Any] = {
    "architectures": ["Qwen3ForCausalLM"],
    "model_type": "qwen3",
    "hidden_size": 4096,
    "head_dim": 128,
    "num_attention_heads": 32,
    "num_hidden_layers": 36,
    "num_key_value_heads": 8,
    "max_position_embeddings": 40960,
    "vocab_size": 151936,
    "quantization": {"group_size": 64, "bits": 4},
}


# --------------------------------------------------------------------------- names (pure)


def test_ollama_names_resolve_to_mlx_community_repos() -> None:
    assert resolve_mlx_repo("qwen3:8b") == QWEN_REPO
    assert resolve_mlx_repo("Qwen3:8B") == QWEN_REPO
    assert resolve_mlx_repo("qwen3") == resolve_mlx_repo("qwen3:latest") == QWEN_REPO
    assert resolve_mlx_repo("llama3.2") == "mlx-community/Llama-3.2-3B-Instruct-4bit"
    assert resolve_mlx_repo("mlx-community/Foo-4bit") == "mlx-community/Foo-4bit"
    assert resolve_mlx_repo("qwen3:3b") is None
    assert resolve_mlx_repo("smollm2") is None  # its :latest is not in the table
    assert ollama_names_for(QWEN_REPO) == ["qwen3:8b", "qwen3"]


def test_every_table_entry_is_an_mlx_community_repo() -> None:
    for tag, repo in mlx_models.OLLAMA_TO_MLX.items():
        assert ":" in tag and repo.startswith("mlx-community/"), tag
    for base, size in mlx_models.OLLAMA_LATEST.items():
        assert f"{base}:{size}" in mlx_models.OLLAMA_TO_MLX


def test_apple_silicon_and_the_routing_decision() -> None:
    assert is_apple_silicon("Darwin", "arm64") is True
    assert is_apple_silicon("Darwin", "x86_64") is False
    assert is_apple_silicon("Linux", "aarch64") is False
    present = [QWEN_REPO.lower()]
    assert mlx_route("qwen3:8b", apple_silicon=True, local_repos=present) == QWEN_REPO
    assert mlx_route("qwen3:8b", apple_silicon=False, local_repos=present) is None
    assert mlx_route("gemma3:4b", apple_silicon=True, local_repos=present) is None
    assert mlx_route("unknown:1b", apple_silicon=True, local_repos=present) is None
    order = ["ollama", "embedded"]
    assert mlx_first(order, apple_silicon=True, mlx_ready=True) == ["mlx", "ollama", "embedded"]
    assert mlx_first(order, apple_silicon=True, mlx_ready=False) == order
    assert mlx_first(order, apple_silicon=False, mlx_ready=True) == order


def _hub_repo(hub: Path, repo: str, config: dict[str, Any] | None, weights: int = 1000) -> Path:
    """A Hugging Face cache entry as huggingface_hub lays it out: blobs + snapshot symlinks."""
    root = hub / ("models--" + repo.replace("/", "--"))
    blobs, snapshot = root / "blobs", root / "snapshots" / "abc123"
    blobs.mkdir(parents=True)
    snapshot.mkdir(parents=True)
    files = {"model.safetensors": b"\0" * weights}
    if config is not None:
        files["config.json"] = json.dumps(config).encode()
    for i, (name, data) in enumerate(files.items()):
        (blobs / f"blob{i}").write_bytes(data)
        (snapshot / name).symlink_to(blobs / f"blob{i}")
    return root


def test_local_mlx_models_in_the_hugging_face_cache(tmp_path: Path) -> None:
    _hub_repo(tmp_path, QWEN_REPO, QWEN3_8B_CONFIG, weights=4096)
    _hub_repo(tmp_path, "someone/Tiny-mlx-4bit", {"quantization": {"bits": 4}})
    _hub_repo(tmp_path, "Qwen/Qwen3-8B", {"model_type": "qwen3"})  # transformers weights
    _hub_repo(tmp_path, "mlx-community/NoConfig-4bit", None)
    broken = _hub_repo(tmp_path, "mlx-community/Partial-4bit", {"model_type": "llama"})
    (broken / "blobs" / "blob0").unlink()  # interrupted download: dangling symlink
    found = {m.repo: m for m in local_mlx_models(tmp_path)}
    assert sorted(found) == [QWEN_REPO, "someone/Tiny-mlx-4bit"]
    assert found[QWEN_REPO].size_bytes == 4096
    assert local_mlx_models(tmp_path / "missing") == []


def test_model_meta_from_config_json() -> None:
    meta = mlx_meta_from_config("qwen3:8b", QWEN3_8B_CONFIG)
    assert (meta.block_count, meta.head_count, meta.head_count_kv) == (36, 32, 8)
    assert (meta.key_length, meta.context_length, meta.quantization) == (128, 40960, "4bit")
    assert meta.family == "Qwen3ForCausalLM"


def test_timings_without_milliseconds_get_them() -> None:
    from autotune.ground.types import EngineStats

    timings = {
        "prompt_n": 50,
        "prompt_per_second": 500.0,
        "predicted_n": 10,
        "predicted_per_second": 20.0,
    }
    stats = EngineStats(raw={"timings": timings})
    fill_mlx_timings(stats)
    assert (stats.prompt_ms, stats.decode_ms) == (100.0, 500.0)


# --------------------------------------------------------------------------- mlx_lm.server


@pytest.fixture(scope="module")
def host() -> Iterator[tuple[Swappable, str]]:
    app = Swappable()
    with serve(app) as url:
        yield app, url


async def _collect(backend: Any, request: ChatRequest) -> tuple[str, Any]:
    text, stats = "", None
    async for chunk in backend.stream_chat(request):
        for choice in chunk.data.get("choices") or ():
            text += (choice.get("delta") or {}).get("content") or ""
        stats = chunk.stats or stats
    return text, stats


async def test_mlx_server_chat_by_ollama_name(host: tuple[Swappable, str]) -> None:
    fake = FakeMlxServer([QWEN_REPO])
    host[0].app = fake.app
    backend = MlxBackend(host[1])
    try:
        assert await backend.health() is True
        names = [m.name for m in await backend.list_models()]
        assert names == [QWEN_REPO, "qwen3:8b", "qwen3"]
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
        text, stats = await _collect(backend, ChatRequest("qwen3:8b", messages))
        assert text == "Hello from MLX"
        assert fake.requests[0]["model"] == QWEN_REPO  # the server loads by repo id
        assert fake.requests[0]["stream_options"] == {"include_usage": True}
        assert stats is not None and stats.cached_tokens == 0
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": "More"}]
        _, stats = await _collect(backend, ChatRequest("qwen3:8b", messages))
        assert stats.prompt_tokens == 7 and stats.cached_tokens == 6  # the shared prefix
        assert stats.prompt_ms == pytest.approx(1 / 500 * 1000)  # 1 token at 500/s
        with pytest.raises(ModelNotFound):
            await _collect(backend, ChatRequest("gemma3:4b", messages))
        assert backend.capabilities.context_change_reloads is False
        assert backend.capabilities.reports_cached_tokens is True
    finally:
        await backend.aclose()


async def test_mlx_server_started_by_autotune_as_a_child(tmp_path: Path) -> None:
    backend = MlxBackend(
        command=[sys.executable, str(FAKE_MLX_SCRIPT), "--port", "{port}"], start_timeout=30
    )
    try:
        text, _ = await _collect(
            backend, ChatRequest("qwen3:8b", [{"role": "user", "content": "Hi"}])
        )
        assert text == "Hello from MLX"
        proc = backend._proc
        assert proc is not None and proc.poll() is None
        assert backend.describe()["url"] == backend.base_url != "http://127.0.0.1:0"
    finally:
        await backend.aclose()
    assert proc.poll() is not None  # stopped with the backend


@pytest.mark.skipif(is_apple_silicon(), reason="about machines without Apple Silicon")
async def test_mlx_on_a_machine_without_apple_silicon_says_so(tmp_path: Path) -> None:
    backend = MlxBackend(hub_dir=tmp_path)
    try:
        assert await backend.health() is False
        assert backend.describe()["available"] is False
        assert await backend.list_models() == []  # nothing on disk, nothing started
        with pytest.raises(EngineUnavailable) as caught:
            await _collect(backend, ChatRequest("qwen3:8b", [{"role": "user", "content": "x"}]))
        assert "Apple Silicon" in caught.value.message
        assert backend._proc is None
    finally:
        await backend.aclose()


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def _root() -> None:
        pass

    mlx_cli.register(app)
    return app


def test_mlx_cli_refuses_plainly_off_apple_silicon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mlx_cli, "is_apple_silicon", lambda: False)
    for args in (["mlx", "list"], ["mlx", "resolve", "qwen3:8b"], ["mlx", "pull", "qwen3:8b"]):
        result = CliRunner().invoke(_cli(), args)
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "needs Apple Silicon" in lines[0]


def test_mlx_cli_resolve_and_list(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(mlx_cli, "is_apple_silicon", lambda: True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    _hub_repo(tmp_path, QWEN_REPO, QWEN3_8B_CONFIG)
    result = CliRunner().invoke(_cli(), ["mlx", "resolve", "qwen3"])
    assert (result.exit_code, result.output.strip()) == (0, QWEN_REPO)
    unknown = CliRunner().invoke(_cli(), ["mlx", "resolve", "qwen9:1b"])
    assert unknown.exit_code == 1 and "No MLX model is known for 'qwen9:1b'" in unknown.output
    listed = CliRunner().invoke(_cli(), ["mlx", "list", "--json"])
    assert listed.exit_code == 0
    rows = json.loads(listed.output)
    assert [(r["repo"], r["names"]) for r in rows] == [(QWEN_REPO, ["qwen3:8b", "qwen3"])]


# --------------------------------------------------------------------------- Hugging Face


async def test_hf_without_a_token_names_hf_token(host: tuple[Swappable, str]) -> None:
    fake = FakeHFRouter()
    host[0].app = fake.app
    backend = HFBackend(host[1] + "/v1", token=None)
    try:
        with pytest.raises(HFTokenMissing) as caught:
            await _collect(backend, ChatRequest(HF_MODEL, [{"role": "user", "content": "x"}]))
        assert "HF_TOKEN" in caught.value.message
        assert await backend.health() is False
        assert backend.describe()["token"] == "missing: set HF_TOKEN"
        assert fake.seen_auth == []  # nothing was sent without a token
    finally:
        await backend.aclose()


async def test_hf_rejected_token_is_readable(host: tuple[Swappable, str]) -> None:
    fake = FakeHFRouter(token="hf_right")
    host[0].app = fake.app
    backend = HFBackend(host[1] + "/v1", token="hf_wrong")
    try:
        with pytest.raises(HFAuthError) as caught:
            await _collect(backend, ChatRequest(HF_MODEL, [{"role": "user", "content": "x"}]))
        assert caught.value.message == (
            "Hugging Face rejected the token in HF_TOKEN "
            "(401: Invalid credentials in Authorization header)."
        )
        assert caught.value.status == 502  # autotune's own client did nothing wrong
        assert fake.seen_auth == ["Bearer hf_wrong"]
    finally:
        await backend.aclose()


async def test_hf_chat_and_models_with_a_token(
    host: tuple[Swappable, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = FakeHFRouter(token="hf_right")
    host[0].app = fake.app
    monkeypatch.setenv("HF_TOKEN", "hf_right")
    monkeypatch.delenv("AUTOTUNE_HF_TOKEN", raising=False)
    backend = make_backend("hf", Settings(home=tmp_path, hf_api_url=host[1] + "/v1"))
    assert isinstance(backend, HFBackend)
    try:
        assert backend.name == "hf" and backend.capabilities.remote is True
        assert backend.describe()["token"] == "set"
        assert await backend.health() is True
        assert [m.name for m in await backend.list_models()] == [HF_MODEL]
        text, stats = await _collect(
            backend, ChatRequest(HF_MODEL, [{"role": "user", "content": "Hi"}])
        )
        assert text == "Hi there" and stats is not None and stats.completion_tokens == 2
        assert set(fake.seen_auth) == {"Bearer hf_right"}
    finally:
        await backend.aclose()


def test_registry_makes_mlx_and_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    mlx = make_backend("mlx", Settings(home=tmp_path, mlx_url="http://127.0.0.1:8080"))
    assert isinstance(mlx, MlxBackend) and mlx.base_url == "http://127.0.0.1:8080"
    hf = make_backend("hf", Settings(home=tmp_path))
    assert isinstance(hf, HFBackend) and hf.base_url == "https://router.huggingface.co"
    assert hf.token_set is False
    assert os.environ.get("HF_TOKEN") is None
