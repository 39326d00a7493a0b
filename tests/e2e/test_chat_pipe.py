"""``autotune chat`` in a script: piped stdin, plain replies on stdout, telemetry afterwards.

A real subprocess on the real embedded engine with the bundled model, on one engine thread:
the machine's two cores are shared with other test runs, and llama.cpp's spinning threads
slow down badly when oversubscribed.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.chat.render import PlainRenderer
from autotune.chat.repl import Chat, ChatOptions
from autotune.ground.config import Settings
from autotune.runtime import open_runtime

pytestmark = pytest.mark.engine

ANSI = re.compile(r"\x1b\[")


def autotune(*args: str, stdin: str = "", timeout: float = 55) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "AUTOTUNE_BACKEND": "embedded",
        "AUTOTUNE_MEMORY_BUDGET": "2GiB",
        "AUTOTUNE_THREADS": "1",
        "AUTOTUNE_RECALL": "false",  # recall has its own tests (test_chat_memory.py)
    }
    return subprocess.run(
        [sys.executable, "-m", "autotune", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_piped_question_gets_a_plain_answer_and_exit_zero() -> None:
    done = autotune("chat", "--max-tokens", "12", stdin="What is the capital of France?\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), "no reply on stdout"
    assert not ANSI.search(done.stdout), "colours or cursor codes on stdout"
    assert "TTFT" not in done.stdout and "tok/s" not in done.stdout  # no footer on stdout
    assert "autotune chat" not in done.stdout  # the header goes to stderr
    header = re.search(r"conversation (conv_[0-9a-f]+)", done.stderr)
    assert header is not None and "engine embedded" in done.stderr

    # The turn was stored: the same conversation resumes with its history.
    again = autotune(
        "chat", "--conv-id", header.group(1), "--max-tokens", "4", "--verbose", stdin="And?\n"
    )
    assert again.returncode == 0, again.stderr
    assert f"resumed conversation {header.group(1)}" in again.stderr
    assert "plan: profile=balanced" in again.stderr and "TTFT" in again.stderr  # --verbose


def test_telemetry_holds_the_chat_runs_and_the_reload_a_longer_message_forced() -> None:
    """The first message loads a 2,048-token context; a ~1,900-token second message does not
    fit it, so the planner grows the context a bucket and the engine reloads the model."""
    long_message = "Repeat the last word: " + "alpha beta gamma delta " * 460
    done = autotune("chat", "--max-tokens", "8", stdin=f"Say hi.\n{long_message}\n")
    assert done.returncode == 0, done.stderr

    runs = json.loads(autotune("telemetry", "--json").stdout)["runs"]
    chat_runs = sorted((r for r in runs if r["source"] == "chat"), key=lambda r: r["started_at"])
    assert len(chat_runs) == 2 and all(r["status"] == "ok" for r in chat_runs)
    first, second = chat_runs
    assert first["conversation_id"] == second["conversation_id"]
    assert second["n_ctx"] > first["n_ctx"] == 2048
    assert second["prompt_tokens"] > 2048 - 256 - 8 > first["prompt_tokens"]
    for run in chat_runs:
        timings = run["engine_timings"]["timings"]  # llama.cpp's own counters
        assert timings["prompt_n"] >= 1 and timings["prompt_ms"] > 0

    events = json.loads(autotune("telemetry", "--events", "--json").stdout)["events"]
    kinds = [e["kind"] for e in events if e["model"] == "smollm2:135m"]
    assert "load" in kinds and "reload" in kinds
    reload = next(e for e in events if e["kind"] == "reload")
    assert reload["detail"]["n_ctx"] == second["n_ctx"]
    assert "n_ctx 2048" in reload["detail"]["reason"]


def test_an_unknown_model_is_one_line_and_exit_one() -> None:
    done = autotune("chat", "--model", "smollm2:13", stdin="hi\n", timeout=30)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "Unknown model 'smollm2:13'" in done.stderr and "smollm2:135m" in done.stderr
    assert done.stdout == ""


async def test_stopping_mid_stream_cancels_the_run_and_the_chat_goes_on(tmp_path: Path) -> None:
    """What Ctrl-C does during a reply, in-process: the stop arrives with the first words."""
    settings = Settings(
        home=tmp_path / "home", backend="embedded", memory_budget=2 * 1024**3, threads=1
    )
    runtime = await open_runtime(settings, start_sampler=False)
    out, err = io.StringIO(), io.StringIO()
    chat = Chat(runtime, ChatOptions(max_tokens=200), interactive=False, out=out, err=err)
    try:
        assert await chat.open() == 0

        class StopAtFirstWords(PlainRenderer):
            def feed(self, text: str) -> None:
                super().feed(text)
                if text.strip():
                    chat._on_sigint()  # what the SIGINT handler calls

        chat._renderer = lambda: StopAtFirstWords(out, err)  # type: ignore[method-assign]
        await chat.handle_line("Count from 1 to 100, separated by commas.")
        stopped = runtime.pipeline.recent[-1]
        assert stopped.status == "cancelled" and stopped.source == "chat"
        assert out.getvalue().strip()  # the words that arrived stay on screen
        assert "stopped" in err.getvalue()
        assert (
            runtime.store.messages(chat.state.conversation_id) == []
        )  # a stopped turn is not kept

        chat._renderer = lambda: PlainRenderer(out, err)  # type: ignore[method-assign]
        await chat.handle_line("Say hi.")
        answered = runtime.pipeline.recent[-1]
        assert answered.status == "ok" and answered.completion_tokens
        assert chat.state.metrics.stopped == 1 and chat.state.metrics.requests == 2
    finally:
        await chat.close()
        await runtime.aclose()
