"""A reply that runs away on the real engine is stopped, and says so.

Gemma-3-270M (a base model; its GGUF has no chat template, so llama.cpp formats the chat as
ChatML) asked to repeat a phrase writes the whole turn again and again — ``<|im_end|>``,
``<|im_start|>user``, the phrase — with nothing to end it but the context. The request sets no
token limit, as Open WebUI's background tasks do; autotune stops the reply once the same text
has come back over AUTOTUNE_RUNAWAY_CHARS characters (pipeline/runaway.py; 512 here, to keep
the test short: Gemma-3-270M decodes only ~12 tokens/s over 500 tokens on this machine), long
before the context is full.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from autotune.ground.config import Settings
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer

pytestmark = pytest.mark.engine

GEMMA = "gemma3:270m"
#: Long words: more characters a token, so the loop reaches the span in fewer tokens.
PROMPT = "Repeat after me: internationalization, internationalization,"


def test_a_looping_reply_without_a_limit_is_stopped(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home",
        backend="embedded",
        memory_budget=4 * 1024**3,
        recall=False,
        runaway_chars=512,  # the default 2,048 takes ~530 tokens here; the rule is the same
    )
    with BackgroundServer(create_app(settings)) as server:
        reply = httpx.post(
            server.url + "/v1/chat/completions",
            json={
                "model": GEMMA,
                "messages": [{"role": "user", "content": PROMPT}],
                "temperature": 0,
            },
            timeout=600,
        )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        choice = body["choices"][0]
        assert choice["finish_reason"] == "length"
        plan = reply.headers["X-Autotune-Plan"]
        assert "runaway=stopped" in plan, plan
        text = choice["message"]["content"]
        assert 512 <= len(text) < 2048  # stopped soon after the span, far from the context
        (record,) = httpx.get(server.url + "/api/requests", timeout=30).json()["requests"]
        assert "runaway=stopped" in record["plan"]  # telemetry keeps it too
