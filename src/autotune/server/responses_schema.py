"""OpenAI's Responses request, typed: every field of an input item and of its parts declared.

Validated as the chat request is (:mod:`autotune.server.schemas`): an item or a content part
with a field outside the Responses request schema, or outside what clients send back from a
reply (Codex returns the output items it was given: ``id``, ``status``, ``annotations`` …),
is a 400 naming its path. Item and part types autotune does not translate pass validation
untyped and are refused by :func:`autotune.server.responses_wire.to_chat` with their type
named; top-level fields are checked by its table (:data:`~autotune.server.responses_wire.FIELDS`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from autotune.server.schemas import Closed, Open, echoed, tagged, text_or

__all__ = ["InputItem", "ResponsesRequest"]

_CACHING = "autotune's prompt caching is automatic"


#: Codex sends this on every input item: its own bookkeeping, read by nobody but itself.
_CODEX_METADATA = "Codex's own item metadata; changes nothing"


class TextPart(Closed):
    type: Literal["input_text", "output_text", "text"]
    text: str
    annotations: list[Any] | None = echoed()
    logprobs: list[Any] | None = echoed()
    prompt_cache_breakpoint: Any = echoed(_CACHING)


class RefusalPart(Closed):
    type: Literal["refusal"]
    refusal: str


class ImagePart(Closed):
    type: Literal["input_image"]
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high", "original"] | None = None
    prompt_cache_breakpoint: Any = echoed(_CACHING)


class OtherPart(Open):
    """A part type autotune does not translate: refused by type, with its name."""

    type: Any = None


if TYPE_CHECKING:
    Part = TextPart | RefusalPart | ImagePart | OtherPart
    Parts = str | list[Part]
else:
    Part = tagged("type", "part", TextPart, RefusalPart, ImagePart, other=OtherPart)
    Parts = text_or(Part)


class MessageItem(Closed):
    """A message: as sent (``EasyInputMessage``), or an output message sent back."""

    type: Literal["message"] = "message"
    role: str
    content: Parts
    id: str | None = echoed()
    status: str | None = echoed()
    phase: Any = echoed()
    internal_chat_message_metadata_passthrough: Any = echoed(_CODEX_METADATA)


class FunctionCallItem(Closed):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = echoed()
    status: str | None = echoed()
    namespace: str | None = echoed()
    caller: Any = echoed()
    async_: Any = Field(None, alias="async", exclude=True)
    internal_chat_message_metadata_passthrough: Any = echoed(_CODEX_METADATA)


class FunctionCallOutputItem(Closed):
    type: Literal["function_call_output"]
    call_id: str
    output: Parts
    id: str | None = echoed()
    status: str | None = echoed()
    name: str | None = echoed()
    namespace: str | None = echoed()
    caller: Any = echoed()
    internal_chat_message_metadata_passthrough: Any = echoed(_CODEX_METADATA)


class ReasoningItem(Closed):
    """A previous turn's reasoning, sent back: accepted, never part of the next prompt."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[Any] | None = None
    content: list[Any] | None = None
    encrypted_content: str | None = None
    status: str | None = None


class OtherItem(Open):
    """An item type autotune does not translate: refused by type, with its name."""

    type: Any = None


if TYPE_CHECKING:
    InputItem = MessageItem | FunctionCallItem | FunctionCallOutputItem | ReasoningItem | OtherItem
    Input = str | list[InputItem]
else:
    InputItem = tagged(
        "type",
        "item",
        *(MessageItem, FunctionCallItem, FunctionCallOutputItem, ReasoningItem),
        other=OtherItem,
        default="message",
    )
    Input = text_or(InputItem)


class ResponsesRequest(Open):
    """``POST /v1/responses``; every other top-level field is checked by responses_wire.FIELDS."""

    model: str | None = Field(None, min_length=1, max_length=512)
    input: Input
    instructions: str | None = None
    stream: bool | None = None
    store: bool | None = None
    previous_response_id: str | None = Field(None, min_length=1, max_length=128)
    conversation: str | dict[str, Any] | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    truncation: Literal["auto", "disabled"] | None = None
