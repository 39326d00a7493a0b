"""How a streamed reply reaches the screen: live Markdown with a footer, or plain text for pipes."""

from __future__ import annotations

import re
import sys
from typing import Any, Protocol, TextIO

from rich.console import Console, Group
from rich.live import Live
from rich.markdown import Markdown
from rich.spinner import Spinner
from rich.text import Text

__all__ = [
    "MarkdownRenderer",
    "PlainRenderer",
    "ReplyRenderer",
    "footer_text",
    "hard_breaks",
    "split_stable",
]

_FENCE = re.compile(r"^\s{0,3}(```|~~~)")


def split_stable(text: str) -> tuple[str, str]:
    """Split streamed Markdown into (finished blocks, the block still being written).

    A block is finished once a blank line follows it outside a code fence; finished blocks
    are printed once and never redrawn, so a long reply never outgrows the live area.
    """
    in_fence = False
    cut = 0
    pos = 0
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        pos += len(line)
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        complete = line.endswith("\n")
        if not in_fence and complete and not line.strip() and i > 0:
            cut = pos
    return text[:cut], text[cut:]


def hard_breaks(text: str) -> str:
    """Keep the model's single line breaks (Markdown would join the lines of a poem or an
    address into one paragraph): outside code fences, a line followed by another non-blank
    line ends with a hard break."""
    lines = text.split("\n")
    in_fence = False
    out = []
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
            out.append(line)
            continue
        follows = i + 1 < len(lines) and lines[i + 1].strip() and not _FENCE.match(lines[i + 1])
        if not in_fence and line.strip() and follows and not line.endswith("  "):
            line += "  "
        out.append(line)
    return "\n".join(out)


def footer_text(record: Any) -> str:
    """``TTFT 120 ms · 95.3 tok/s · drafts 71% accepted · ctx 312/2,048 tokens (280 cached)``.

    Takes a :class:`~autotune.pipeline.RunRecord` (or anything with its fields); unknown
    values are left out rather than shown as zero.
    """
    parts = []
    ttft = getattr(record, "ttft_ms", None)
    if ttft is not None:
        parts.append(f"TTFT {ttft:,.0f} ms")
    tps = getattr(record, "tokens_per_s", None)
    if tps is not None and (getattr(record, "completion_tokens", None) or 0) > 1:
        parts.append(f"{tps:,.1f} tok/s")
    drafted = getattr(record, "draft_tokens", None)
    accepted = getattr(record, "draft_accepted", None)
    if drafted and accepted is not None:
        # Speculative decoding: the share of drafted tokens the model kept.
        parts.append(f"drafts {accepted / drafted:.0%} accepted")
    prompt = getattr(record, "prompt_tokens", None)
    n_ctx = getattr(record, "n_ctx", None)
    if prompt is not None or n_ctx:
        if prompt is None:
            ctx = f"ctx {n_ctx:,} tokens"
        else:
            ctx = f"ctx {prompt:,}/{n_ctx:,} tokens" if n_ctx else f"prompt {prompt:,} tokens"
        cached = getattr(record, "cached_tokens", None)
        if cached:
            ctx += f" ({cached:,} cached)"
        parts.append(ctx)
    if getattr(record, "reloaded", None):
        parts.append("model loaded")
    return " · ".join(parts) if parts else "no timings from the engine"


class ReplyRenderer(Protocol):
    """Receives one reply as it streams; the chat calls these in order."""

    def begin(self) -> None: ...

    def feed(self, text: str) -> None: ...

    def end(self, footer: str | None, *, stopped: bool = False) -> None: ...


class MarkdownRenderer:
    """Renders a reply as Markdown while it streams (Rich Live), then prints a dim footer."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._text = ""
        self._printed = 0
        self._live: Live | None = None

    def begin(self) -> None:
        self._text, self._printed = "", 0
        self._live = Live(
            Spinner("dots", text=Text("thinking…", style="dim")),
            console=self.console,
            refresh_per_second=12,
            transient=True,
        )
        self._live.start()

    def feed(self, text: str) -> None:
        if not text:
            return
        self._text += text
        stable, tail = split_stable(self._text)
        if len(stable) > self._printed:
            block = stable[self._printed :]
            self._printed = len(stable)
            if self._live is not None:
                self._live.console.print(Markdown(hard_breaks(block)))
        if self._live is not None:
            self._live.update(Markdown(hard_breaks(tail)) if tail.strip() else Group())

    def end(self, footer: str | None, *, stopped: bool = False) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        tail = self._text[self._printed :]
        if tail.strip():
            self.console.print(Markdown(hard_breaks(tail)))
        if stopped:
            self.console.print(Text("⏹ stopped (this turn is not saved)", style="yellow"))
        if footer:
            self.console.print(Text(footer, style="dim"))
        self.console.print()


class PlainRenderer:
    """Writes the reply text as it arrives, unformatted; the footer (if any) goes to ``err``."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self._ends_with_newline = True

    def begin(self) -> None:
        self._ends_with_newline = True

    def feed(self, text: str) -> None:
        if text:
            self.out.write(text)
            self.out.flush()
            self._ends_with_newline = text.endswith("\n")

    def end(self, footer: str | None, *, stopped: bool = False) -> None:
        if not self._ends_with_newline:
            self.out.write("\n")
        self.out.flush()
        if stopped:
            self.err.write("stopped\n")
        if footer:
            self.err.write(footer + "\n")
        self.err.flush()
