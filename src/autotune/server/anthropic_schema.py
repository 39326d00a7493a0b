"""Anthropic's Messages request, typed: every field of a message and of its blocks declared.

Validated as the OpenAI chat request is (:mod:`autotune.server.schemas`): a message or a
content block with a field outside Anthropic's request schema, or outside what the official
client sends back from a reply (``citations`` on a text block, ``caller`` on a tool use), is
a 400 naming its path. Block types autotune does not translate pass validation untyped and are
refused by :func:`autotune.server.anthropic_wire.to_chat` with their type named; top-level
fields are checked by its table (:data:`autotune.server.anthropic_wire.FIELDS`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from autotune.server.schemas import Closed, Open, echoed, tagged, text_or

__all__ = ["CountTokensRequest", "MessageParam", "MessagesRequest", "ToolParam"]


class _Block(Closed):
    cache_control: dict[str, Any] | None = echoed("autotune's prompt caching is automatic")


class TextBlock(_Block):
    type: Literal["text"]
    text: str
    citations: list[Any] | None = echoed()


class ImageSource(Closed):
    type: str
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class ImageBlock(_Block):
    type: Literal["image"]
    source: ImageSource
    transformations: list[Any] | None = echoed("images are sent to the engine as they are")


class ToolUseBlock(_Block):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    caller: Any = echoed()
    toolset_name: str | None = echoed()


class ToolResultBlock(_Block):
    type: Literal["tool_result"]
    tool_use_id: str
    content: Blocks | None = None
    is_error: bool | None = None
    toolset_name: str | None = echoed()


class ThinkingBlock(Closed):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(Closed):
    type: Literal["redacted_thinking"]
    data: str


class OtherBlock(Open):
    """A block type autotune does not translate: refused by type, with its name."""

    type: Any = None


if TYPE_CHECKING:
    Block = (
        TextBlock
        | ImageBlock
        | ToolUseBlock
        | ToolResultBlock
        | ThinkingBlock
        | RedactedThinkingBlock
        | OtherBlock
    )
    Blocks = str | list[Block]
    SystemBlocks = str | list["SystemText"]
else:
    Block = tagged(
        "type",
        "block",
        *(TextBlock, ImageBlock, ToolUseBlock, ToolResultBlock, ThinkingBlock),
        RedactedThinkingBlock,
        other=OtherBlock,
    )
    Blocks = text_or(Block)
ToolResultBlock.model_rebuild()


class MessageParam(Closed):
    #: ``system`` among the messages: Claude Code sends its environment that way (it joins
    #: the system prompt, see anthropic_wire.to_messages).
    role: Literal["user", "assistant", "system"]
    content: Blocks


class SystemText(Closed):
    type: Literal["text"]
    text: str
    cache_control: dict[str, Any] | None = echoed("autotune's prompt caching is automatic")
    citations: list[Any] | None = echoed()


if not TYPE_CHECKING:
    SystemBlocks = text_or(SystemText)


class ToolParam(Open):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    type: str | None = None


class CountTokensRequest(Open):
    """``POST /v1/messages/count_tokens``."""

    model: str = Field(min_length=1, max_length=512)
    messages: list[MessageParam] = Field(min_length=1)
    system: SystemBlocks | None = None
    tools: list[ToolParam] | None = None
    tool_choice: dict[str, Any] | None = None
    thinking: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    """``POST /v1/messages``; every other top-level field is checked by anthropic_wire.FIELDS."""

    max_tokens: int = Field(ge=1)
    stream: bool | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    metadata: dict[str, Any] | None = None
