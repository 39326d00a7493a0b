"""``autotune chat`` in a real terminal (tmux): a streamed reply, slash commands, Ctrl-C, a crash.

The chat runs on the real embedded engine with the bundled model, in a private tmux server
(its own socket, no config file), on one engine thread because the two cores are shared with
other test runs. Waits poll the screen until a deadline; nothing asserts on timing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

pytestmark = [
    pytest.mark.engine,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

PROMPT = "you ›"
FOOTER = re.compile(r"TTFT [\d,]+ ms")


class Terminal:
    """One tmux session running a command; the screen is read with ``capture-pane``."""

    def __init__(self, socket: Path, command: str) -> None:
        self.socket = socket
        self.run("new-session", "-d", "-x", "120", "-y", "40", command)

    def run(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-S", str(self.socket), "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-J", "-S", "-500")

    def send(self, *keys: str) -> None:
        self.run("send-keys", *keys)

    def type(self, text: str) -> None:
        self.run("send-keys", "-l", text)
        self.run("send-keys", "Enter")

    def wait(self, condition: Callable[[str], bool], what: str, timeout: float = 40) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if condition(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"gave up waiting for {what}; the screen:\n{self.screen()}")

    def wait_for(self, text: str, timeout: float = 40) -> str:
        return self.wait(lambda s: text in s, repr(text), timeout)

    def pane_pid(self) -> int:
        return int(self.run("display-message", "-p", "#{pane_pid}").strip())

    def kill(self) -> None:
        self.run("kill-server")


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Callable[..., tuple[Terminal, Path]]]:
    started: list[Terminal] = []

    def start(*args: str) -> tuple[Terminal, Path]:
        status = tmp_path / "exit-status"
        env = {
            "AUTOTUNE_HOME": os.environ["AUTOTUNE_HOME"],
            "HOME": os.environ["HOME"],
            "AUTOTUNE_BACKEND": "embedded",
            "AUTOTUNE_MEMORY_BUDGET": "2GiB",
            "AUTOTUNE_THREADS": "1",
            "AUTOTUNE_RECALL": "false",  # recall has its own tests (test_chat_memory.py)
        }
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        cli = " ".join(shlex.quote(a) for a in (sys.executable, "-m", "autotune", *args))
        command = f"env {exports} {cli}; echo EXIT=$? > {shlex.quote(str(status))}"
        term = Terminal(tmp_path / "tmux.sock", command)
        started.append(term)
        return term, status

    yield start
    for term in started:
        term.kill()


def _wait_exit(status: Path, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if status.exists() and status.read_text().strip():
            return status.read_text().strip()
        time.sleep(0.2)
    raise AssertionError("the chat did not exit")


def test_chat_streams_a_reply_switches_profile_exports_and_quits(
    terminal: Callable[..., tuple[Terminal, Path]],
) -> None:
    term, status = terminal("chat", "--max-tokens", "12")
    header = term.wait_for(PROMPT)
    conv = re.search(r"conversation (conv_[0-9a-f]+)", header)
    assert conv is not None, header
    assert "model smollm2:135m" in header and "engine embedded" in header
    assert "profile balanced" in header

    term.type("What is the capital of France?")
    screen = term.wait(lambda s: len(FOOTER.findall(s)) == 1, "the first reply's footer")
    after = screen.split("What is the capital of France?", 1)[1]
    reply = after.split("TTFT", 1)[0].strip()
    assert reply, f"no reply text before the footer:\n{screen}"
    assert re.search(r"ctx \d+/2,048 tokens", after), after  # context used / loaded context

    term.type("/profile fast")
    term.wait_for("profile fast: Smallest context")

    # The engine dies under the chat: it says so at once, and the next message reloads it.
    worker = next(
        p
        for p in psutil.Process(term.pane_pid()).children(recursive=True)
        if "autotune.backends.engine_worker" in " ".join(p.cmdline())
    )
    worker.kill()
    term.wait_for("smollm2:135m was unloaded unexpectedly")
    term.type("Name a colour.")
    screen = term.wait(lambda s: len(FOOTER.findall(s)) == 2, "the second reply's footer")
    assert "reloading smollm2:135m" in screen
    assert "model loaded" in screen.split("Name a colour.", 1)[1]

    term.type("/export")
    screen = term.wait_for("Exported 4 messages to")
    exported = Path(os.environ["AUTOTUNE_HOME"]) / "exports" / f"{conv.group(1)}.md"
    assert str(exported) in screen
    text = exported.read_text()
    assert "## User\n\nWhat is the capital of France?" in text
    assert "## User\n\nName a colour." in text and text.count("## Assistant") == 2
    assert "- profile: fast" in text

    term.type("/quit")
    assert _wait_exit(status) == "EXIT=0"


def test_ctrl_c_stops_the_reply_not_the_chat_and_ctrl_d_leaves(
    terminal: Callable[..., tuple[Terminal, Path]],
) -> None:
    term, status = terminal("chat", "--max-tokens", "400")
    term.wait_for(PROMPT)
    term.type("Count from 1 to 300, separated by commas.")
    term.wait_for("thinking")  # the request is under way (loading the model, then streaming)
    term.send("C-c")
    term.wait_for("stopped (this turn is not saved)")
    term.wait(lambda s: s.rstrip().endswith(PROMPT), "the prompt after the stop")

    term.type("/metrics")
    screen = term.wait_for("requests: 1 (1 stopped, 0 failed")
    assert "Traceback" not in screen

    term.send("C-d")
    assert _wait_exit(status) == "EXIT=0"
