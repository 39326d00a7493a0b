"""Runs the real Claude Code and Codex CLIs against a server, and records what they send.

``make agents`` installs both from the npm registry into ``.agents/`` (pinned versions, no
install scripts run). Each runs non-interactively, with only a base URL, a key and a model name:

- Claude Code: ``claude -p PROMPT --model MODEL``, with ``ANTHROPIC_BASE_URL`` and
  ``ANTHROPIC_API_KEY`` in its environment;
- Codex: ``codex exec -c openai_base_url="URL/v1" -m MODEL PROMPT``, with ``OPENAI_API_KEY``
  (Codex 0.171 ignores ``OPENAI_BASE_URL``; the ``openai_base_url`` setting is its base URL).

Each gets an empty ``HOME`` and a fresh git repository as its working folder (Codex runs only
inside one), and nothing else: no variable that changes what they do. In this closed sandbox
their attempts to reach their vendors fail at once (no name resolves), which costs nothing.

:class:`Recorder` wraps an ASGI app and keeps every exchange: the request (method, path, the
headers that say who sent it, the JSON body) and the answer's status and first bytes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "AGENTS_DIR",
    "AgentRun",
    "Exchange",
    "Recorder",
    "agents_missing",
    "run_claude",
    "run_codex",
]

ROOT = Path(__file__).resolve().parents[1]
#: Where ``make agents`` installs the CLIs (``npm install --prefix``).
AGENTS_DIR = Path(os.environ.get("AUTOTUNE_AGENTS_DIR", ROOT / ".agents"))
_CLAUDE = AGENTS_DIR / "node_modules" / "@anthropic-ai" / "claude-code" / "cli-wrapper.cjs"
_CODEX = AGENTS_DIR / "node_modules" / "@openai" / "codex" / "bin" / "codex.js"
#: Request headers worth keeping in a recording (who sent it, which API version); never keys.
_HEADERS = (
    "user-agent",
    "content-type",
    "accept",
    "anthropic-version",
    "anthropic-beta",
    "x-app",
    "originator",
    "version",
    "openai-beta",
)


def agents_missing() -> str | None:
    """What is missing to run the agents, or None when both are installed."""
    if shutil.which("node") is None:
        return "node is not on PATH (Node 20 or newer runs the agents' wrappers)"
    for path in (_CLAUDE, _CODEX):
        if not path.is_file():
            return f"{path} is missing: run `make agents`"
    return None


@dataclass
class Exchange:
    """One request an agent sent, and how it was answered."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any = None
    status: int | None = None
    #: The answer's first 4,000 bytes (an error's JSON, or the start of a stream).
    reply: str = ""
    #: The answer's last 2,000 bytes (the end of a stream: its stop reason, its last event).
    tail: str = ""
    #: autotune's ``X-Autotune-Plan`` for the answer, when it sent one.
    plan: str = ""
    #: Seconds from the request's arrival to the answer's last byte.
    seconds: float = 0.0
    #: The answer's last byte was sent.
    done: bool = False
    #: The names of the server-sent events of a streamed answer, in order.
    events: list[str] = field(default_factory=list)

    def error(self) -> str:
        """The error message of a refused request, in any of the APIs' shapes."""
        try:
            data = json.loads(self.reply)
        except ValueError:
            return self.reply[:300]
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict):
            return str(error.get("message", error))
        return str(error if error is not None else data)[:300]


