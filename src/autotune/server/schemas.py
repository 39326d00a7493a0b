"""The OpenAI chat request schema autotune validates; every other top-level field is checked by
the table in :mod:`autotune.server.fields`. A message declares every field it may hold: any
other, anywhere inside it, is a 400 naming its path (what clients echo back from a reply is
accepted)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from autotune.ground.ids import CONVERSATION_ID_PATTERN
from autotune.server.fields import check_fields

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "Closed",
    "ConversationCreate",
    "Open",
    "echoed",
    "forwardable_params",
    "tagged",
    "text_or_list",
]


class Open(BaseModel):
    """A part of a request whose other fields are checked elsewhere (a field table)."""

    model_config = ConfigDict(extra="allow")


class Closed(BaseModel):
    """A part of a request with every field declared: any other is a 400 naming its path."""

    model_config = ConfigDict(extra="forbid")


def text_or_list(value: Any) -> str:
    """The discriminator of ``str | list[...]`` unions: validated as the one the value is, so
    a problem inside the list is reported as itself (not first as "not a string")."""
    return "a string" if isinstance(value, str) else "a list"


def echoed(description: str = "echoed from a reply; changes nothing") -> Any:
    """A field clients send back as a reply gave it: accepted, never forwarded."""
    return Field(None, exclude=True, description=description)


class FunctionCall(Closed):
    name: str
    arguments: str


class ToolCall(Closed):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ImageURL(Closed):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class InputAudio(Closed):
    data: str
    format: str


class FileRef(Closed):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class _Part(Closed):
    prompt_cache_breakpoint: Any = echoed("autotune's prompt caching is automatic")


class TextPart(_Part):
    type: Literal["text"]
    text: str


class ImagePart(_Part):
    type: Literal["image_url"]
    image_url: ImageURL


class AudioPart(_Part):
    type: Literal["input_audio"]
    input_audio: InputAudio


class FilePart(_Part):
    type: Literal["file"]
    file: FileRef


def tagged(key: str, kinds: tuple[str, ...], noun: str) -> Discriminator:
    """A discriminator on ``key`` whose tags are ``"<value> <noun>"`` (a space: never a key,
    so error paths leave them out); any other value is one error that names the choices."""

    def tag(value: Any) -> str | None:
        kind = value.get(key) if isinstance(value, dict) else getattr(value, key, None)
        return f"{kind} {noun}" if kind in kinds else None

    return Discriminator(
        tag,
        custom_error_type=f"invalid_{key}",
        custom_error_message=f"{key} must be one of {', '.join(kinds)}",
    )


ContentPart = Annotated[
    Annotated[TextPart, Tag("text part")]
    | Annotated[ImagePart, Tag("image_url part")]
    | Annotated[AudioPart, Tag("input_audio part")]
    | Annotated[FilePart, Tag("file part")],
    tagged("type", ("text", "image_url", "input_audio", "file"), "part"),
]


Content = Annotated[
    Annotated[str, Tag("a string")] | Annotated[list[ContentPart], Tag("a list")],
    Discriminator(text_or_list),
]


class SystemMessage(Closed):
    role: Literal["system", "developer"]
    content: Content
    name: str | None = None


class UserMessage(Closed):
    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(Closed):
    """Content may be left out only when the message carries tool calls. What the official
    client echoes from a reply (``refusal``, ``annotations``, ``audio``; autotune's own
    ``reasoning_content``) is accepted."""

    role: Literal["assistant"]
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None
    refusal: str | None = echoed()
    annotations: list[Any] | None = echoed()
    audio: dict[str, Any] | None = echoed()
    function_call: dict[str, Any] | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _content_or_tool_calls(self) -> AssistantMessage:
        if self.function_call is not None:
            raise ValueError(
                "the deprecated functions API is not offered: send 'tool_calls' instead of "
                "'function_call'"
            )
        if self.content is None and not self.tool_calls:
            raise ValueError("an assistant message needs 'content' or 'tool_calls'")
        return self


class ToolMessage(Closed):
    role: Literal["tool"]
    content: Content
    tool_call_id: str


ChatMessage = Annotated[
    Annotated[SystemMessage, Tag("system message")]
    | Annotated[SystemMessage, Tag("developer message")]
    | Annotated[UserMessage, Tag("user message")]
    | Annotated[AssistantMessage, Tag("assistant message")]
    | Annotated[ToolMessage, Tag("tool message")],
    tagged("role", ("system", "developer", "user", "assistant", "tool"), "message"),
]


class FunctionDef(Open):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(Open):
    type: Literal["function"]
    function: FunctionDef


class StreamOptions(Open):
    include_usage: bool | None = None


class ChatCompletionRequest(Open):
    """``POST /v1/chat/completions``. ``model`` may be left out: the default model answers."""

    model: str | None = Field(None, min_length=1, max_length=512)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1, le=16)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None


class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, pattern=CONVERSATION_ID_PATTERN)
    title: str | None = Field(None, max_length=500)
    model: str | None = Field(None, max_length=512)
    profile: Literal["fast", "balanced", "quality"] | None = None
    system: str | None = None


def forwardable_params(
    request: ChatCompletionRequest, *, pass_unknown: bool = False
) -> dict[str, Any]:
    """The fields to send to the engine (see :mod:`autotune.server.fields`); a field autotune
    cannot honour is refused with a 400 naming it, never dropped."""
    data = request.model_dump(exclude_unset=True, exclude_none=True, by_alias=True)
    return check_fields(data, pass_unknown=pass_unknown)
