"""What a client asked for, as the pipeline takes it, with the checks that need no engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from autotune.backends.base import Backend
from autotune.ground.decision import Decision
from autotune.ground.errors import InvalidRequest
from autotune.ground.profiles import Profile, get_profile
from autotune.ground.types import ChatRequest, Chunk
from autotune.pipeline.decide import OVERFLOW_POLICIES

__all__ = ["ChatInput", "Opener", "validate"]

#: Opens the engine stream of a planned request; the default is ``backend.stream_chat``
#: (the completions entry point opens ``backend.stream_completion`` instead).
Opener = Callable[[Backend, ChatRequest], AsyncIterator[Chunk]]


@dataclass
class ChatInput:
    """One chat request as a client put it."""

    messages: list[dict[str, Any]]
    model: str | None = None
    #: OpenAI fields other than model/messages/stream (never None values).
    params: dict[str, Any] = field(default_factory=dict)
    profile: str | None = None
    conversation_id: str | None = None
    #: Store this turn in the conversation (defaults to: a conversation id was given).
    persist: bool | None = None
    source: str = "api"
    #: What to do when the newest message cannot fit: "refuse" (400) or "truncate-oldest".
    overflow: str | None = None
    #: How to open the engine stream once planned (None: a chat stream).
    opener: Opener | None = None
    #: The least context the client asks for (Ollama's ``num_ctx``): a floor on the planner's
    #: need, still through the sticky buckets and the profile's cap — never a reload per request.
    min_context: int | None = None
    #: Seconds the model stays loaded after this request (negative: forever; 0: unload when
    #: idle); None keeps AUTOTUNE_KEEP_ALIVE.
    keep_alive: float | None = None
    #: Whether the client streams the reply (None: the face does not say). Not streamed and
    #: without a token limit, a request is background work (pipeline/admission.py).
    streamed: bool | None = None
    #: A text completion's prompt, which the engine reads as it is (None: a chat, rendered by
    #: the model's template): what KV look-ups tokenize.
    raw_prompt: str | None = None
    #: Look up saved KV for this prompt (off for fill-in-the-middle: the engine builds that
    #: prompt itself).
    kv_lookup: bool = True
    #: What the face did with the client's request that the plan should say (fields accepted,
    #: tools dropped or flattened, system messages moved): added to the plan's decisions.
    notes: list[Decision] = field(default_factory=list)
    #: ``max_tokens`` is a ceiling, not a demand (Anthropic's required field, where agents
    #: send their own model's maximum): above what the context allows it is capped to it and
    #: the plan says so, instead of a 400.
    cap_max_tokens: bool = False


def validate(inp: ChatInput, default_profile: str) -> tuple[Profile, str]:
    """The request's profile and overflow policy; a 400 naming the field when either is
    unknown or there is no message at all."""
    if not inp.messages:
        raise InvalidRequest("messages must hold at least one message.", param="messages")
    try:
        profile = get_profile(inp.profile or default_profile)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="X-Autotune-Profile") from None
    overflow = (inp.overflow or "refuse").strip().lower()
    if overflow not in OVERFLOW_POLICIES:
        raise InvalidRequest(
            f"Unknown overflow policy {inp.overflow!r}; choose one of "
            f"{', '.join(OVERFLOW_POLICIES)}.",
            param="X-Autotune-Overflow",
        )
    return profile, overflow
