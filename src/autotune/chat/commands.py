"""The chat's slash commands as pure logic: parsing, completion, help, /metrics and /recall text."""

from __future__ import annotations

import difflib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from autotune.ground.config import PROFILE_CHOICES

__all__ = [
    "COMMANDS",
    "Command",
    "CommandSpec",
    "RecallRequest",
    "SessionMetrics",
    "complete",
    "format_conversation_list",
    "help_lines",
    "parse_command",
    "parse_recall",
]


@dataclass(frozen=True)
class CommandSpec:
    """One slash command: its name, what it takes, and one line of help."""

    name: str
    usage: str
    help: str
    #: "none", "optional" or "required".
    arg: str = "none"
    choices: tuple[str, ...] = ()


COMMANDS: dict[str, CommandSpec] = {
    s.name: s
    for s in (
        CommandSpec("help", "/help", "Show these commands."),
        CommandSpec("new", "/new", "Start a new conversation."),
        CommandSpec("history", "/history", "Show the current conversation."),
        CommandSpec(
            "profile",
            "/profile fast|balanced|quality",
            "Switch the tuning profile (the next load applies it).",
            "required",
            PROFILE_CHOICES,
        ),
        CommandSpec("model", "/model <id>", "Switch to another model.", "required"),
        CommandSpec(
            "system", "/system <text>", "Set this conversation's system prompt.", "required"
        ),
        CommandSpec("export", "/export", "Write the conversation as Markdown and print the path."),
        CommandSpec("metrics", "/metrics", "Session TTFT, tokens/s and requests."),
        CommandSpec("backends", "/backends", "Probe which engines are reachable."),
        CommandSpec("models", "/models", "List the models every engine in use can serve."),
        CommandSpec(
            "recall",
            "/recall [n|id|search <query>]",
            "List recent conversations and resume one, or search past ones.",
            "optional",
        ),
        CommandSpec(
            "pull",
            "/pull <model>",
            "Download a model (with Ollama, else a GGUF from the Hugging Face hub).",
            "required",
        ),
        CommandSpec("delete", "/delete", "Delete this conversation and start a new one."),
        CommandSpec("quit", "/quit", "Leave the chat (Ctrl-D works too)."),
    )
}

_ALIASES = {"exit": "quit", "q": "quit", "?": "help", "h": "help"}


@dataclass(frozen=True)
class Command:
    """A parsed slash command; ``error`` is set when it cannot run as typed."""

    name: str
    arg: str = ""
    error: str | None = None

    @property
    def known(self) -> bool:
        return self.name in COMMANDS


def _unknown(name: str) -> str:
    close = difflib.get_close_matches(name, list(COMMANDS), n=1, cutoff=0.6)
    hint = f" Did you mean /{close[0]}?" if close else ""
    known = ", ".join(f"/{n}" for n in COMMANDS)
    return f"Unknown command /{name}.{hint} Commands: {known}."


def parse_command(line: str) -> Command | None:
    """The command on ``line``, or None when the line is a message (it does not start with /).

    A line starting with ``//`` is a message that starts with ``/`` (the first slash dropped
    by the caller).
    """
    text = line.strip()
    if not text.startswith("/") or text.startswith("//"):
        return None
    head, _, rest = text[1:].partition(" ")
    name = _ALIASES.get(head.lower(), head.lower())
    arg = rest.strip()
    spec = COMMANDS.get(name)
    if spec is None:
        return Command(name, arg, _unknown(name))
    if spec.arg == "required" and not arg:
        return Command(name, arg, f"Usage: {spec.usage}")
    if spec.choices and arg.lower() not in spec.choices:
        return Command(
            name, arg, f"Unknown {name} {arg!r}; choose one of {', '.join(spec.choices)}."
        )
    if spec.choices:
        arg = arg.lower()
    return Command(name, arg)


@dataclass(frozen=True)
class RecallRequest:
    """What ``/recall`` was asked: ``list``, ``pick`` (a number or an id) or ``search``."""

    kind: str
    value: str = ""


