"""Which engine serves a model name: the choice rules and the bounded resolution caches."""

from __future__ import annotations

import pytest

from autotune.backends.registry import BackendSet, choose_engines, route_model
from autotune.ground.errors import ModelNotFound
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
