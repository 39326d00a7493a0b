"""OpenAI's Responses request, typed: every field of an input item and of its parts declared.

Validated as the chat request is (:mod:`autotune.server.schemas`): an item or a content part
with a field outside the Responses request schema, or outside what clients send back from a
reply (Codex returns the output items it was given: ``id``, ``status``, ``annotations`` …),
is a 400 naming its path. Item and part types autotune does not translate pass validation
untyped and are refused by :func:`autotune.server.responses_wire.to_chat` with their type
named; top-level fields are checked by its table (:data:`~autotune.server.responses_wire.FIELDS`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from autotune.server.schemas import Closed, Open, echoed, text_or_list

__all__ = ["InputItem", "ResponsesRequest"]

_PARTS = ("input_text", "output_text", "text", "refusal", "input_image")
_ITEMS = ("message", "function_call", "function_call_output", "reasoning")
_CACHING = "autotune's prompt caching is automatic"


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


def _part_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind in ("input_text", "output_text", "text"):
        return "text part"
    return f"{kind} part" if kind in _PARTS else "other part"


Part = Annotated[
    Annotated[TextPart, Tag("text part")]
    | Annotated[RefusalPart, Tag("refusal part")]
    | Annotated[ImagePart, Tag("input_image part")]
    | Annotated[OtherPart, Tag("other part")],
    Discriminator(_part_kind),
]
Parts = Annotated[
    Annotated[str, Tag("a string")] | Annotated[list[Part], Tag("a list")],
    Discriminator(text_or_list),
]


class MessageItem(Closed):
    """A message: as sent (``EasyInputMessage``), or an output message sent back."""

    type: Literal["message"] = "message"
    role: str
    content: Parts
    id: str | None = echoed()
    status: str | None = echoed()
    phase: Any = echoed()


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


class FunctionCallOutputItem(Closed):
    type: Literal["function_call_output"]
    call_id: str
    output: Parts
    id: str | None = echoed()
    status: str | None = echoed()
    name: str | None = echoed()
    namespace: str | None = echoed()
    caller: Any = echoed()


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


def _item_kind(value: Any) -> str:
    kind = value.get("type", "message") if isinstance(value, dict) else getattr(value, "type", None)
    return f"{kind} item" if kind in _ITEMS else "other item"


InputItem = Annotated[
    Annotated[MessageItem, Tag("message item")]
    | Annotated[FunctionCallItem, Tag("function_call item")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output item")]
    | Annotated[ReasoningItem, Tag("reasoning item")]
    | Annotated[OtherItem, Tag("other item")],
    Discriminator(_item_kind),
]
Input = Annotated[
    Annotated[str, Tag("a string")] | Annotated[list[InputItem], Tag("a list")],
    Discriminator(text_or_list),
]


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
