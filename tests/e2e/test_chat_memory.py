"""Memory at session start: a new chat gets relevant notes from past conversations.

Real CLI processes, the real embedded engine and the real offline embedder (MiniLM).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.recall.embed import minilm_available

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(not minilm_available(), reason="the offline embedder is not installed"),
]

PAST = [
    {
        "id": "conv_sourdough",
        "title": "Reviving a sourdough starter",
        "messages": [
            {
                "role": "user",
                "content": "My sourdough starter smells like nail polish remover and "
                "barely rises. What should I do?",
            },
            {
                "role": "assistant",
                "content": "That acetone smell means it is hungry: discard most "
                "of it and feed it twice a day with equal weights of flour and water at room "
                "temperature until it doubles within eight hours.",
            },
        ],
    },
    {
        "id": "conv_k8s",
        "title": "Pod OOMKilled",
        "messages": [
            {"role": "user", "content": "My Kubernetes pod keeps getting OOMKilled."},
            {"role": "assistant", "content": "Raise the memory limit or find the leak."},
        ],
    },
]


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AUTOTUNE_BACKEND": "embedded", "AUTOTUNE_THREADS": "1", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "autotune", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
        input=stdin,
    )


def test_a_new_chat_recalls_a_relevant_past_conversation(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    history.write_text("\n".join(json.dumps(c) for c in PAST) + "\n")
    imported = cli("recall", "import", str(history), "--json")
    assert imported.returncode == 0, imported.stderr
    done = cli(
        "chat",
        "--verbose",
        "--max-tokens",
        "8",
        stdin="My bread starter smells of acetone again, how should I feed it?\n",
    )
    assert done.returncode == 0, done.stderr
    assert "memory: Reviving a sourdough starter" in done.stderr
    assert "Pod OOMKilled" not in done.stderr  # unrelated: below the threshold
    shown = json.loads(cli("recall", "search", "sourdough", "--json").stdout)
    assert any(h["conversation_id"] == "conv_sourdough" for h in shown["hits"])

    from autotune.store.conversations import ConversationStore
    from autotune.store.db import Database

    store = ConversationStore(Database(Path(os.environ["AUTOTUNE_HOME"]) / "autotune.db"))
    (new,) = [c for c in store.list() if c.id not in ("conv_sourdough", "conv_k8s")]
    conv = store.get(new.id)
    assert conv is not None and conv.system and "conv_sourdough" in conv.system
    assert [m.role for m in conv.messages] == ["user", "assistant"]
