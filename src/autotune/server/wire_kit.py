"""What the API translations share: a 400 naming a field, a list of tools walked with each
one's path, the engine's token counts, and the main choice of a chunk. Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from autotune.ground.errors import InvalidRequest
from autotune.ground.types import EngineStats

__all__ = [
    "CallPiece",
    "bad",
    "call_piece",
    "deltas",
    "function_tools",
    "system_prompt",
    "token_counts",
]


def bad(message: str, param: str) -> InvalidRequest:
    """The 400 for a field autotune cannot honour, naming it."""
    return InvalidRequest(message, param=param)


def function_tools(
    tools: Any, function: Callable[[Mapping[str, Any], str], dict[str, Any]]
) -> list[dict[str, Any]]:
    """A request's tools as OpenAI function tools: ``function(tool, where)`` translates one
    (``where`` is its path, ``tools[2]``) or raises the 400 that names what it cannot."""
    if not isinstance(tools, list):
        raise bad("'tools' must be a list.", "tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise bad(f"{where} must be an object.", where)
        out.append({"type": "function", "function": function(tool, where)})
    return out


def token_counts(stats: EngineStats | None, estimate: int, output: int) -> tuple[int, int, int]:
    """(prompt, cached, completion) tokens by the engine's counters; the estimates where it
    gave none (the prompt's, and the number of text deltas for the completion)."""
    prompt = stats.prompt_tokens if stats and stats.prompt_tokens is not None else estimate
    cached = stats.cached_tokens if stats and stats.cached_tokens else 0
    completion = stats.completion_tokens if stats and stats.completion_tokens else output
    return prompt, cached, completion


def deltas(data: Mapping[str, Any]) -> Iterator[tuple[Mapping[str, Any], str | None]]:
    """The main choice's ``(delta, finish_reason)`` in an OpenAI chunk (faces answer one
    choice; a chunk of another is skipped)."""
    for choice in data.get("choices") or ():
        if choice.get("index", 0) == 0:
            yield choice.get("delta") or {}, choice.get("finish_reason")


def system_prompt(text: str | None) -> list[dict[str, Any]]:
    """The system message a request's own system text makes (none for no text)."""
    return [{"role": "system", "content": text}] if text else []


@dataclass(frozen=True)
class CallPiece:
    """One streamed piece of a tool call: which call, its id and name (on its first piece),
    and the next part of its arguments."""

    index: int
    id: str | None
    name: str
    arguments: str


def call_piece(call: Mapping[str, Any]) -> CallPiece:
    """A ``delta.tool_calls`` entry as a :class:`CallPiece`."""
    function = call.get("function") or {}
    return CallPiece(
        call.get("index", 0),
        call.get("id"),
        function.get("name") or "",
        function.get("arguments") or "",
    )
