"""Folds a stream of OpenAI chat chunks into one reply: text, tool calls, finish, usage, stats.

One accumulator serves everyone who reads a stream: the pipeline (to store the turn and
record telemetry), the OpenAI face (a non-streaming ``chat.completion``), the terminal
chat and the proof. :meth:`Reply.add` returns the content text a chunk carried, so a caller
that renders or times the first token needs nothing else.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from autotune.ground.types import Chunk, EngineStats

__all__ = ["Choice", "Reply"]

#: Delta fields that are concatenated text besides ``content``.
_TEXT_FIELDS = ("reasoning_content", "refusal")
#: Top-level chunk fields a completion carries over from the stream.
_EXTRA_FIELDS = ("usage", "timings", "system_fingerprint")


@dataclass
class Choice:
    """One choice of a reply as it builds up."""

    index: int
    content: str | None = None
    texts: dict[str, str] = field(default_factory=dict)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    logprobs: list[Any] | None = None
    finish_reason: str | None = None

    def add(self, choice: dict[str, Any]) -> str:
        """Fold one streamed choice in; returns the content text it carried."""
        delta = choice.get("delta") or {}
        # A chat chunk carries delta.content; a text_completion chunk (/v1/completions) text.
        text = delta.get("content") if "delta" in choice else choice.get("text")
        if text is not None:
            self.content = (self.content or "") + text
        for key in _TEXT_FIELDS:
            if delta.get(key):
                self.texts[key] = self.texts.get(key, "") + delta[key]
        for call in delta.get("tool_calls") or ():
            self._add_call(call)
        if choice.get("logprobs"):
            self.logprobs = (self.logprobs or []) + list(choice["logprobs"].get("content") or [])
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        return text or ""

    def _add_call(self, call: dict[str, Any]) -> None:
        index = call.get("index", len(self.tool_calls))
        while len(self.tool_calls) <= index:
            self.tool_calls.append(
                {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
        target, fn = self.tool_calls[index], call.get("function") or {}
        target["id"] = call.get("id") or target["id"]
        target["function"]["name"] += fn.get("name") or ""
        target["function"]["arguments"] += fn.get("arguments") or ""

    def message(self) -> dict[str, Any]:
        """The ``chat.completion`` message of this choice."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content, **self.texts}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        return message


class Reply:
    """Everything a stream said so far; feed it every chunk with :meth:`add`."""

    def __init__(self, started: float | None = None) -> None:
        self.started = time.monotonic() if started is None else started
        self.choices: dict[int, Choice] = {}
        self.extra: dict[str, Any] = {}
        self.stats: EngineStats | None = None
        #: Milliseconds from ``started`` to the first content or tool-call token.
        self.ttft_ms: float | None = None
        self._first: dict[str, Any] = {}

    def add(self, chunk: Chunk) -> str:
        """Fold one chunk in; returns the content text it carried (for rendering)."""
        data = chunk.data
        self._first = self._first or data
        text = ""
        for raw in data.get("choices") or ():
            index = raw.get("index", 0)
            choice = self.choices.setdefault(index, Choice(index))
            calls_before = len(choice.tool_calls)
            text += choice.add(raw)
            if self.ttft_ms is None and (text or len(choice.tool_calls) > calls_before):
                self.ttft_ms = (time.monotonic() - self.started) * 1000
        for key in _EXTRA_FIELDS:
            if data.get(key) is not None:
                self.extra[key] = data[key]
        if chunk.stats is not None:
            self.stats = chunk.stats
        return text

    @property
    def first_chunk(self) -> dict[str, Any]:
        """The first chunk's data (its id, object and creation time name the reply)."""
        return self._first

    # -- the first choice, which is what a chat turn is

    def _main(self) -> Choice:
        return self.choices.get(0) or Choice(0)

    @property
    def text(self) -> str:
        return self._main().content or ""

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return self._main().tool_calls

    @property
    def finish_reason(self) -> str | None:
        return self._main().finish_reason

    @property
    def usage(self) -> dict[str, Any] | None:
        usage = self.extra.get("usage")
        return dict(usage) if isinstance(usage, dict) else None

    def cut(self, chars: int, finish_reason: str = "stop") -> None:
        """Keep only the first ``chars`` characters of the reply's text (a face found a stop
        sequence there) and say why it ended."""
        main = self.choices.setdefault(0, Choice(0))
        main.content = (main.content or "")[:chars]
        main.finish_reason = finish_reason

    def turn(self) -> dict[str, Any]:
        """The assistant message to store for this turn."""
        message: dict[str, Any] = {"role": "assistant", "content": self.text}
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.stats is not None and self.stats.completion_tokens:
            message["tokens"] = self.stats.completion_tokens
        return message

    def completion(self, model: str) -> dict[str, Any]:
        """The whole reply as one OpenAI ``chat.completion`` object."""
        choices = [
            {
                "index": c.index,
                "message": c.message(),
                "finish_reason": c.finish_reason,
                "logprobs": {"content": c.logprobs} if c.logprobs is not None else None,
            }
            for c in (self.choices[i] for i in sorted(self.choices))
        ]
        return {
            "id": self._first.get("id") or "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion",
            "created": self._first.get("created") or int(time.time()),
            "model": model,
            "choices": choices,
            **self.extra,
        }
