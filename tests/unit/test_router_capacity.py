"""How many requests autotune admits in front of a router: the runtime follows what the router
learns about its upstreams, and ``autotune serve`` leaves that choice to the runtime.

The upstream is the documented fake (``tests/fakes/router_upstream.py``) answering a
llama-server's ``/props`` with two slots; the real engines are in the integration tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.backends.registry import BackendSet
from autotune.backends.router import RouterBackend
from autotune.backends.router_config import parse_router_config
from autotune.cli.serve import _settings
from autotune.ground.config import Settings
from autotune.runtime import open_runtime
from fakes.router_upstream import FakeUpstream
from fakes.server import serve


def test_serve_leaves_settings_nobody_set_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOTUNE_MAX_QUEUED", "3")
    settings = _settings({"port": 8123})
    assert "max_concurrent" not in settings.model_fields_set  # the runtime chooses it
    assert (settings.max_queued, settings.port, settings.max_concurrent) == (3, 8123, 1)


async def test_admission_follows_the_slots_the_router_reads(tmp_path: Path) -> None:
    fake = FakeUpstream("llama", ["smollm2:135m"])
    fake.slots = 2
    with serve(fake.app) as url:
        config = {"upstreams": [{"name": "llama", "url": url, "kind": "llamacpp"}]}
        router = RouterBackend(parse_router_config(config, "test"))
        runtime = await open_runtime(
            Settings(home=tmp_path, recall=False),
            backends=BackendSet({"router": router}, ["router"]),
            start_sampler=False,
        )
        try:
            assert runtime.pipeline.queue.max_concurrent == 1  # slots not read yet
            assert await router.health() is True  # reads /props: total_slots 2
            assert runtime.pipeline.queue.max_concurrent == 2
        finally:
            await runtime.aclose()
