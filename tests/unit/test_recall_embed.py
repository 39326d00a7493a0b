"""Embedders: the engine's embedding endpoint over real HTTP, and how a missing one is reported.

No Ollama binary can be installed here, so the engine is the fake in ``tests/fakes/ollama.py``
(``/api/embed`` answers in the documented shape: one vector per input); the backend talking
to it is the real :class:`OllamaBackend`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from autotune.backends.base import Backend
from autotune.backends.ollama import OllamaBackend
from autotune.ground.errors import NotSupported
from autotune.recall.embed import Embedder, EngineEmbedder, MiniLMEmbedder, default_embedder
from autotune.recall.manager import RecallManager
from autotune.store.conversations import ConversationStore
from autotune.store.db import Database
from fakes.ollama import MODEL, FakeOllama
from fakes.server import serve


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOllama]:
    engine = FakeOllama()
    with serve(engine.app) as url:
        engine.url = url
        yield engine


async def test_engine_embedder_indexes_and_searches_through_the_engine(
    fake: FakeOllama, tmp_path: Path
) -> None:
    db = Database(tmp_path / "e.db")
    store = ConversationStore(db)
    store.create(id="c")
    store.append("c", [{"role": "user", "content": "ab"}, {"role": "assistant", "content": "abcd"}])
    backend = OllamaBackend(fake.url)
    try:
        embedder = EngineEmbedder(backend, MODEL)
        assert embedder.name == f"engine:ollama/{MODEL}"
        manager = RecallManager(db, embedder)
        assert await manager.aindex_pending() == 2
        assert fake.bodies("/api/embed")[-1]["input"] == ["ab", "abcd"]
        rows = db.query("SELECT model, dim FROM message_vectors")
        assert {(r[0], r[1]) for r in rows} == {(embedder.name, 3)}
        hits = await manager.asearch("ab", limit=5)
        assert [h.conversation_id for h in hits] == ["c"]
    finally:
        await backend.aclose()


async def test_an_engine_without_embeddings_says_not_supported() -> None:
    class NoEmbeddings(Backend):
        name = "plain"

        async def health(self) -> bool:
            return True

        async def list_models(self) -> list:  # type: ignore[type-arg]
            return []

        def stream_chat(self, request):  # type: ignore[no-untyped-def]
            raise NotImplementedError

    with pytest.raises(NotSupported):
        await EngineEmbedder(NoEmbeddings(), "m").aembed(["x"])


def test_an_embedder_must_implement_embed_or_aembed() -> None:
    class Neither(Embedder):
        pass

    with pytest.raises(NotImplementedError):
        Neither().embed(["x"])


async def test_calling_the_blocking_embed_inside_a_loop_is_a_clear_error(
    fake: FakeOllama,
) -> None:
    backend = OllamaBackend(fake.url)
    try:
        with pytest.raises(RuntimeError, match="aembed"):
            EngineEmbedder(backend, MODEL).embed(["x"])
    finally:
        await backend.aclose()


def test_default_embedder_is_minilm_when_installed() -> None:
    embedder = default_embedder()
    assert embedder is not None, "the offline embedding model is missing: run `make setup`"
    assert isinstance(embedder, MiniLMEmbedder) and embedder.name == "minilm:all-MiniLM-L6-v2"
    assert embedder.embed([]).shape == (0, 384)  # nothing to embed: no model load needed


def test_importing_recall_loads_no_model_library() -> None:
    code = (
        "import sys, autotune.recall.manager, autotune.cli.recall\n"
        "heavy = {'torch', 'sentence_transformers', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_offline_embedder_leaves_the_hub_reachable_for_pulls(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Loading the bundled MiniLM must not switch huggingface_hub offline for the whole
    process: under ``serve`` the same process answers ``/api/pull`` (it once failed every
    pull with OfflineModeIsEnabled after the first recall)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert MiniLMEmbedder().embed(["a pump reported readings"]).shape == (1, 384)
    assert "HF_HUB_OFFLINE" not in os.environ
    assert "TRANSFORMERS_OFFLINE" not in os.environ


async def test_recall_off_keeps_full_text_search_and_never_loads_the_model(tmp_path: Path) -> None:
    from autotune.ground.config import Settings
    from autotune.runtime import open_runtime

    settings = Settings(home=tmp_path / "home", backend="embedded", recall=False)
    runtime = await open_runtime(settings, start_sampler=False)
    try:
        assert runtime.recall is not None and runtime.recall.embedder is None
        assert runtime.recall.memories_for("my cat vomits hairballs") == []
    finally:
        await runtime.aclose()
