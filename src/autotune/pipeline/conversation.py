"""Reads a request's stored conversation and works out which of its messages are new.

A client may send only its new message or resend the whole history (as most OpenAI
clients do); both are recognised, and turns already stored are never stored twice. Nothing
is written here: a conversation is created when its first turn is committed, so a request
that is refused or fails leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autotune.context.window import CompactionState
from autotune.store.conversations import ConversationStore, content_text

__all__ = ["CompactionMemory", "ConversationView", "read_conversation"]

#: Compaction states remembered (one per active conversation); the oldest go first.
_MAX_COMPACTIONS = 1000


@dataclass(frozen=True)
class ConversationView:
    """A request's messages in the light of its stored conversation."""

    #: The system prompt and the stored turns that come before the new messages.
    history: list[dict[str, Any]] = field(default_factory=list)
    #: What the client adds with this request.
    new_messages: list[dict[str, Any]] = field(default_factory=list)
    conversation_id: str | None = None
    #: A retry of a turn already stored: answer it again, store nothing.
    retry: bool = False

    @property
    def messages(self) -> list[dict[str, Any]]:
        return self.history + self.new_messages


async def read_conversation(
    store: ConversationStore | None, conversation_id: str | None, incoming: list[dict[str, Any]]
) -> ConversationView:
    """The stored history (if any) and the new messages of one request."""
    if not conversation_id or store is None:
        return ConversationView([], list(incoming), conversation_id if store else None)
    conv = await asyncio.to_thread(store.get, conversation_id, with_messages=True)
    if conv is None:
        return ConversationView([], list(incoming), conversation_id)
    stored = [m.as_openai() for m in conv.messages or ()]
    system = [{"role": "system", "content": conv.system}] if conv.system else []
    incoming = list(incoming)
    if incoming and incoming[0].get("role") == "system" and system:
        system = [incoming.pop(0)]  # the client's system prompt replaces the stored one
    n, k = len(stored), len(incoming)
    if n and k > n and _same_turns(incoming[:n], stored):
        incoming = incoming[n:]
    elif 1 < k <= n and incoming[-1].get("role") == "user" and _same_turns(incoming, stored):
        # A retry of a turn already stored (the client gave up waiting): answer it again
        # from the history before it, and store nothing twice.
        return ConversationView(system + stored[: k - 1], incoming[-1:], conv.id, retry=True)
    if not system:
        stored, incoming = _system_in_place(stored, incoming)
    return ConversationView(system + stored, incoming, conv.id)


def _system_in_place(
    stored: list[dict[str, Any]], incoming: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The first turn stored its system prompt as a message: a client that sends its system
    prompt with each new turn (Anthropic's ``system``, Responses' ``instructions``) replaces
    it in place, so an unchanged one keeps the prompt prefix (and is not stored twice)."""
    if (
        len(incoming) > 1
        and incoming[0].get("role") == "system"
        and stored
        and stored[0].get("role") == "system"
    ):
        return [incoming[0], *stored[1:]], incoming[1:]
    return stored, incoming


def _same_turns(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> bool:
    """``a`` matches the start of ``b`` turn by turn (role and text; parts flattened)."""

    def norm(m: Mapping[str, Any]) -> tuple[str, str]:
        return str(m.get("role")), content_text(m.get("content")).strip()

    return len(a) <= len(b) and all(norm(x) == norm(y) for x, y in zip(a, b, strict=False))


class CompactionMemory:
    """The last compaction per conversation: between compactions only appends happen."""

    def __init__(self, limit: int = _MAX_COMPACTIONS) -> None:
        self.limit = limit
        self._states: OrderedDict[str, CompactionState] = OrderedDict()

    @staticmethod
    def key(
        engine: str, model: str, conversation_id: str | None, messages: Sequence[Mapping[str, Any]]
    ) -> str:
        """The conversation id, or for a client that resends its whole history, its system
        prompt and first turn (the state's own fingerprint then checks the history)."""
        if conversation_id:
            return conversation_id
        head = [m for m in messages if m.get("role") in ("system", "developer")][:1]
        head += [m for m in messages if m.get("role") == "user"][:1]
        digest = hashlib.sha1(json.dumps(head, sort_keys=True, default=str).encode()).hexdigest()
        return f"{engine}:{model}:{digest[:16]}"

    def get(self, key: str) -> CompactionState | None:
        return self._states.get(key)

    def put(self, key: str, state: CompactionState | None) -> None:
        if state is None:
            self._states.pop(key, None)
            return
        self._states[key] = state
        self._states.move_to_end(key)
        while len(self._states) > self.limit:
            self._states.popitem(last=False)
