"""Which engine serves a model name: the choice rules and the bounded resolution caches."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.backends.registry import (
    BackendSet,
    check_not_itself,
    choose_engines,
    make_backend,
    points_at,
    route_model,
    serving_addresses,
)
from autotune.ground.config import Settings
from autotune.ground.errors import BackendError, ModelNotFound
from autotune.ground.types import ModelEntry
from fakes.backend import MODEL, FakeBackend


class CountingBackend(FakeBackend):
    """A fake engine that counts how often its model list is read (a disk scan, embedded)."""

    def __init__(self) -> None:
        super().__init__()
        self.listings = 0

    async def list_models(self) -> list[ModelEntry]:
        self.listings += 1
        return await super().list_models()


def test_auto_uses_reachable_engines_in_order_then_the_embedded_one() -> None:
    reachable = {"ollama": False, "lmstudio": True, "llamacpp": True}
    assert choose_engines("auto", reachable) == ["lmstudio", "llamacpp", "embedded"]
    assert choose_engines("ollama", reachable) == ["ollama"]


def test_a_bare_name_matches_its_latest_tag() -> None:
    inventory = {"ollama": ["qwen3:latest"], "embedded": ["qwen3:latest"]}
    assert route_model("QWEN3", inventory, ["ollama", "embedded"]) == "ollama"
    assert route_model("qwen3:8b", inventory, ["ollama", "embedded"]) is None


async def test_unknown_names_do_not_rescan_on_every_request() -> None:
    """Issue 13: 400 misspelt names once meant about 3 disk scans each."""
    engine = CountingBackend()
    backends = BackendSet({"fake": engine}, ["fake"])
    for i in range(50):
        with pytest.raises(ModelNotFound):
            await backends.resolve(f"no-such-model-{i}")
    assert engine.listings <= 3  # one listing, one rescan: not one per name
    with pytest.raises(ModelNotFound) as info:
        await backends.resolve("fake-modle")  # a near miss still gets suggestions
    assert MODEL in info.value.suggestions


async def test_resolution_caches_are_bounded() -> None:
    """Issue 13: 300 spellings of one name once grew the cache to 300 entries."""
    backends = BackendSet({"fake": FakeBackend()}, ["fake"])
    for i in range(600):
        with pytest.raises(ModelNotFound):
            await backends.resolve(f"x{i}")
    await backends.resolve(MODEL)
    assert len(backends._missing) <= 256 and len(backends._resolved) <= 256


async def test_a_known_name_resolves_and_forget_drops_it() -> None:
    engine = CountingBackend()
    backends = BackendSet({"fake": engine}, ["fake"])
    backend, name = await backends.resolve(MODEL)
    assert backend is engine and name == MODEL
    listings = engine.listings
    await backends.resolve(MODEL)
    assert engine.listings == listings  # the hot path never re-lists
    backends.forget(MODEL)
    engine.models = []
    backends._inventory.clear()
    with pytest.raises(ModelNotFound):
        await backends.resolve(MODEL)


def test_every_choosable_engine_in_the_table_can_be_built(tmp_path: Path) -> None:
    """One table lists the engines; each --backend value has a builder that makes it."""
    from autotune.ground.config import BACKEND_CHOICES, Settings
    from autotune.ground.engines import ENGINES

    settings = Settings(
        home=tmp_path, openai_url="http://127.0.0.1:9", mlx_url="http://127.0.0.1:9"
    )
    assert ("auto", *(e.name for e in ENGINES if e.choosable)) == BACKEND_CHOICES
    for spec in ENGINES:
        if not spec.choosable or spec.name == "router":  # the router needs its config file
            continue
        backend = make_backend(spec.name, settings)
        assert backend.name == spec.name
    with pytest.raises(BackendError, match="Choose one of"):
        make_backend("bogus", settings)


def test_an_engine_url_that_is_serves_own_address_is_known() -> None:
    own = [("127.0.0.1", 8765), ("127.0.0.1", 11434)]
    for url in ("http://127.0.0.1:8765/v1", "http://localhost:8765", "http://[::1]:11434"):
        assert points_at(url, own), url
    for url in ("http://127.0.0.1:8766", "http://192.0.2.1:8765", "http://127.0.0.1"):
        assert not points_at(url, own), url
    assert points_at("http://box.lan:8765", [("0.0.0.0", 8765)])  # listening everywhere


def test_serve_refuses_its_own_address_as_its_engine_and_auto_skips_it() -> None:
    """Issue 22.3: an autotune must never front itself."""
    settings = Settings(ollama_url="http://localhost:9000", port=9000)
    own = serving_addresses(settings)
    with pytest.raises(BackendError, match=r"AUTOTUNE_OLLAMA_URL .* own address"):
        check_not_itself(settings, "ollama", own)
    assert check_not_itself(settings, "auto", own) == ["ollama"]  # left out of the probes
    assert check_not_itself(settings, "embedded", own) == []
    with_ollama_port = Settings(serve_ollama=True, ollama_port=11434)
    assert ("127.0.0.1", 11434) in serving_addresses(with_ollama_port)
    assert check_not_itself(with_ollama_port, "auto", serving_addresses(with_ollama_port)) == [
        "ollama"
    ]