def parse_recall(arg: str) -> RecallRequest:
    """``""`` → list; ``"3"`` or ``"conv_…"`` → pick; ``"search <query>"`` → search."""
    text = arg.strip()
    if not text:
        return RecallRequest("list")
    head, _, rest = text.partition(" ")
    if head.lower() == "search":
        return RecallRequest("search", rest.strip())
    return RecallRequest("pick", text)


def help_lines() -> list[tuple[str, str]]:
    """(usage, help) for every command, in menu order."""
    return [(s.usage, s.help) for s in COMMANDS.values()]


def complete(text: str) -> list[str]:
    """Completions for what is typed so far: command names, then a command's choices."""
    if not text.startswith("/"):
        return []
    head, space, rest = text[1:].partition(" ")
    if not space:
        return [f"/{n}" for n in COMMANDS if n.startswith(head.lower())]
    spec = COMMANDS.get(_ALIASES.get(head.lower(), head.lower()))
    if spec is None:
        return []
    options = list(spec.choices) or (["search "] if spec.name == "recall" else [])
    return [o for o in options if o.startswith(rest.lower())]


@dataclass(frozen=True)
class _Listed:
    id: str
    title: str | None
    model: str | None
    updated_at: float
    message_count: int


def format_conversation_list(
    conversations: Iterable[object], *, current: str | None = None, now: float | None = None
) -> list[str]:
    """Numbered lines ``1. 2025-01-31 14:02  model  12 msgs  first words…`` (``*`` = current).

    Takes anything with ``id``, ``title``, ``model``, ``updated_at`` and ``message_count``.
    """
    lines = []
    for i, conv in enumerate(conversations, start=1):
        c = _Listed(
            str(getattr(conv, "id", "")),
            getattr(conv, "title", None),
            getattr(conv, "model", None),
            float(getattr(conv, "updated_at", 0.0) or 0.0),
            int(getattr(conv, "message_count", 0) or 0),
        )
        stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(c.updated_at))
        mark = "*" if current and c.id == current else " "
        title = c.title or "(no messages yet)"
        lines.append(
            f"{mark}{i:>2}. {stamp}  {c.model or '—'}  {c.message_count} msgs  {title}  [{c.id}]"
        )
    return lines


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


@dataclass
class SessionMetrics:
    """What this chat session measured: requests, TTFT, decode speed, cache reuse."""

    requests: int = 0
    failed: int = 0
    stopped: int = 0
    ttft_ms: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    reloads: int = 0

    def add(self, record: object, *, status: str = "ok") -> None:
        """Count one finished request (a :class:`~autotune.pipeline.RunRecord` or alike)."""
        self.requests += 1
        if status == "error":
            self.failed += 1
            return
        if status == "cancelled":
            self.stopped += 1
        ttft = getattr(record, "ttft_ms", None)
        tps = getattr(record, "tokens_per_s", None)
        if ttft is not None:
            self.ttft_ms.append(float(ttft))
        if tps is not None:
            self.tokens_per_s.append(float(tps))
        self.prompt_tokens += int(getattr(record, "prompt_tokens", None) or 0)
        self.cached_tokens += int(getattr(record, "cached_tokens", None) or 0)
        if getattr(record, "reloaded", None):
            self.reloads += 1

    def lines(self) -> list[str]:
        """The ``/metrics`` report, one fact per line."""
        if not self.requests:
            return ["No requests yet in this session."]
        out = [
            f"requests: {self.requests} ({self.stopped} stopped, {self.failed} failed, "
            f"{self.reloads} with a model load)"
        ]
        ttft = _median(self.ttft_ms)
        if ttft is not None:
            out.append(
                f"TTFT: median {ttft:,.0f} ms, last {self.ttft_ms[-1]:,.0f} ms, "
                f"best {min(self.ttft_ms):,.0f} ms"
            )
        if self.tokens_per_s:
            mean = sum(self.tokens_per_s) / len(self.tokens_per_s)
            out.append(f"decode: {mean:,.1f} tok/s mean, last {self.tokens_per_s[-1]:,.1f} tok/s")
        if self.prompt_tokens:
            share = self.cached_tokens / self.prompt_tokens
            out.append(
                f"prompt cache: {self.cached_tokens:,} of {self.prompt_tokens:,} prompt tokens "
                f"reused ({share:.0%})"
            )
        return out