class Recorder:
    """ASGI middleware: ``Recorder(app)`` serves ``app`` and keeps ``exchanges``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.exchanges: list[Exchange] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers", ())
            if k.decode("latin-1").lower() in _HEADERS
        }
        method = scope.get("method", "WEBSOCKET")
        query = scope.get("query_string", b"").decode("latin-1")
        exchange = Exchange(method, scope["path"], query, headers)
        self.exchanges.append(exchange)
        arrived = time.monotonic()
        parts: list[bytes] = []

        async def receive_body() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                parts.append(message.get("body", b""))
                if not message.get("more_body"):
                    exchange.body = _json_or_text(b"".join(parts))
            return message

        async def send_reply(message: Any) -> None:
            if message["type"] in ("http.response.start", "websocket.http.response.start"):
                exchange.status = message["status"]
                for key, value in message.get("headers", ()):
                    if key.decode("latin-1").lower() == "x-autotune-plan":
                        exchange.plan = value.decode("latin-1")
            elif message["type"] == "websocket.close" and exchange.status is None:
                exchange.status = 403  # refused before the handshake (no websocket route)
            elif message["type"] == "http.response.body":
                text = message.get("body", b"").decode("utf-8", errors="replace")
                if len(exchange.reply) < 4000:
                    exchange.reply += text
                exchange.tail = (exchange.tail + text)[-2000:]
                exchange.events += _EVENT.findall(text)
                exchange.seconds = time.monotonic() - arrived
                exchange.done = not message.get("more_body", False)
            await send(message)

        await self.app(scope, receive_body, send_reply)


_EVENT = re.compile(r"^event: (\S+)", re.M)


def _json_or_text(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", errors="replace")


@dataclass
class AgentRun:
    """A finished CLI run: its exit code and what it printed."""

    command: list[str]
    returncode: int
    stdout: str
    stderr: str
    env: dict[str, str] = field(default_factory=dict)
    #: Stopped by the caller (``until``) rather than ended by itself.
    stopped: bool = False


def _workspace(folder: Path) -> tuple[Path, Path]:
    """An empty HOME and a fresh git repository (with one file to read) inside ``folder``."""
    home, work = folder / "home", folder / "project"
    home.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    (work / "hello.txt").write_text("Hello from the test project.\n")
    subprocess.run(["git", "init", "-q", str(work)], check=True, capture_output=True)
    return home, work


def _run(
    command: list[str],
    env: dict[str, str],
    cwd: Path,
    timeout: float,
    until: Callable[[], bool] | None = None,
) -> AgentRun:
    """Run the CLI to its end, or stop it once ``until()`` is true (``AgentRun.stopped``);
    ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TMPDIR", "TERM")}
    full = {**base, **env}
    out, err = cwd.parent / "stdout.txt", cwd.parent / "stderr.txt"  # files: no pipe fills up
    with out.open("w") as stdout_file, err.open("w") as stderr_file:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=full,
            stdin=subprocess.DEVNULL,
            stdout=stdout_file,
            stderr=stderr_file,
            text=True,
        )
        deadline = time.monotonic() + timeout
        stopped = False
        while process.poll() is None:
            if until is not None and until():
                process.terminate()
                stopped = True
                break
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise subprocess.TimeoutExpired(command, timeout)
            time.sleep(0.5)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
    return AgentRun(command, process.returncode, stdout, stderr, env, stopped)


def run_claude(
    url: str,
    key: str,
    model: str,
    prompt: str,
    folder: Path,
    timeout: float = 300,
    until: Callable[[], bool] | None = None,
) -> AgentRun:
    """Claude Code, non-interactive (``-p``), pointed at ``url`` with ``key`` and ``model``."""
    home, work = _workspace(folder)
    env = {
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": key,
    }
    command = ["node", str(_CLAUDE), "-p", prompt, "--model", model]
    return _run(command, env, work, timeout, until)


def run_codex(
    url: str,
    key: str,
    model: str,
    prompt: str,
    folder: Path,
    timeout: float = 300,
    until: Callable[[], bool] | None = None,
) -> AgentRun:
    """Codex, non-interactive (``exec``), pointed at ``url``/v1 with ``key`` and ``model``."""
    home, work = _workspace(folder)
    env = {"HOME": str(home), "OPENAI_API_KEY": key}
    base_url = json.dumps(url + "/v1")  # a TOML string
    command = [
        "node",
        str(_CODEX),
        "exec",
        "-c",
        f"openai_base_url={base_url}",
        "-m",
        model,
        prompt,
    ]
    return _run(command, env, work, timeout, until)
