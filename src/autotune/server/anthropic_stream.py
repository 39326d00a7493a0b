"""Pure translation of the engine's chat chunks into Anthropic's Messages replies.

The engine's ``chat.completion.chunk`` stream becomes Anthropic's event sequence
(``message_start``, ``content_block_start`` / ``_delta`` / ``_stop``, ``message_delta``,
``message_stop``) or one ``message``, with stop reasons (``end_turn``, ``max_tokens``,
``stop_sequence``, ``tool_use``) and usage in Anthropic's terms (``cache_read_input_tokens``
are the prompt tokens the engine took from its cache).

Stop sequences are matched here, on the text as it streams, rather than by the engine:
OpenAI-style engines do not say which sequence (or the end-of-turn token) ended a reply, and
Anthropic's answer names it. :class:`StopScanner` holds back at most the longest sequence's
length of text, so streaming stays token by token.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from autotune.ground.types import EngineStats
from autotune.server.wire_kit import call_piece, deltas, token_counts

__all__ = ["Event", "EventStream", "StopScanner", "new_message_id", "usage"]

Event = tuple[str, dict[str, Any]]


# ---------------------------------------------------------------------- stop sequences


class StopScanner:
    """Finds the first stop sequence in text that arrives piece by piece.

    :meth:`feed` returns the text that is safe to emit now; text that could be the start
    of a stop sequence is held back until the next piece says otherwise.
    """

    def __init__(self, sequences: Sequence[str]) -> None:
        self.sequences = [s for s in sequences if s]
        self._hold = max((len(s) for s in self.sequences), default=1) - 1
        self._pending = ""
        #: Characters emitted so far (the reply's text up to the match, once matched).
        self.emitted = 0
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        if self.matched is not None:
            return ""
        if not self.sequences:
            self.emitted += len(text)
            return text
        buffer = self._pending + text
        hits = [(buffer.find(s), s) for s in self.sequences if s in buffer]
        if hits:
            at, self.matched = min(hits)
            self._pending = ""
            self.emitted += at
            return buffer[:at]
        keep = min(self._hold, len(buffer))
        out, self._pending = buffer[: len(buffer) - keep], buffer[len(buffer) - keep :]
        self.emitted += len(out)
        return out

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        self.emitted += len(out)
        return out


# ---------------------------------------------------------------------- reply → Anthropic


def usage(stats: EngineStats | None, estimate: int = 0, output: int = 0) -> dict[str, Any]:
    """Anthropic usage from the engine's counters: ``input_tokens`` are the prompt tokens the
    engine computed, ``cache_read_input_tokens`` those it took from its cache."""
    prompt, cached, completion = token_counts(stats, estimate, output)
    return {
        "input_tokens": max(0, prompt - cached),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": completion,
    }


def _stop_reason(finish: str | None, matched: str | None, tool_calls: bool) -> str:
    if matched is not None:
        return "stop_sequence"
    if tool_calls or finish == "tool_calls":
        return "tool_use"
    if finish == "length":
        return "max_tokens"
    if finish == "content_filter":
        return "refusal"
    return "end_turn"


def _tool_input(arguments: str) -> dict[str, Any]:
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        return {"_unparsed_arguments": arguments}
    return parsed if isinstance(parsed, dict) else {"_unparsed_arguments": arguments}


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


class EventStream:
    """Turns the engine's chat chunks into Anthropic's events, and remembers the blocks so
    :meth:`message` can answer a non-streaming request with the same content.

    Feed it every chunk's dict with :meth:`feed`; when the stream ends (or the scanner
    matched a stop sequence) call :meth:`finish`.
    """

    def __init__(
        self,
        model: str,
        *,
        input_estimate: int = 0,
        stop_sequences: Sequence[str] = (),
        thinking: bool = False,
        message_id: str | None = None,
    ) -> None:
        self.id = message_id or new_message_id()
        self.model = model
        self.input_estimate = input_estimate
        self.thinking = thinking
        self.scanner = StopScanner(stop_sequences)
        #: Content blocks so far, in Anthropic's shape (tool inputs as raw JSON text).
        self.blocks: list[dict[str, Any]] = []
        self._open: str | None = None  # "text", "thinking" or "tool:<openai index>"
        self._finish: str | None = None
        self._deltas = 0
        self.stop_reason: str | None = None
        self.final_usage: dict[str, Any] | None = None

    @property
    def stopped(self) -> bool:
        """A stop sequence was found: the rest of the engine's stream is not wanted."""
        return self.scanner.matched is not None

    def start(self) -> list[Event]:
        message: dict[str, Any] = {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage(None, self.input_estimate, 0),
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def feed(self, data: Mapping[str, Any]) -> list[Event]:
        events: list[Event] = []
        for delta, finish in deltas(data):
            if self.stopped:
                break
            if delta.get("reasoning_content") and self.thinking:
                events += self._delta("thinking", delta["reasoning_content"])
            if delta.get("content"):
                self._deltas += 1
                text = self.scanner.feed(delta["content"])
                events += self._delta("text", text) if text else []
            events += [e for call in delta.get("tool_calls") or () for e in self._tool_delta(call)]
            self._finish = finish or self._finish
        return events

    def finish(self, stats: EngineStats | None) -> list[Event]:
        """The closing events: the held-back text, block stops, ``message_delta`` with the
        stop reason and usage, ``message_stop``."""
        events: list[Event] = []
        if not self.stopped:
            rest = self.scanner.flush()
            if rest:
                events += self._delta("text", rest)
        events += self._close()
        tools = any(b["type"] == "tool_use" for b in self.blocks)
        self.stop_reason = _stop_reason(self._finish, self.scanner.matched, tools)
        self.final_usage = usage(None if self.stopped else stats, self.input_estimate, self._deltas)
        delta = {"stop_reason": self.stop_reason, "stop_sequence": self.scanner.matched}
        events.append(
            ("message_delta", {"type": "message_delta", "delta": delta, "usage": self.final_usage})
        )
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    def message(self) -> dict[str, Any]:
        """The whole reply as one Anthropic ``message`` (after :meth:`finish`)."""
        content = []
        for block in self.blocks:
            if block["type"] == "tool_use":
                block = {**block, "input": _tool_input(block.get("_json", ""))}
            content.append({k: v for k, v in block.items() if k != "_json"})
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": content,
            "stop_reason": self.stop_reason,
            "stop_sequence": self.scanner.matched,
            "usage": self.final_usage or usage(None, self.input_estimate, self._deltas),
        }

    # -- blocks

    def _begin(self, kind: str, block: dict[str, Any]) -> list[Event]:
        events = self._close()
        self._open = kind
        self.blocks.append(block)
        shown = {k: v for k, v in block.items() if k != "_json"}
        index = len(self.blocks) - 1
        return [
            *events,
            (
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": shown},
            ),
        ]

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        events: list[Event] = []
        index = len(self.blocks) - 1
        if self._open == "thinking":
            events.append(self._block_delta({"type": "signature_delta", "signature": ""}))
        self._open = None
        events.append(("content_block_stop", {"type": "content_block_stop", "index": index}))
        return events

    def _block_delta(self, delta: dict[str, Any]) -> Event:
        index = len(self.blocks) - 1
        body = {"type": "content_block_delta", "index": index, "delta": delta}
        return ("content_block_delta", body)

    def _delta(self, kind: str, text: str) -> list[Event]:
        events: list[Event] = []
        if self._open != kind:
            empty = (
                {"type": "text", "text": ""}
                if kind == "text"
                else {
                    "type": "thinking",
                    "thinking": "",
                    "signature": "",
                }
            )
            events += self._begin(kind, empty)
        block = self.blocks[-1]
        block[kind] += text
        name = "text_delta" if kind == "text" else "thinking_delta"
        events.append(self._block_delta({"type": name, kind: text}))
        return events

    def _tool_delta(self, call: Mapping[str, Any]) -> list[Event]:
        piece = call_piece(call)
        events: list[Event] = []
        if self._open != f"tool:{piece.index}":
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": piece.id or "toolu_" + uuid.uuid4().hex[:24],
                "name": piece.name,
                "input": {},
                "_json": "",
            }
            events += self._begin(f"tool:{piece.index}", block)
        if piece.arguments:
            self.blocks[-1]["_json"] += piece.arguments
            delta = {"type": "input_json_delta", "partial_json": piece.arguments}
            events.append(self._block_delta(delta))
        return events
