"""What a slash command may use of a running chat: :class:`ChatSession`, a small protocol.

:mod:`autotune.chat.repl` implements it (the loop, the prompt, the replies) and
:mod:`autotune.chat.slash` programs against it, so neither knows the other's insides and
the commands can be driven by anything that offers these few things.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Console

from autotune.chat.commands import SessionMetrics

if TYPE_CHECKING:
    from autotune.runtime import Runtime

__all__ = ["ChatSession", "ChatState"]


@dataclass
class ChatState:
    """Where a chat is: its model, engine, profile and conversation."""

    model: str = ""
    engine: str = ""
    profile: str = "balanced"
    conversation_id: str = ""
    #: The conversation exists in the store (it is created with the first message).
    stored: bool = False
    metrics: SessionMetrics = field(default_factory=SessionMetrics)
    #: Conversation ids of the last /recall listing, for "/recall 2".
    listing: list[str] = field(default_factory=list)


class ChatSession(Protocol):
    """A running chat, as its slash commands see it."""

    runtime: Runtime
    state: ChatState
    #: A person at a terminal (prompts and progress bars), not a script.
    interactive: bool
    console: Console

    def say(self, message: str, style: str = "") -> None: ...

    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def error(self, message: str, hint: str | None = None) -> None: ...

    async def fit_ok(self, model: str, profile: str) -> bool:
        """False (and why) when the chat refuses this load; otherwise warn and go on."""
        ...

    async def ensure_conversation(self, **fields: Any) -> None:
        """Store the conversation if it is not yet; then set ``fields`` on it."""
        ...

    def use_model(self, engine: str, model: str) -> None:
        """Send the next messages to ``model`` on ``engine``."""
        ...

    def engine_label(self, engine: str) -> str:
        """How the chat names an engine."""
        ...
