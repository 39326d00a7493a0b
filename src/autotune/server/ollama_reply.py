"""Pure translation of the pipeline's replies into Ollama's: the NDJSON objects of a chat or a
generation, the last one with ``done``, ``done_reason`` and the engine's timings in
nanoseconds; tool calls with their arguments as objects; log probabilities."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from autotune.ground.types import EngineStats

__all__ = ["ReplyShape", "chat_message", "created_at", "done_fields", "logprobs", "tool_calls"]


def created_at(now: float | None = None) -> str:
    """RFC 3339 UTC with microseconds and ``Z``, as Ollama writes ``created_at``."""
    moment = datetime.fromtimestamp(time.time() if now is None else now, tz=timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")


def _ns(ms: float | None) -> int | None:
    return None if ms is None else max(0, int(ms * 1_000_000))


def done_fields(
    stats: EngineStats | None,
    *,
    total_ns: int,
    waited_ns: int,
    finish_reason: str | None,
    usage: Mapping[str, Any] | None = None,
    paid_load_ms: float | None = None,
) -> dict[str, Any]:
    """``done``, ``done_reason`` and the timings of Ollama's last object, in nanoseconds.

    The counts and durations are the engine's own (``prompt_eval_count`` is the whole
    prompt, cached part included, as Ollama counts it).

    ``total_duration`` is the wall clock from the request's arrival to its end, the time in
    autotune's admission queue included — as Ollama's is: its handlers stamp the start before
    the scheduler (``checkpointStart``) and report ``time.Since`` it, so a request waiting for
    a busy runner or a parallel slot counts that wait in ``total_duration`` (server/routes.go).

    ``load_duration`` is the load this request paid: the load autotune ran ahead of it
    (``paid_load_ms``), else the engine's own figure, else, when the engine says it
    (re)loaded, the wait for its first token less the prompt's evaluation; else 0 — a
    request that found its model loaded paid none. (Ollama's own spans its scheduler call,
    ``checkpointLoaded - checkpointStart``: the load, plus any wait for the scheduler, a few
    milliseconds on a warm model.) Figures the engine did not report are left out."""
    prompt_ns = _ns(stats.prompt_ms) if stats else None
    load_ns = _ns(paid_load_ms) if paid_load_ms else _load_ns(stats, waited_ns, prompt_ns)
    fields: dict[str, Any] = {
        "done": True,
        "done_reason": "length" if finish_reason == "length" else "stop",
        "total_duration": max(0, total_ns),
        "load_duration": load_ns,
    }
    prompt, completion = _counts(stats, usage)
    for key, value in (
        ("prompt_eval_count", prompt),
        ("prompt_eval_duration", prompt_ns),
        ("eval_count", completion),
        ("eval_duration", _ns(stats.decode_ms) if stats else None),
    ):
        if value is not None:
            fields[key] = int(value)
    return fields


def _load_ns(stats: EngineStats | None, waited_ns: int, prompt_ns: int | None) -> int:
    """The engine's load time; else, when it (re)loaded, the wait for its first token less
    the prompt's evaluation; else 0."""
    if stats is not None and stats.load_ms is not None:
        return _ns(stats.load_ms) or 0
    if stats is not None and stats.reloaded:
        return max(0, waited_ns - (prompt_ns or 0))
    return 0


def _counts(
    stats: EngineStats | None, usage: Mapping[str, Any] | None
) -> tuple[int | None, int | None]:
    """Prompt and completion tokens: the engine's counters, else the usage it reported."""
    prompt = stats.prompt_tokens if stats else None
    completion = stats.completion_tokens if stats else None
    if prompt is None and usage:
        prompt = usage.get("prompt_tokens")
    if completion is None and usage:
        completion = usage.get("completion_tokens")
    return prompt, completion


