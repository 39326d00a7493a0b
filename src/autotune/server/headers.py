"""autotune's own request headers, read the same way on every API face (in one dependency).

``X-Conversation-Id`` is checked against the one id pattern (:mod:`autotune.ground.ids`)
wherever it arrives, with one message, so an id one face refuses is refused by all, and an
id one face stores can be read back through ``/api/conversations/{id}``. A bad value is a
400 naming the header, in the shape of the API the request was sent to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

from autotune.ground.errors import InvalidRequest
from autotune.ground.ids import CONVERSATION_ID_PATTERN, CONVERSATION_ID_RULE, is_conversation_id
from autotune.pipeline import ChatInput

__all__ = ["HEADER_DOCS", "AutotuneHeaders", "Overflow", "Profile"]

Profile = Literal["fast", "balanced", "quality"]
Overflow = Literal["refuse", "truncate-oldest"]


_PROFILES = get_args(Profile)
_OVERFLOWS = get_args(Overflow)


def _refused(name: str, value: str, choices: tuple[str, ...]) -> InvalidRequest:
    return InvalidRequest(
        f"Invalid value {value[:100]!r} for {name!r}: choose {', '.join(choices)}.", param=name
    )


#: The headers in the OpenAPI schema (``openapi_extra=HEADER_DOCS`` on a face's routes): they
#: are read by :meth:`AutotuneHeaders.of`, not declared as FastAPI parameters.
HEADER_DOCS: dict[str, Any] = {
    "parameters": [
        {
            "name": "X-Autotune-Profile",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "enum": list(_PROFILES)},
            "description": "Tuning profile for this request (default: the server's).",
        },
        {
            "name": "X-Conversation-Id",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "pattern": CONVERSATION_ID_PATTERN},
            "description": f"Store and resume this conversation ({CONVERSATION_ID_RULE}).",
        },
        {
            "name": "X-Autotune-Overflow",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "enum": list(_OVERFLOWS)},
            "description": "When the newest message cannot fit: refuse with a 400 (the "
            "default) or cut its start and say so in X-Autotune-Plan.",
        },
    ]
}


@dataclass(frozen=True)
class AutotuneHeaders:
    """``X-Autotune-Profile``, ``X-Conversation-Id`` and ``X-Autotune-Overflow``, read from a
    request by :meth:`of` (in the one dependency every face route takes,
    :meth:`autotune.server.driver.Call.read`)."""

    profile: Profile | None = None
    conversation_id: str | None = None
    overflow: Overflow | None = None

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> AutotuneHeaders:
        """The headers of a request (a case-insensitive mapping, as Starlette's), checked."""
        profile = headers.get("x-autotune-profile")
        if profile is not None and profile not in _PROFILES:
            raise _refused("X-Autotune-Profile", profile, _PROFILES)
        overflow = headers.get("x-autotune-overflow")
        if overflow is not None and overflow not in _OVERFLOWS:
            raise _refused("X-Autotune-Overflow", overflow, _OVERFLOWS)
        return cls.checked(
            cast(Profile | None, profile),
            headers.get("x-conversation-id"),
            cast(Overflow | None, overflow),
        )

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
