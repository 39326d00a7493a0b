"""Every app gets its conversation back at once: the KV-cache manager on the real engine.

Requests are sent the way apps send them — the official clients (``openai``, ``ollama``,
``anthropic``), the whole history every turn, no autotune header — and KV files are found by
the tokens the prompt holds. Gemma-3-270M (the second test model) prefills several times
faster than SmolLM2 here, so the long conversations use it; SmolLM2 shows the same on a
shorter one. Every figure asserted is the engine's own: its cached and prompt token counts,
as telemetry records them (``/api/requests``), whichever API the request came through.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import pytest
from openai import OpenAI

from autotune.server.runner import BackgroundServer

pytestmark = pytest.mark.engine

GEMMA, SMOL = "gemma3:270m", "smollm2:135m"
#: ~2,000 of Gemma's tokens: a context of 4,096 holds it with the window's headroom.
MANUAL = " ".join(
    f"Fact {i}: valve {i} on line {i % 7} opens at {i * 3} kPa and closes at {i * 2} kPa."
    for i in range(85)
)
MORE = " ".join(f"Note {i}: pump {i} in bay {i % 5} runs at {i * 11} rpm." for i in range(60))


def openai_client(url: str) -> OpenAI:
    return OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)


class History:
    """A conversation as an app holds it: sent whole, every turn."""

    def __init__(self, model: str, system: str = "You answer in a few words.") -> None:
        self.model = model
        self.system = system
        self.turns: list[dict[str, str]] = []
        #: X-Autotune-Plan of the last OpenAI reply (a whole reply's header ends with what the
        #: engine reused, by its own count).
        self.plan = ""

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "system", "content": self.system}, *self.turns]

    def openai(self, url: str, text: str, **extra: Any) -> str:
        self.turns.append({"role": "user", "content": text})
        raw = openai_client(url).chat.completions.with_raw_response.create(
            model=self.model,
            messages=self.messages(),  # type: ignore[arg-type]
            max_tokens=extra.pop("max_tokens", 6),
            temperature=0,
            **extra,
        )
        self.plan, reply = raw.headers.get("x-autotune-plan", ""), raw.parse()
        return self._answered(reply.choices[0].message.content or "")

    def ollama(self, url: str, text: str) -> str:
        self.turns.append({"role": "user", "content": text})
        reply = ollama.Client(host=url, timeout=300).chat(
            model=self.model,
            messages=self.messages(),
            options={"num_predict": 6, "temperature": 0},
        )
        return self._answered(reply.message.content or "")

    def anthropic(self, url: str, text: str, **extra: Any) -> str:
        self.turns.append({"role": "user", "content": text})
        client = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=300)
        reply = client.messages.create(
            model=self.model,
            system=self.system,
            messages=self.turns,  # type: ignore[arg-type]
            max_tokens=extra.pop("max_tokens", 6),
            **extra,
        )
        return self._answered("".join(b.text for b in reply.content if b.type == "text"))

    def _answered(self, text: str) -> str:
        self.turns.append({"role": "assistant", "content": text})
        return text


def last_run(url: str) -> dict[str, Any]:
    (run,) = httpx.get(url + "/api/requests", params={"limit": 1}, timeout=30).json()["requests"]
    return dict(run)


def cached_share(run: dict[str, Any]) -> float:
    """The share of the prompt the engine took from its cache (the rest it computed)."""
    return (run["cached_tokens"] or 0) / run["prompt_tokens"]


def autotune(*args: str, env: dict[str, str]) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "autotune", *args], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _running(url: str) -> list[str]:
    running = httpx.get(url + "/api/running_models", timeout=30).json()["models"]
    return [m["name"] for m in running]


def _wait(what: str, ready: Callable[[], bool], seconds: float = 120) -> None:
    """Poll, never sleep a guess: when a background step lands depends on the machine."""
    deadline = time.monotonic() + seconds
    while not ready():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_a_whole_history_comes_back_after_an_unload_a_restart_and_a_reload(
    serve_process: Callable[..., Any],
) -> None:
    """Issue 19's acceptance on Gemma: official clients, no header, ≥ 90 % of the prompt
    from cache after a keep-alive unload (the greedy answer the warm engine gave, again), a
    SIGTERM restart (through the Ollama face, the model warm-started before the request),
    an unload by an Ollama client (then through the Anthropic face) and a reload to a bigger
    context; the file a
    grown conversation replaces is dropped; the KV folder is the user's alone and
    `autotune kv rm --all` empties it."""
    chat = History(GEMMA)
    server = serve_process(AUTOTUNE_KEEP_ALIVE="2").start()
    chat.openai(server.url, f"Here is a manual.\n{MANUAL}\nWhich valve opens at 30 kPa?")
    assert last_run(server.url)["prompt_tokens"] >= 2000
    warm = History(GEMMA)
    warm.turns = list(chat.turns)
    answer = warm.openai(server.url, "And which one opens at 33 kPa?")  # the engine holds it
    # Idle past the keep-alive: the worker unloads (its slot saved first).
    _wait("the keep-alive never unloaded the model", lambda: GEMMA not in _running(server.url))
    assert chat.openai(server.url, "And which one opens at 33 kPa?") == answer
    run = last_run(server.url)
    assert cached_share(run) >= 0.9 and run["kv"] == "restored", run
    server.stop()

    server = serve_process(AUTOTUNE_KEEP_ALIVE="-1").start()
    # The warm start loads the model the last serve held when it stopped, before any request.
    _wait("the warm start never loaded the model", lambda: GEMMA in _running(server.url))
    chat.ollama(server.url, "And which valve opens at 36 kPa?")
    run = last_run(server.url)
    assert cached_share(run) >= 0.9 and not run["reloaded"], run
    # Unloaded as Ollama's clients do it (an empty chat with keep_alive 0), then back.
    ollama.Client(host=server.url).chat(model=GEMMA, messages=[], keep_alive=0)
    assert GEMMA not in _running(server.url)
    chat.anthropic(server.url, "And which one closes at 40 kPa?")
    assert cached_share(last_run(server.url)) >= 0.9

    # A reply allowed 5,000 tokens beside ~2,100 of prompt needs a bigger context: a reload.
    chat.openai(server.url, "And at 39 kPa?", max_tokens=5_000, stop=[" ", "."])
    run = last_run(server.url)
    assert run["reloaded"] and run["n_ctx"] > 4096 and cached_share(run) >= 0.9, run
    # A third longer: saved again after the reply, the newer file replacing the first.
    chat.openai(server.url, f"More notes.\n{MORE}\nWhich pump runs at 110 rpm?")
    server.stop()

    listed = autotune("kv", "ls", "--json", env=server.env)["files"]
    # The grown conversation's newer file replaced the first one's: one file is left.
    (saved,) = listed
    assert saved["tokens"] >= 3000 and saved["model"] == GEMMA
    assert saved["preview"].startswith("system: You answer in a few words.")
    kv_dir = Path(server.env["AUTOTUNE_HOME"]) / "kv"
    assert stat.S_IMODE(kv_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((kv_dir / saved["filename"]).stat().st_mode) == 0o600
    assert autotune("kv", "rm", "--all", "--json", env=server.env) == {"removed": {"*": 1}}
    assert autotune("kv", "ls", "--json", env=server.env)["files"] == []
    assert list(kv_dir.glob("*.bin")) == []


def test_a_shared_preamble_and_a_resume_on_the_bundled_model(
    serve_process: Callable[..., Any],
) -> None:
    """SmolLM2: a session with a long preamble (an agent's system prompt), then after a
    restart a second session with the same preamble prefills at most a tenth of it, and
    the first session's next turn comes back at ≥ 90 % with the warm engine's greedy answer."""
    tools = "\n".join(
        f"- tool_{i}(path, mode): reads the file at path in mode {i % 3} and returns lines."
        for i in range(45)
    )
    preamble = f"You are a coding agent. You may call these tools:\n{tools}\nAnswer briefly."
    first = History(SMOL, system=preamble)
    server = serve_process().start()
    first.openai(server.url, "List the files in src.")
    preamble_tokens = last_run(server.url)["prompt_tokens"]
    assert preamble_tokens >= 1000
    warm = History(SMOL, system=preamble)
    warm.turns = list(first.turns)
    answer = warm.openai(server.url, "Now open the first one.")  # the engine holds it
    server.stop()

    server = serve_process().start()
    second = History(SMOL, system=preamble)
    second.openai(server.url, "What does the README say about installing?")
    run = last_run(server.url)
    assert run["prompt_tokens"] - run["cached_tokens"] <= 0.1 * preamble_tokens, run
    reused = f"kv_cache=restored; kv_reused={run['cached_tokens']}/{run['prompt_tokens']}"
    assert reused in second.plan  # the header says what the engine itself reused
    # The first session's next turn: from disk, and the greedy answer the warm engine gave.
    assert first.openai(server.url, "Now open the first one.") == answer
    assert cached_share(last_run(server.url)) >= 0.9
    server.stop()


Tokens = list[tuple[str, dict[str, float]]]


def greedy(url: str, messages: list[dict[str, str]]) -> Tokens:
    """A greedy reply, token by token, each with the engine's top-2 log-probabilities."""
    reply = openai_client(url).chat.completions.create(
        model=GEMMA,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = (reply.choices[0].logprobs.content or []) if reply.choices[0].logprobs else []
    return [(t.token, {c.token: c.logprob for c in t.top_logprobs}) for t in content]


def same_or_near_tie(alone: Tokens, together: Tokens) -> bool:
    """The same tokens, or the same up to a token where the lone run's two best choices were
    a near-tie (within 0.25 nats) and the concurrent run took the other: batched decoding
    rounds differently on the CPU, so a tie may fall either way. Another conversation's KV
    would change the answer with confidence, not at a tie."""
    for (mine, top), (theirs, _) in zip(alone, together, strict=False):
        if mine != theirs:
            return theirs in top and abs(top[mine] - top[theirs]) < 0.25
    return len(alone) == len(together)


def test_two_conversations_at_once_get_what_they_get_alone(start_server: Any) -> None:
    """llama.cpp issue #27148 reports its host-RAM prompt cache restoring an unrelated
    conversation under concurrent load. Three conversations on two slots (a small RAM cache,
    so their second turns come back from disk or RAM), sent at once, answer greedily as the
    same requests do one at a time on a fresh engine — or part at a near-tie, said so."""
    notes = " ".join(f"Note {i}: pump {i} runs at {i * 11} rpm." for i in range(25))
    openings = [f"Log of site {k}: " + notes.replace("pump", f"pump-{k}") for k in range(3)]

    def run(server: BackgroundServer, parallel: bool) -> list[Tokens]:
        chats = [History(GEMMA, system=f"You keep the log of site {k}.") for k in range(3)]
        replies: list[Tokens] = []
        for asks in ([f"{t}\nWhich pump runs at 55 rpm?" for t in openings], ["And 220?"] * 3):

            def ask(k: int, asks: list[str] = asks) -> Tokens:
                chats[k].turns.append({"role": "user", "content": asks[k]})
                tokens = greedy(server.url, chats[k].messages())
                chats[k].turns.append({"role": "assistant", "content": "Noted."})
                return tokens

            if parallel:
                with ThreadPoolExecutor(max_workers=3) as pool:
                    replies += list(pool.map(ask, range(3)))
            else:
                replies += [ask(k) for k in range(3)]
        return replies

    alone = run(start_server(max_concurrent=2, prompt_cache_mib=8), parallel=False)
    together = run(start_server(max_concurrent=2, prompt_cache_mib=8), parallel=True)
    assert all(len(r) > 0 for r in alone)
    for one, both in zip(alone, together, strict=True):
        assert same_or_near_tie(one, both), (one, both)


@pytest.mark.parametrize("cache_mib", [4, None], ids=["ram-cache-too-small", "ram-cache-default"])
def test_four_conversations_taking_turns(start_server: Any, cache_mib: int | None) -> None:
    """With llama.cpp's host-RAM prompt cache bounded below what four conversations need,
    each turn still reuses its whole previous prompt: the disk tier holds the rest. With the
    cache autotune sizes itself, its turns come from RAM, as raw llama.cpp's do (parity)."""
    server: BackgroundServer = start_server(prompt_cache_mib=cache_mib)
    chats = [History(GEMMA) for _ in range(4)]
    previous: dict[int, int] = {}
    for rnd in range(3):
        for k, chat in enumerate(chats):
            notes = " ".join(f"Note {k}.{i}: item {i} weighs {i * k + 3} g." for i in range(40))
            chat.openai(server.url, (f"Conversation {k}. {notes}\n" if rnd == 0 else "") + "Item?")
            run = last_run(server.url)
            if rnd:  # all of the previous prompt, less what a file may lag (under a block)
                assert run["cached_tokens"] >= previous[k] - 64, run
            previous[k] = run["prompt_tokens"]
    runs = httpx.get(server.url + "/api/requests", params={"limit": 8}, timeout=30).json()
    outcomes = {r["kv"] for r in runs["requests"]}
    assert outcomes <= {"restored", "hit"} and (cache_mib is None or "restored" in outcomes)


def test_a_damaged_kv_file_is_removed_and_the_turn_answered(
    start_server: Any, tmp_path: Path
) -> None:
    # No host-RAM prompt cache: the conversation can only come back from its file.
    server: BackgroundServer = start_server(prompt_cache_mib=0)
    first = History(GEMMA)
    first.openai(server.url, "The first conversation. " + MANUAL[:1500])
    kv_dir = tmp_path / "serve-home" / "kv"
    _wait("the turn was never saved", lambda: len(list(kv_dir.glob("*.bin"))) == 1)
    History(GEMMA).openai(server.url, "Another one. " + MANUAL[1500:3000])  # takes the slot
    saved = min(kv_dir.glob("*.bin"), key=os.path.getmtime)
    saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    assert first.openai(server.url, "Still there?") is not None
    events = httpx.get(server.url + "/api/events", timeout=30).json()["events"]
    removed = [e for e in events if e["kind"] == "kv_file_removed"]
    assert removed and removed[0]["detail"]["reason"]
    assert not saved.exists()


def test_twenty_conversations_at_concurrency_two(start_server: Any) -> None:
    server: BackgroundServer = start_server(max_concurrent=2, max_queued=32)

    def one(i: int) -> int:
        History(GEMMA).openai(server.url, f"Say the number {i}.", max_tokens=2)
        return 1

    with ThreadPoolExecutor(max_workers=20) as pool:
        assert sum(pool.map(one, range(20))) == 20