def tool_calls(calls: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI tool calls (arguments as a JSON string) in Ollama's shape (an object)."""
    out = []
    for index, call in enumerate(calls):
        function = call.get("function") or {}
        raw = function.get("arguments") or "{}"
        try:
            arguments = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except json.JSONDecodeError:
            arguments = {"_raw": raw}  # the model wrote no valid JSON: keep what it wrote
        if not isinstance(arguments, dict):
            arguments = {"value": arguments}
        converted: dict[str, Any] = {
            "function": {"index": index, "name": function.get("name", ""), "arguments": arguments}
        }
        if call.get("id"):
            converted["id"] = call["id"]
        out.append(converted)
    return out


def logprobs(
    content: Sequence[Mapping[str, Any]] | None, *, top: bool = True
) -> list[dict[str, Any]] | None:
    """OpenAI ``logprobs.content`` entries as Ollama's ``logprobs`` list; ``top``: with the
    alternatives (llama.cpp sends 20 unasked; Ollama only sends what ``top_logprobs`` asks)."""
    if not content:
        return None
    return [
        {
            "token": entry.get("token", ""),
            "logprob": entry.get("logprob", 0.0),
            **(
                {
                    "top_logprobs": [
                        {"token": t.get("token", ""), "logprob": t.get("logprob", 0.0)}
                        for t in entry["top_logprobs"]
                    ]
                }
                if top and entry.get("top_logprobs")
                else {}
            ),
        }
        for entry in content
    ]


def chat_message(
    content: str,
    *,
    thinking: str | None = None,
    calls: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """An assistant ``message`` object of ``/api/chat``."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if calls:
        message["tool_calls"] = tool_calls(calls)
    return message


@dataclass
class ReplyShape:
    """Builds Ollama's reply objects for one request: ``kind`` is ``chat`` or ``generate``."""

    model: str
    kind: str = "chat"
    #: Thinking is left out of the reply (the client sent ``think: false``).
    no_thinking: bool = False
    #: The client asked for alternatives with each token's log probability.
    top_logprobs: bool = False

    def _base(self) -> dict[str, Any]:
        return {"model": self.model, "created_at": created_at()}

    def _body(self, content: str, thinking: str | None, calls: Sequence[Any]) -> dict[str, Any]:
        thinking = None if self.no_thinking else thinking
        if self.kind == "chat":
            return {"message": chat_message(content, thinking=thinking, calls=calls)}
        body: dict[str, Any] = {"response": content}
        if thinking:
            body["thinking"] = thinking
        return body

    def piece(self, data: Mapping[str, Any]) -> dict[str, Any] | None:
        """The streamed object for one OpenAI chunk, or None when it carries no text."""
        choices = data.get("choices") or ()
        choice = next((c for c in choices if c.get("index", 0) == 0), None)
        if choice is None:
            return None
        delta = choice.get("delta") or {}
        content = delta.get("content") or choice.get("text") or ""  # chat, or a completion
        thinking = delta.get("reasoning_content") or None
        probs = logprobs((choice.get("logprobs") or {}).get("content"), top=self.top_logprobs)
        if not content and (not thinking or self.no_thinking) and not probs:
            return None
        out = {**self._base(), **self._body(content, thinking, ()), "done": False}
        if probs:
            out["logprobs"] = probs
        return out

    def closing(
        self, calls: Sequence[Mapping[str, Any]], done: Mapping[str, Any]
    ) -> list[dict[str, Any]]:
        """The last streamed objects: the tool calls, whole (as Ollama sends them), then done."""
        out = []
        if calls and self.kind == "chat":
            out.append({**self._base(), **self._body("", None, calls), "done": False})
        out.append({**self._base(), **self._body("", None, ()), **done})
        return out

    def whole(
        self,
        content: str,
        *,
        thinking: str | None,
        calls: Sequence[Mapping[str, Any]],
        probs: Sequence[Mapping[str, Any]] | None,
        done: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The one object of a reply that was not streamed."""
        out = {**self._base(), **self._body(content, thinking, calls), **done}
        converted = logprobs(probs, top=self.top_logprobs)
        if converted:
            out["logprobs"] = converted
        return out

    def loaded(self, reason: str) -> dict[str, Any]:
        """The reply to a request without messages: ``done_reason`` ``load`` or ``unload``."""
        return {**self._base(), **self._body("", None, ()), "done": True, "done_reason": reason}
