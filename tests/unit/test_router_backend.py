"""The router backend over real HTTP on 127.0.0.1 against fake vLLM-like upstreams.

vLLM cannot run here (no GPU), so ``tests/fakes/router_upstream.py`` answers with vLLM's
documented shapes (``/health``, ``/v1/models``, ``vllm:`` metrics, streamed chunks, its 404
``The model `x` does not exist.``) and fails on demand: 5xx before the first token, a
connection cut after the first token, unreadable metrics. The real-engine version of these
tests (three llama.cpp servers) is ``tests/integration/test_router.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autotune.backends.registry import make_backend, open_backends
from autotune.backends.router import RouterBackend
from autotune.backends.router_config import parse_router_config
from autotune.ground.config import Settings
from autotune.ground.errors import BackendError, EngineUnavailable, ModelNotFound, UpstreamError
from autotune.ground.types import ChatRequest
from fakes.router_upstream import FakeUpstream, vllm_metrics
from fakes.server import Swappable, closed_port_url, serve

MODEL = "qwen3:8b"


@pytest.fixture(scope="module")
def hosts() -> Iterator[list[tuple[Swappable, str]]]:
    """Three HTTP servers on 127.0.0.1 whose app each test swaps for fresh fakes."""
    apps = [Swappable(), Swappable(), Swappable()]
    with serve(apps[0]) as a, serve(apps[1]) as b, serve(apps[2]) as c:
        yield list(zip(apps, [a, b, c], strict=True))


def make_router(
    hosts: list[tuple[Swappable, str]],
    fakes: list[FakeUpstream],
    *,
    models: list[list[str] | None] | None = None,
    weights: list[float] | None = None,
    **options: Any,
) -> RouterBackend:
    """A router over ``fakes``; ``weights`` decide which upstream an idle router tries first
    (the heavier one), so a test never depends on how a tie between equals is broken."""
    upstreams = []
    for i, fake in enumerate(fakes):
        swap, url = hosts[i]
        swap.app = fake.app
        entry: dict[str, Any] = {"name": fake.name, "url": url, "kind": "vllm"}
        listed = models[i] if models is not None else [MODEL]
        if listed is not None:
            entry["models"] = listed
        if weights is not None:
            entry["weight"] = weights[i]
        upstreams.append(entry)
    config = {
        "upstreams": upstreams,
        "cooldown": 0.05,
        "probe_interval": 0.05,
        "metrics_interval": 60,
        "connect_timeout": 2,
        **options,
    }
    return RouterBackend(parse_router_config(config, "test"), source="test")


def request(text: str = "Hi", **params: Any) -> ChatRequest:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    return ChatRequest(MODEL, messages, {"max_tokens": 4, **params})


async def chat(router: RouterBackend, req: ChatRequest | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"chunks": 0, "text": "", "upstream": None, "route": None}
    async for chunk in router.stream_chat(req or request()):
        out["chunks"] += 1
        for choice in chunk.data.get("choices") or ():
            out["text"] += (choice.get("delta") or {}).get("content") or ""
        if chunk.stats is not None:
            out["upstream"] = chunk.stats.raw.get("upstream")
            out["route"] = chunk.stats.raw.get("route")
            out["cached"] = chunk.stats.cached_tokens
    return out


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met within the test's time bound"
        await asyncio.sleep(0.02)


def state(router: RouterBackend, name: str) -> dict[str, Any]:
    return next(s for s in router.upstream_states() if s["name"] == name)


async def test_a_5xx_before_the_first_token_fails_over_and_cools_the_upstream_down(
    hosts: list[tuple[Swappable, str]],
) -> None:
    a, b = FakeUpstream("a"), FakeUpstream("b")
    a.mode, a.status = "error", 503
    router = make_router(hosts, [a, b], weights=[2, 1], cooldown=60)  # a is tried first
    try:
        result = await chat(router)
        assert (result["upstream"], result["text"]) == ("b", "from b")
        assert (a.chats, b.chats, router.failovers) == (1, 1, 1)
        down = state(router, "a")
        assert down["state"] == "down" and "HTTP 503" in down["last_error"]
        assert "engine overloaded" not in down["last_error"]  # engines' words are never kept
        # While it cools down, nothing is sent to it.
        await chat(router, request("other"))
        assert a.chats == 1
    finally:
        await router.aclose()


async def test_a_refused_connection_fails_over(hosts: list[tuple[Swappable, str]]) -> None:
    """The dead upstream is tried first because it weighs more, not because it wins a tie
    (with equal weights the choice, and so whether the failover path runs at all, would
    depend on the tie-break and on the background prober's timing)."""
    b = FakeUpstream("b")
    hosts[1][0].app = b.app
    config = {
        "upstreams": [
            {
                "name": "gone",
                "url": closed_port_url(),
                "kind": "vllm",
                "models": [MODEL],
                "weight": 2,
            },
            {"name": "b", "url": hosts[1][1], "kind": "vllm", "models": [MODEL]},
        ],
        "cooldown": 60,
    }
    router = RouterBackend(parse_router_config(config))
    try:
        assert (await chat(router))["upstream"] == "b"
        assert router.failovers == 1  # the request itself met the refusal and moved on
        assert state(router, "gone")["state"] == "down"
        assert "connection refused" in state(router, "gone")["last_error"]
        assert (await chat(router))["upstream"] == "b"
    finally:
        await router.aclose()


async def test_a_failure_after_the_first_token_is_passed_on_not_retried(
    hosts: list[tuple[Swappable, str]],
) -> None:
    a, b = FakeUpstream("a"), FakeUpstream("b")
    a.mode = "drop"
    router = make_router(hosts, [a, b], weights=[2, 1])  # a is tried first
    seen = 0
    try:
        with pytest.raises(EngineUnavailable):
            async for _chunk in router.stream_chat(request()):
                seen += 1
        assert seen >= 1  # the client already had part of the answer
        assert b.chats == 0  # a retry would have sent it a second, different answer
        assert state(router, "a")["state"] == "down"
        assert state(router, "a")["in_flight"] == 0
    finally:
        await router.aclose()


async def test_a_client_error_is_not_retried_elsewhere(hosts: list[tuple[Swappable, str]]) -> None:
    a, b = FakeUpstream("a"), FakeUpstream("b")
    a.mode, a.status = "error", 400
    router = make_router(hosts, [a, b], weights=[2, 1])  # a is tried first
    try:
        with pytest.raises(UpstreamError) as caught:
            await chat(router)
        assert caught.value.status == 400
        assert (a.chats, b.chats) == (1, 0)
        assert state(router, "a")["state"] == "up"
    finally:
        await router.aclose()


async def test_every_upstream_down_names_them(hosts: list[tuple[Swappable, str]]) -> None:
    a, b = FakeUpstream("a"), FakeUpstream("b")
    a.mode = b.mode = "error"
    router = make_router(hosts, [a, b], cooldown=60)
    try:
        with pytest.raises(EngineUnavailable) as caught:
            await chat(router)
        assert "Every upstream that serves 'qwen3:8b' is down" in caught.value.message
        assert "a (" in caught.value.message and "b (" in caught.value.message
    finally:
        await router.aclose()


async def test_a_down_upstream_is_probed_back_to_health(
    hosts: list[tuple[Swappable, str]],
) -> None:
    a, b = FakeUpstream("a"), FakeUpstream("b")
    a.mode, a.healthy = "error", False
    router = make_router(hosts, [a, b], weights=[2, 1])  # a is tried first
    try:
        assert (await chat(router))["upstream"] == "b"
        assert state(router, "a")["state"] == "down"
        # Probed every 0.05 s: while /health and /metrics say 503 it stays down.
        await asyncio.sleep(0.3)
        assert state(router, "a")["state"] == "down"
        assert a.chats == 1
        a.mode, a.healthy = "ok", True  # the engine is back
        await until(lambda: state(router, "a")["state"] == "up")
        served = {(await chat(router, request(f"q{i}")))["upstream"] for i in range(4)}
        assert "a" in served
    finally:
        await router.aclose()


async def test_unknown_model_and_stale_model_lists(hosts: list[tuple[Swappable, str]]) -> None:
    a, b = FakeUpstream("a", ["qwen3:8b"]), FakeUpstream("b", ["qwen3:8b"])
    router = make_router(hosts, [a, b], models=[None, None])  # both discovered
    try:
        with pytest.raises(ModelNotFound) as caught:
            await chat(router, ChatRequest("qwen3:7b", [{"role": "user", "content": "x"}]))
        assert caught.value.suggestions == ["qwen3:8b"]
        assert [m.name for m in await router.list_models()] == ["qwen3:8b"]
        a.models = ["llama3.2:latest"]  # a no longer has it; its listing says otherwise
        results = [await chat(router, request(f"n{i}")) for i in range(3)]
        assert {r["upstream"] for r in results} == {"b"}
        assert state(router, "a")["state"] == "up"  # a stale list is no reason to cool down
    finally:
        await router.aclose()


async def test_garbage_metrics_are_unknown_load_and_real_ones_steer(
    hosts: list[tuple[Swappable, str]],
) -> None:
    a, b, c = FakeUpstream("a"), FakeUpstream("b"), FakeUpstream("c")
    a.metrics_text = "<html>502 Bad Gateway</html>"
    b.metrics_text = vllm_metrics(MODEL, running=4, waiting=9)  # busy with other clients
    router = make_router(hosts, [a, b, c])
    try:
        assert await router.health() is True
        states = {s["name"]: s for s in router.upstream_states()}
        assert states["a"]["state"] == "up"
        assert (states["a"]["running"], states["a"]["waiting"]) == (None, None)
        assert (states["b"]["running"], states["b"]["waiting"]) == (4.0, 9.0)
        assert states["b"]["kv_usage"] == 0.25
        served = [(await chat(router, request(f"m{i}")))["upstream"] for i in range(4)]
        assert "b" not in served  # 13 requests of others' beat our 0–1 in flight
        assert set(served) == {"a", "c"}
    finally:
        await router.aclose()


async def test_a_conversation_sticks_by_prompt_or_id(hosts: list[tuple[Swappable, str]]) -> None:
    a, b = FakeUpstream("a"), FakeUpstream("b")
    router = make_router(hosts, [a, b])
    try:
        first = await chat(router, request("topic one"))
        again = await chat(router, request("topic one"))
        assert first["upstream"] == again["upstream"]
        assert (first["route"], again["route"]) == ("least busy", "affinity")
        other = await chat(router, request("topic two"))
        assert other["upstream"] != first["upstream"]  # idle upstreams are taken in turn
        # OpenAI's prompt_cache_key (or a conversation id) overrides the content hash.
        keyed = [await chat(router, request(f"q{i}", prompt_cache_key="conv-9")) for i in range(3)]
        assert len({k["upstream"] for k in keyed}) == 1
        req = request("whatever")
        req.conversation_id = "conv-9"  # type: ignore[attr-defined]
        assert (await chat(router, req))["upstream"] == keyed[0]["upstream"]
    finally:
        await router.aclose()


async def test_affinity_off_spreads_a_conversation(hosts: list[tuple[Swappable, str]]) -> None:
    a, b = FakeUpstream("a"), FakeUpstream("b")
    router = make_router(hosts, [a, b], affinity=False)
    try:
        served = {(await chat(router, request("same")))["upstream"] for _ in range(4)}
        assert served == {"a", "b"}
    finally:
        await router.aclose()


async def test_state_running_models_and_description(hosts: list[tuple[Swappable, str]]) -> None:
    a, b = FakeUpstream("a", ["qwen3:8b"]), FakeUpstream("b", ["llama3.2:latest"])
    router = make_router(hosts, [a, b], models=[None, None])
    try:
        running = await router.running_models()
        assert sorted((r.name, r.settings["upstream"]) for r in running) == [
            ("llama3.2:latest", "b"),
            ("qwen3:8b", "a"),
        ]
        assert all(r.backend == "router" for r in running)
        described = router.describe()
        assert described["name"] == "router" and described["config"] == "test"
        assert [u["name"] for u in described["upstreams"]] == ["a", "b"]
        keys = set(described["upstreams"][0])
        assert {"state", "in_flight", "waiting", "running", "kv_usage", "prefix_hit_rate"} <= keys
        assert router.capabilities.running_models is True
        assert router.capabilities.remote is False
    finally:
        await router.aclose()


async def test_registry_builds_the_router_from_settings(tmp_path: Path) -> None:
    file = tmp_path / "router.yaml"
    file.write_text("upstreams:\n  - url: http://127.0.0.1:9/\n    kind: llamacpp\n")
    settings = Settings(home=tmp_path, router_config=file)
    backends = await open_backends(settings)
    try:
        assert backends.order == ["router"]
        assert isinstance(backends.primary, RouterBackend)
    finally:
        await backends.aclose()
    with pytest.raises(BackendError) as caught:
        make_backend("router", Settings(home=tmp_path))
    assert "AUTOTUNE_ROUTER_CONFIG" in str(caught.value)
    file.write_text("upstreams:\n  - url: http://127.0.0.1:9/\n    kind: llamacpp\n    x: 1\n")
    with pytest.raises(BackendError) as bad:
        make_backend("router", settings)
    assert "upstreams[0].x: unknown key" in bad.value.message


def config_of(hosts: list[tuple[Swappable, str]], fakes: list[FakeUpstream], **kw: Any) -> Any:
    """A config whose upstreams are ``fakes``; ``kw`` maps a fake's name to extra keys."""
    upstreams = []
    for (swap, url), fake in zip(hosts, fakes, strict=False):
        swap.app = fake.app
        extra = dict(kw.pop(fake.name, {}))
        upstreams.append(
            {"name": fake.name, "url": url, "kind": "vllm", "models": [MODEL], **extra}
        )
    return parse_router_config(
        {"upstreams": upstreams, "cooldown": 60, "metrics_interval": 60, **kw}, "test"
    )


async def test_each_upstream_holds_what_it_can_run(hosts: list[tuple[Swappable, str]]) -> None:
    """vLLM batches (256 at once), a llama-server has the slots its /props names, a config's
    max_concurrent wins; the admission queue hears the total when it changes."""
    v, ls, o = FakeUpstream("v"), FakeUpstream("l"), FakeUpstream("o")
    ls.slots = 2
    router = RouterBackend(
        config_of(hosts, [v, ls, o], l={"kind": "llamacpp"}, o={"max_concurrent": 3})
    )
    told: list[int] = []
    router.on_capacity = told.append
    try:
        assert router.capabilities.concurrency == 256 + 1 + 3  # slots not read yet: one
        assert await router.health() is True
        assert told == [256 + 2 + 3]
        assert router.capabilities.concurrency == 261
        limits = {s["name"]: (s["limit"], s["limit_reason"]) for s in router.upstream_states()}
        assert limits == {
            "v": (256, "batches; it queues what it cannot run yet"),
            "l": (2, "its slots (/props total_slots)"),
            "o": (3, "max_concurrent in the router config"),
        }
    finally:
        await router.aclose()


async def test_a_request_waits_in_the_router_while_every_upstream_is_full(
    hosts: list[tuple[Swappable, str]],
) -> None:
    a = FakeUpstream("a")
    router = RouterBackend(config_of(hosts, [a], a={"max_concurrent": 1}))
    try:
        held = router.stream_chat(request("first"))
        await held.__anext__()  # a's one place is taken until this stream is closed
        second = asyncio.ensure_future(chat(router, request("second")))
        await until(lambda: len(router._room_waiters) == 1)
        assert a.chats == 1 and not second.done()
        await held.aclose()
        assert (await second)["upstream"] == "a"
        assert a.chats == 2 and state(router, "a")["in_flight"] == 0
    finally:
        await router.aclose()


async def test_a_full_pinned_upstream_lets_the_conversation_move(
    hosts: list[tuple[Swappable, str]],
) -> None:
    a, b = FakeUpstream("a"), FakeUpstream("b")
    router = RouterBackend(
        config_of(hosts, [a, b], a={"max_concurrent": 1, "weight": 2}, b={"max_concurrent": 1})
    )
    try:
        assert (await chat(router, request("topic")))["upstream"] == "a"
        held = router.stream_chat(request("other"))  # takes a's one place (a weighs more)
        await held.__anext__()
        moved = await chat(router, request("topic"))
        await held.aclose()
        assert (moved["upstream"], moved["route"]) == ("b", "affinity yielded: a was full (1 of 1)")
    finally:
        await router.aclose()


async def test_completions_go_through_the_router(hosts: list[tuple[Swappable, str]]) -> None:
    from autotune.ground.types import CompletionRequest

    a, b = FakeUpstream("a"), FakeUpstream("b")
    a.mode, a.status = "error", 503
    router = make_router(hosts, [a, b], weights=[2, 1], cooldown=60)  # a is tried first
    try:
        text, upstream = "", None
        async for chunk in router.stream_completion(CompletionRequest(MODEL, "Once upon")):
            text += "".join(c.get("text") or "" for c in chunk.data.get("choices") or ())
            if chunk.stats is not None:
                upstream = chunk.stats.raw.get("upstream")
        assert (text, upstream) == ("from b", "b")
        assert router.failovers == 1 and state(router, "a")["state"] == "down"
        assert b.bodies[-1]["prompt"] == "Once upon" and b.bodies[-1]["stream"] is True
        assert state(router, "b")["in_flight"] == 0
    finally:
        await router.aclose()


async def test_embeddings_go_through_the_router(hosts: list[tuple[Swappable, str]]) -> None:
    a, b = FakeUpstream("a"), FakeUpstream("b")
    a.embeddings = False  # a llama-server without --embeddings: 501, and not down for it
    router = make_router(hosts, [a, b], weights=[2, 1])  # a is tried first
    try:
        vectors = await router.embed(MODEL, ["one", "three"])
        assert vectors == [[3.0, 0.0, 0.5], [5.0, 1.0, 0.5]]
        assert (a.chats, b.chats) == (1, 1)
        assert state(router, "a")["state"] == "up" and router.failovers == 0
        b.embeddings = False
        with pytest.raises(UpstreamError) as caught:
            await router.embed(MODEL, ["x"])
        assert caught.value.status == 501  # the pipeline answers it as a 400 naming the model
        b.embeddings, b.mode, b.status = True, "error", 503
        with pytest.raises(EngineUnavailable):
            await router.embed(MODEL, ["x"])
        assert state(router, "b")["state"] == "down"
    finally:
        await router.aclose()


def counters(hits: int, queries: int, tokens: int) -> str:
    label = f'{{engine="0",model_name="{MODEL}"}}'
    return (
        vllm_metrics(MODEL, running=2, waiting=0)
        + f"vllm:prefix_cache_hits_total{label} {hits}\n"
        + f"vllm:prefix_cache_queries_total{label} {queries}\n"
        + f"vllm:generation_tokens_total{label} {tokens}\n"
    )


async def test_rates_are_over_the_recent_readings(hosts: list[tuple[Swappable, str]]) -> None:
    """A lifetime of misses (0 of 9,000) before the window does not hide a warm present."""
    a = FakeUpstream("a")
    a.metrics_text = counters(0, 9_000, 1_000)
    router = make_router(hosts, [a])
    try:
        await router.health()
        first = state(router, "a")
        assert first["prefix_hit_rate"] is None  # no lookup seen yet: no rate, not 0 %
        assert (first["running"], first["waiting"]) == (2, 0)
        assert isinstance(first["running"], int)
        a.metrics_text = counters(900, 10_000, 1_400)
        await router.health()
        now = state(router, "a")
        assert now["prefix_hit_rate"] == pytest.approx(900 / 1_000)
        assert now["tokens_per_second"] > 0
    finally:
        await router.aclose()


def test_ps_prints_counts_as_integers_and_zero_as_zero() -> None:
    from autotune.cli.models import _upstream_row

    state = {"name": "vllm", "state": "up", "in_flight": 0, "limit": 256, "running": 0}
    state |= {"waiting": 2, "kv_usage": 0.0, "prefix_hit_rate": None, "tokens_per_second": 0.0}
    state |= {"served": 12, "failed": 0, "kind": "vllm", "url": "http://127.0.0.1:8000"}
    row = _upstream_row(state)
    assert row[2:10] == ["0/256", "0", "2", "0%", "—", "0.0", "12", "0"]
