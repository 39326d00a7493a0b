"""autotune's own request headers, read the same way on every API face (one FastAPI dependency).

``X-Conversation-Id`` is checked against the one id pattern (:mod:`autotune.ground.ids`)
wherever it arrives, with one message, so an id one face refuses is refused by all, and an
id one face stores can be read back through ``/api/conversations/{id}``. A bad value is a
400 naming the header, in the shape of the API the request was sent to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, Header

from autotune.ground.errors import InvalidRequest
from autotune.ground.ids import CONVERSATION_ID_PATTERN, CONVERSATION_ID_RULE, is_conversation_id
from autotune.pipeline import ChatInput

__all__ = [
    "CONVERSATION_HEADER",
    "HEADERS",
    "OVERFLOW_HEADER",
    "PROFILE_HEADER",
    "AutotuneHeaders",
    "Overflow",
    "Profile",
]

Profile = Literal["fast", "balanced", "quality"]
Overflow = Literal["refuse", "truncate-oldest"]


#: The headers, declared once (with their documentation in the OpenAPI schema).
PROFILE_HEADER: Any = Header(
    None, description="Tuning profile for this request (default: the server's)."
)
CONVERSATION_HEADER: Any = Header(
    None,
    description=f"Store and resume this conversation ({CONVERSATION_ID_RULE}: "
    f"{CONVERSATION_ID_PATTERN}).",
)
OVERFLOW_HEADER: Any = Header(
    None,
    description="When the newest message cannot fit: refuse with a 400 (the default) or cut "
    "its start and say so in X-Autotune-Plan.",
)


@dataclass(frozen=True)
class AutotuneHeaders:
    """``X-Autotune-Profile``, ``X-Conversation-Id`` and ``X-Autotune-Overflow``, read by
    :meth:`read` (a route's ``Call`` reads them the same way, in the same dependency). The
    dependencies are ``async``: FastAPI runs a plain one in its thread pool, which costs a
    request ~0.1 ms."""

    profile: Profile | None = None
    conversation_id: str | None = None
    overflow: Overflow | None = None

    @classmethod
    async def read(
        cls,
        x_autotune_profile: Profile | None = PROFILE_HEADER,
        x_conversation_id: str | None = CONVERSATION_HEADER,
        x_autotune_overflow: Overflow | None = OVERFLOW_HEADER,
    ) -> AutotuneHeaders:
        return cls.checked(x_autotune_profile, x_conversation_id, x_autotune_overflow)

    @classmethod
    def checked(
        cls, profile: Profile | None, conversation_id: str | None, overflow: Overflow | None
    ) -> AutotuneHeaders:
        """The headers as sent; a 400 naming ``X-Conversation-Id`` when it breaks the id rule."""
        if conversation_id is not None and not is_conversation_id(conversation_id):
            raise InvalidRequest(
                f"X-Conversation-Id {conversation_id[:100]!r} is not a conversation id: an id "
                f"is {CONVERSATION_ID_RULE}.",
                param="X-Conversation-Id",
            )
        return cls(profile, conversation_id, overflow)

    def chat(
        self, messages: list[dict[str, Any]], model: str | None, params: dict[str, Any], **more: Any
    ) -> ChatInput:
        """A chat through the pipeline, with what these headers ask for (``more``: the rest
        of :class:`~autotune.pipeline.ChatInput`, which may set the overflow itself)."""
        more.setdefault("overflow", self.overflow)
        return ChatInput(
            messages=messages,
            model=model,
            params=params,
            profile=self.profile,
            conversation_id=more.pop("conversation_id", self.conversation_id),
            **more,
        )

    def without_conversation(self, why: str) -> AutotuneHeaders:
        """For a route that keeps no conversation: a 400 when one was asked for (never
        ignored), else these headers."""
        if self.conversation_id is not None:
            raise InvalidRequest(
                f"X-Conversation-Id cannot be honoured here: {why}.", param="X-Conversation-Id"
            )
        return self


#: ``headers: AutotuneHeaders = HEADERS`` in a route's signature.
HEADERS = Depends(AutotuneHeaders.read)
