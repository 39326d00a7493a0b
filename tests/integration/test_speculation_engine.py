"""Speculative decoding on the real embedded engine: greedy answers are unchanged by it, and a
tuned model's load, plan header and telemetry carry it.

Every mode runs on a fresh engine with the prompts in the same order: llama.cpp's greedy text
depends on how tokens were batched (a warm prompt cache alone changed 5 of 10 answers of the
bundled model here), so only engines in the same state are compared.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from autotune.backends.embedded import EmbeddedBackend
from autotune.bench.texts import edit_prompts, quote_prompts
from autotune.ground.config import Settings
from autotune.ground.tuned import Candidate, SpecChoice, Trial
from autotune.ground.types import ChatRequest, LoadSettings
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer
from autotune.store.db import Database
from autotune.store.tuning import TuningStore

pytestmark = pytest.mark.engine

#: Five prompts: two that copy their input (where drafts are accepted) and three that do not.
PROMPTS = [
    *(m[0]["content"] for m in edit_prompts(1)),
    *(m[0]["content"] for m in quote_prompts(1)),
    "Name three colours.",
    "What is 12 times 12?",
    "Write one sentence about the sea.",
]
MAX_TOKENS = 48


async def _answers(
    backend: EmbeddedBackend, model: str, load: LoadSettings, prompts: list[str] = PROMPTS
) -> list[tuple[str, int, int]]:
    """Each prompt's greedy answer and the tokens the engine drafted and accepted for it, on
    a freshly loaded engine."""
    await backend.unload(model)
    out = []
    for prompt in prompts:
        request = ChatRequest(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            params={"temperature": 0, "max_tokens": MAX_TOKENS, "seed": 1},
            load=load,
        )
        text, timings = "", {}
        async for chunk in backend.stream_chat(request):
            for choice in chunk.data.get("choices") or []:
                text += (choice.get("delta") or {}).get("content") or ""
            if chunk.stats is not None:
                timings = chunk.stats.raw.get("timings") or {}
        out.append(
            (text, int(timings.get("draft_n") or 0), int(timings.get("draft_n_accepted") or 0))
        )
    return out


@pytest.mark.parametrize(
    ("model", "modes"),
    [("smollm2:135m", ("ngram_mod", "ngram_simple")), ("gemma3:270m", ("ngram_mod",))],
)
def test_greedy_text_is_identical_with_and_without_speculation(
    model: str, modes: tuple[str, ...]
) -> None:
    async def main() -> dict[str, list[tuple[str, int, int]]]:
        backend = EmbeddedBackend(memory_budget=4 * 1024**3, threads=2)
        try:
            found = {}
            for mode in (None, *modes):
                load = LoadSettings(n_ctx=2048, speculative=mode)
                found[mode or "none"] = await _answers(backend, model, load)
            return found
        finally:
            await backend.aclose()

    found = asyncio.run(main())
    plain = [text for text, _, _ in found["none"]]
    assert all(plain) and not any(drafted for _, drafted, _ in found["none"])
    for mode in modes:
        assert [text for text, _, _ in found[mode]] == plain, mode
        # The copying prompts were answered with drafts: speculation really ran.
        assert sum(accepted for _, _, accepted in found[mode][:2]) > 0, mode


def test_a_draft_model_loads_beside_the_target_and_drafts_for_it() -> None:
    """The bundled model drafting for itself (the same vocabulary by construction; a draft
    this size cannot pay): the draft path loads, its drafts are mostly accepted, and the
    engine holds more memory. Its greedy text is not compared: with a draft model llama.cpp
    verifies 4-token batches, and the batching changed 1 of the 5 answers of the test above
    here (a near-tie late in a copied file), the same kind of change a warm prompt cache
    makes. The two copying prompts are enough to see drafts."""

    async def main() -> tuple[list[tuple[str, int, int]], int, int]:
        backend = EmbeddedBackend(memory_budget=4 * 1024**3, threads=2)
        try:
            meta = await backend.model_meta("smollm2:135m")
            await backend.load(meta.name, LoadSettings(n_ctx=1024))
            plain_rss = await _rss(backend)
            load = LoadSettings(n_ctx=1024, speculative="draft", draft_path=meta.path)
            drafted = await _answers(backend, meta.name, load, PROMPTS[:2])
            return drafted, plain_rss, await _rss(backend)
        finally:
            await backend.aclose()

    drafted, plain_rss, draft_rss = asyncio.run(main())
    assert all(text for text, _, _ in drafted)
    n_drafted = sum(n for _, n, _ in drafted)
    n_accepted = sum(a for _, _, a in drafted)
    assert n_drafted > 0 and n_accepted > n_drafted / 2  # it drafts what the model would say
    assert draft_rss > plain_rss  # a second model and its KV cache


async def _rss(backend: EmbeddedBackend) -> int:
    (running,) = await backend.running_models()
    return int(running.size_bytes or 0)


def _runs(url: str, count: int) -> list[dict[str, object]]:
    """The server's last requests, once ``count`` are recorded (a run records itself just
    after its reply is sent)."""
    deadline = time.monotonic() + 30
    while True:
        runs = httpx.get(url + "/api/requests").json()["requests"]
        if len(runs) >= count or time.monotonic() > deadline:
            return list(runs)
        time.sleep(0.2)


def test_a_tuned_model_loads_with_its_mode_and_the_header_and_telemetry_say_so(
    tmp_path: Path,
) -> None:
    settings = Settings(home=tmp_path / "serve-home", backend="embedded", memory_budget=4 * 1024**3)
    store = TuningStore(Database(settings.db_path))
    trial = Trial(candidate=Candidate())
    choice = SpecChoice("ngram_mod", "measured", copy_gain=0.5, chat_gain=0.0)
    store.save(
        "embedded",
        "smollm2:135m",
        "balanced",
        trial,
        trial,
        defaults_best=True,
        trials=1,
        speculation=choice,
    )
    store.db.close()
    with BackgroundServer(create_app(settings)) as server:
        body = {
            "model": "smollm2:135m",
            "max_tokens": 64,
            "temperature": 0,
            "messages": edit_prompts(1, offset=2)[0],
        }
        reply = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=300)
        assert reply.status_code == 200, reply.text
        assert "spec=ngram_mod" in reply.headers["X-Autotune-Plan"]
        again = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=300)
        assert "spec=ngram_mod" in again.headers["X-Autotune-Plan"]
        runs = _runs(server.url, 2)
        models = httpx.get(server.url + "/api/running_models").json()["models"]
    assert [r["reloaded"] for r in reversed(runs)] == [True, False]  # one load, no reload
    # llama.cpp reports draft counts once it drafted (ngram_mod learns from earlier output).
    drafted = [r for r in runs if r["draft_tokens"]]
    assert drafted and all(0 <= r["draft_accepted"] <= r["draft_tokens"] for r in drafted)
    spec = [d for d in runs[0]["decisions"] if d["key"] == "spec"]
    assert spec == [] or spec[0]["value"] == "ngram_mod"
    first = next(r for r in runs if r["reloaded"])
    assert any(
        d["key"] == "spec" and d["reason"].startswith("measured") for d in first["decisions"]
    )
    assert models[0]["settings"]["speculative"] == "ngram_mod"
