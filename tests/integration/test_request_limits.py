"""A request over ``AUTOTUNE_MAX_REQUEST_SECONDS``, or cancelled by the operator, is stopped on
the real engine: the client is told why, and llama.cpp's slot stops generating (read from the
worker's own ``/slots``). ``GET /api/requests`` lists what runs, without prompt text.

Gemma-3-270M asked to repeat a phrase loops until its token limit (see
tests/integration/test_runaway_engine.py): each request here would run for minutes unless
stopped. Outcomes are asserted, never durations.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from autotune.ground.config import Settings
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer

pytestmark = pytest.mark.engine

GEMMA = "gemma3:270m"
PROMPT = "Repeat after me: internationalization, internationalization,"
#: Tokens asked for: left to run, Gemma-3-270M takes minutes on two cores (~12-40 tokens/s).
LIMIT = 4000
#: How long a stopped generation may take to leave its slot. Only a generation that was not
#: stopped takes longer: it runs on to LIMIT tokens, several times this.
IDLE_S = 30


def _slots(server: BackgroundServer) -> list[dict[str, Any]]:
    """llama-server's own ``/slots`` of the worker that holds Gemma."""
    engine = server.app.state.pipeline.backends.backends["embedded"]
    (worker,) = [w for w in engine._workers.values() if w.name == GEMMA]
    headers = {"Authorization": f"Bearer {worker.api_key}"} if worker.api_key else {}
    reply = httpx.get(worker.url + "/slots", headers=headers, timeout=30)
    reply.raise_for_status()
    slots: list[dict[str, Any]] = reply.json()
    return slots


def _engine_idle(server: BackgroundServer) -> bool:
    """No slot generates any more, within IDLE_S (see there)."""
    deadline = time.monotonic() + IDLE_S
    while any(s["is_processing"] for s in _slots(server)):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_an_operator_cancel_and_the_time_limit_stop_the_engine_too(tmp_path: Path) -> None:
    """Issue 22.5 — before: one request could hold the only slot for minutes (the client gave
    up at 150 s, the engine went on), with no limit and no way to see or cancel it."""
    settings = Settings(
        home=tmp_path / "home", backend="embedded", memory_budget=4 * 1024**3, recall=False
    )
    messages: Any = [{"role": "user", "content": PROMPT}]
    with BackgroundServer(create_app(settings)) as server:
        url = server.url
        oai = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
        outcome: dict[str, Any] = {}
        first = threading.Event()

        def stream() -> None:
            try:
                for _ in oai.chat.completions.create(
                    model=GEMMA, messages=messages, max_tokens=LIMIT, temperature=0, stream=True
                ):
                    first.set()
                outcome["ended"] = "finished"
            except openai.APIError as exc:
                outcome["ended"] = exc
            finally:
                first.set()

        reader = threading.Thread(target=stream, daemon=True)
        reader.start()
        assert first.wait(300) and "ended" not in outcome
        listing = httpx.get(url + "/api/requests", timeout=30).json()["running"]
        (entry,) = listing
        assert entry["model"] == GEMMA and entry["face"] == "/v1/chat/completions"
        assert entry["state"] == "answering" and entry["tokens"] >= 1
        assert "internationalization" not in json.dumps(listing)  # never the prompt
        cancel = httpx.delete(f"{url}/api/requests/{entry['id']}", timeout=30)
        assert cancel.status_code == 202, cancel.text
        reader.join(120)
        assert isinstance(outcome["ended"], openai.APIError)
        assert "cancelled by the operator" in str(outcome["ended"])
        assert httpx.get(url + "/api/requests", timeout=30).json()["running"] == []
        assert _engine_idle(server), "the engine kept generating for the cancelled request"
        gone = httpx.delete(f"{url}/api/requests/{entry['id']}", timeout=30)
        assert gone.status_code == 404 and "No running request" in gone.json()["error"]["message"]

        # The limit set low on the running server, as AUTOTUNE_MAX_REQUEST_SECONDS=1 would
        # (Gemma is loaded now: the request is stopped while it generates).
        server.app.state.pipeline.running.max_seconds = 1
        with pytest.raises(openai.APIStatusError) as refused:
            oai.chat.completions.create(
                model=GEMMA, messages=messages, max_tokens=LIMIT, temperature=0
            )
        assert refused.value.status_code == 504
        assert "AUTOTUNE_MAX_REQUEST_SECONDS" in str(refused.value)
        assert _engine_idle(server), "the engine kept generating past the time limit"
        (last, *_) = httpx.get(url + "/api/requests", timeout=30).json()["requests"]
        # Stopped while generating ("error": the stop's reason) or, on a machine slow enough,
        # before its first token ("cancelled", as a client that leaves).
        assert last["status"] in ("error", "cancelled")
