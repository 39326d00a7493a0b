"""An app's background task never holds up the person's next turn, on the real engine.

The task is sent as Open WebUI sends its title, tags and follow-up tasks: Ollama's ``/api/chat``,
not streamed, no token limit. Its prompt makes Gemma-3-270M (a base model) repeat itself, so
left alone it would run until the runaway guard stops it (about 2,000 characters later). The
person's turn (streamed) arrives while it runs: the task yields its place at its next token,
says so (``done_reason: length``, ``priority=yielded`` in its plan), and the turn is answered.
Only order and what each reply says are checked, never durations.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from autotune.ground.config import Settings
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer

pytestmark = pytest.mark.engine

GEMMA = "gemma3:270m"
#: Left alone, the loop reaches the runaway guard's 2,048 characters after ~530 tokens.
PROMPT = "Repeat after me: internationalization, internationalization,"


def test_a_background_task_yields_to_the_persons_turn(tmp_path: Path) -> None:
    settings = Settings(
        home=tmp_path / "home", backend="embedded", memory_budget=4 * 1024**3, recall=False
    )
    with BackgroundServer(create_app(settings)) as server:
        api = httpx.Client(base_url=server.url, timeout=600)
        task: dict[str, Any] = {}

        def background() -> None:
            reply = api.post(
                "/api/chat",
                json={
                    "model": GEMMA,
                    "stream": False,
                    "messages": [{"role": "user", "content": PROMPT}],
                    "options": {"temperature": 0},
                },
            )
            task.update(reply.json(), plan=reply.headers.get("X-Autotune-Plan", ""))

        thread = threading.Thread(target=background)
        thread.start()
        deadline = time.monotonic() + 300
        while api.get("/health").json()["queue"]["running"] == 0:  # admitted: it holds the place
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        pieces = []
        body = {
            "model": GEMMA,
            "messages": [{"role": "user", "content": "Hello"}],
            "options": {"temperature": 0, "num_predict": 4},
        }
        with api.stream("POST", "/api/chat", json=body) as turn:
            assert turn.status_code == 200
            assert "priority" not in turn.headers["X-Autotune-Plan"]  # a person's turn
            pieces = [line for line in turn.iter_lines() if line]
        thread.join(timeout=600)
        assert task["done"] and task["done_reason"] == "length", task
        assert "priority=yielded" in task["plan"], task["plan"]
        assert '"done":true' in pieces[-1].replace(" ", "")
        records = api.get("/api/requests").json()["requests"]  # newest first
        assert [r["status"] for r in records] == ["ok", "ok"]
        assert (
            "priority=yielded" in records[1]["plan"] and "runaway=stopped" not in records[1]["plan"]
        )
