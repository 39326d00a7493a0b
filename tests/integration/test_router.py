"""The router in front of three REAL llama.cpp servers (the bundled SmolLM2-135M) on 127.0.0.1.

Each upstream is a separate process started with the embedded engine's own launch parameters
(``tests/fakes/fixed_port_engine.py``: ``engine_worker.build_params`` on a port the test picks,
so a killed upstream can come back at the same URL). Nothing is faked: chats, metrics
(``/metrics`` with ``llamacpp:*`` counters) and prefix-cache figures are the engines' own.
Requests are short (``max_tokens`` ≤ 8) because the machine has two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from autotune.backends.router import RouterBackend
from autotune.backends.router_config import parse_router_config
from autotune.ground.errors import BackendError
from autotune.ground.types import ChatRequest

pytestmark = pytest.mark.engine

MODEL = "smollm2:135m"
WORKER = Path(__file__).resolve().parents[1] / "fakes" / "fixed_port_engine.py"
SYSTEM = (
    "You are a terse assistant for a test suite. Answer in at most five words. "
    "Never explain yourself, never apologise, and never ask questions back."
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Engine:
    """One llama.cpp server process on a fixed loopback port."""

    def __init__(self, name: str, gguf: Path, port: int) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.spec = {
            "path": str(gguf),
            "alias": MODEL,
            "n_ctx": 1024,
            "n_threads": 1,
            "n_parallel": 1,
            "verbosity": 0,
            "port": port,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), json.dumps(self.spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            assert proc.stdout is not None
            reply = json.loads(proc.stdout.readline() or b'{"error": "no reply"}')
            if "url" in reply:
                self.proc = proc
                return
            proc.wait()
            if time.monotonic() > deadline:  # the port may linger briefly after a kill
                raise RuntimeError(f"{self.name} did not start: {reply}")
            time.sleep(0.2)

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def engines(bundled_gguf: Path) -> Iterator[list[Engine]]:
    started = [Engine(f"e{i}", bundled_gguf, _free_port()) for i in range(3)]
    try:
        for engine in started:
            engine.start()
        yield started
    finally:
        for engine in started:
            engine.stop()


def _router(engines: list[Engine], **e0: Any) -> RouterBackend:
    config = {
        "upstreams": [
            # Two list their model, the third is discovered from its /v1/models.
            {"name": "e0", "url": engines[0].url, "kind": "llamacpp", "models": [MODEL], **e0},
            {"name": "e1", "url": engines[1].url, "kind": "llamacpp", "models": [MODEL]},
            {"name": "e2", "url": engines[2].url, "kind": "llamacpp"},
        ],
        "cooldown": 0.5,
        "probe_interval": 0.25,
        "metrics_interval": 0.5,
        "connect_timeout": 2.0,
    }
    return RouterBackend(parse_router_config(config, "test"))


@dataclass
class Result:
    index: int
    chunks: int = 0
    text: str = ""
    upstream: str | None = None
    cached_tokens: int | None = None
    prompt_tokens: int | None = None
    error: BaseException | None = None
    raw: dict[str, Any] = field(default_factory=dict)


async def _chat(
    router: RouterBackend, messages: list[dict[str, Any]], index: int = 0, max_tokens: int = 4
) -> Result:
    result = Result(index)
    request = ChatRequest(MODEL, messages, {"max_tokens": max_tokens, "temperature": 0})
    try:
        async for chunk in router.stream_chat(request):
            result.chunks += 1
            for choice in chunk.data.get("choices") or ():
                result.text += (choice.get("delta") or {}).get("content") or ""
            if chunk.stats is not None:
                result.upstream = chunk.stats.raw.get("upstream")
                result.cached_tokens = chunk.stats.cached_tokens
                result.prompt_tokens = chunk.stats.prompt_tokens
                result.raw = chunk.stats.raw
    except BackendError as exc:
        result.error = exc
    return result


def _user(i: int) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Say {i}."}]


async def _predicted_tokens(engine: Engine) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(engine.url + "/metrics")).text
    for line in text.splitlines():
        if line.startswith("llamacpp:tokens_predicted_total"):
            return float(line.split()[-1])
    raise AssertionError("no llamacpp:tokens_predicted_total in /metrics")


async def test_sixty_concurrent_chats_spread_over_three_engines(engines: list[Engine]) -> None:
    router = _router(engines)
    try:
        before = [await _predicted_tokens(e) for e in engines]
        results = await asyncio.gather(*(_chat(router, _user(i), i) for i in range(60)))
        after = [await _predicted_tokens(e) for e in engines]
    finally:
        await router.aclose()
    errors = [r.error for r in results if r.error is not None]
    assert not errors, errors[:3]
    spread = Counter(r.upstream for r in results)
    print("spread of 60 chats:", dict(spread))
    assert set(spread) == {"e0", "e1", "e2"}
    # Each engine has one slot (/props total_slots): the router sent it one chat at a time and
    # held the rest itself.
    assert [s["limit"] for s in router.upstream_states()] == [1, 1, 1]
    # None takes more than half while another is idle; the in-flight count evens them out.
    assert max(spread.values()) <= 30
    assert min(spread.values()) >= 10
    # The engines' own counters agree that each one generated tokens for its share.
    for engine, b, a in zip(engines, before, after, strict=True):
        assert a > b, f"{engine.name} generated nothing"
    states = {s["name"]: s for s in router.upstream_states()}
    assert {n: s["served"] for n, s in states.items()} == dict(spread)
    assert states["e2"]["models"] == [MODEL]  # discovered from its /v1/models


async def test_a_conversation_stays_on_one_engine_and_hits_its_prefix_cache(
    engines: list[Engine],
) -> None:
    router = _router(engines)
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Name a colour."},
    ]
    turns: list[Result] = []
    others: list[Result] = []
    try:
        for turn in range(3):
            result = await _chat(router, messages, max_tokens=6)
            assert result.error is None, result.error
            turns.append(result)
            messages += [
                {"role": "assistant", "content": result.text},
                {"role": "user", "content": f"Another one, number {turn + 2}."},
            ]
            # Unrelated chats in between would take the conversation's engine in turn if
            # affinity did not hold it (idle upstreams are taken in rotation).
            for i in range(2):
                others.append(await _chat(router, _user(100 + 10 * turn + i)))
    finally:
        await router.aclose()
    homes = {r.upstream for r in turns}
    print(
        "conversation upstreams:",
        [r.upstream for r in turns],
        "others:",
        [r.upstream for r in others],
    )
    print(
        "cached tokens per turn:",
        [r.cached_tokens for r in turns],
        [r.prompt_tokens for r in turns],
    )
    assert len(homes) == 1
    assert {r.upstream for r in others} - homes, "the unrelated chats never went elsewhere"
    assert [r.raw.get("route") for r in turns[1:]] == ["affinity", "affinity"]
    for before, result in itertools.pairwise(turns):
        # llama.cpp reports the reused prefix: the whole previous prompt (and more), which
        # only the engine that ran the previous turn holds; the others share only the system
        # prompt with this conversation.
        assert before.prompt_tokens is not None and result.prompt_tokens is not None
        assert result.cached_tokens is not None
        assert before.prompt_tokens <= result.cached_tokens < result.prompt_tokens


async def test_a_killed_engine_loses_no_unstarted_request_and_comes_back(
    engines: list[Engine],
) -> None:
    # Three at once on e0 (its one slot runs one, llama-server queues two), so the kill
    # meets requests that have not started streaming.
    router = _router(engines, max_concurrent=3)
    victim = engines[0]
    upstream = router.upstreams[0]
    try:
        tasks = [
            asyncio.ensure_future(_chat(router, _user(200 + i), 200 + i, max_tokens=8))
            for i in range(30)
        ]
        deadline = time.monotonic() + 30
        while upstream.in_flight < 3:  # one generating, the rest queued in its single slot
            assert time.monotonic() < deadline, "the victim never got three requests"
            await asyncio.sleep(0.01)
        victim.kill()
        results = await asyncio.gather(*tasks)
        lost = [r for r in results if r.error is not None and r.chunks == 0]
        broken = [r for r in results if r.error is not None and r.chunks > 0]
        print(
            f"after the kill: {sum(r.error is None for r in results)} ok, "
            f"{len(broken)} cut mid-stream, {len(lost)} lost before streaming, "
            f"{router.failovers} failed over; spread {dict(Counter(r.upstream for r in results))}"
        )
        assert not lost, [str(r.error) for r in lost]
        assert router.failovers >= 1
        state = router.upstream_states()[0]
        assert state["state"] == "down"
        assert state["last_error"]

        victim.start()
        deadline = time.monotonic() + 30
        while router.upstream_states()[0]["state"] != "up":
            assert time.monotonic() < deadline, "the restarted engine was never probed back"
            await asyncio.sleep(0.1)
        again = [await _chat(router, _user(300 + i), 300 + i) for i in range(6)]
    finally:
        await router.aclose()
    assert all(r.error is None for r in again), [str(r.error) for r in again]
    assert "e0" in {r.upstream for r in again}


@pytest.fixture(autouse=True)
def _engines_alive(engines: list[Engine]) -> Iterator[None]:
    """A test that killed an engine restarts it; if it failed half-way, restart it here."""
    yield
    for engine in engines:
        if engine.proc is None or engine.proc.poll() is not None:
            with contextlib.suppress(RuntimeError):
                engine.start()


def test_autotune_serve_answers_through_the_router(
    engines: list[Engine], start_server: Any, tmp_path: Path
) -> None:
    """The whole pipeline (``autotune serve``, official openai client) with a router config."""
    from openai import OpenAI

    config = tmp_path / "router.yaml"
    config.write_text(
        "upstreams:\n"
        + "".join(f"  - url: {e.url}\n    kind: llamacpp\n" for e in engines)
        + "cooldown: 0.5\n"
    )
    server = start_server(backend="auto", router_config=config, max_concurrent=3)
    client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
    models = [m.id for m in client.models.list().data]
    assert MODEL in models
    reply = client.chat.completions.create(
        model=MODEL, messages=_user(7), max_tokens=4, temperature=0
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.prompt_tokens > 0
    health = httpx.get(server.url + "/health", timeout=30).json()
    states = health["upstreams"]["router"]
    assert {s["url"] for s in states} == {e.url for e in engines}
    assert all(s["state"] == "up" for s in states) and sum(s["served"] for s in states) == 1

    # `autotune ps` shows the serve's own router (it asks the server; it builds none).
    port = server.url.rsplit(":", 1)[1]
    env = {**os.environ, "AUTOTUNE_ROUTER_CONFIG": str(config), "AUTOTUNE_PORT": port}
    ps = subprocess.run(
        [sys.executable, "-m", "autotune", "ps", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ps.returncode == 0, ps.stderr
    shown = json.loads(ps.stdout)["upstreams"]
    assert {u["url"] for u in shown} == {e.url for e in engines}
    assert all(u["backend"] == "router" and u["state"] == "up" for u in shown)
    assert sum(u["served"] for u in shown) == 1  # the serve's counters: this process sent none
