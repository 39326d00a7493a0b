"""The OpenAI chat request schema autotune validates; every other top-level field is checked by
the table in :mod:`autotune.server.fields`. A message declares every field it may hold: any
other, anywhere inside it, is a 400 naming its path (what clients echo back from a reply is
accepted)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, model_validator

from autotune.ground.ids import CONVERSATION_ID_PATTERN
from autotune.server.fields import check_fields

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "Closed",
    "ConversationCreate",
    "Open",
    "as_sent",
    "echoed",
    "forwardable_params",
    "tagged",
    "text_or",
]


class Open(BaseModel):
    """A part of a request whose other fields are checked elsewhere (a field table)."""

    model_config = ConfigDict(extra="allow")


class Closed(BaseModel):
    """A part of a request with every field declared: any other is a 400 naming its path."""

    model_config = ConfigDict(extra="forbid")


def text_or(item: Any) -> Any:
    """``str | list[item]``, validated as the one the value is (so a problem inside the list is
    reported as itself, not first as "not a string")."""
    return Annotated[
        Annotated[str, Tag("a string")] | Annotated[list[item], Tag("a list")],
        Discriminator(lambda value: "a string" if isinstance(value, str) else "a list"),
    ]


def tagged(
    key: str,
    noun: str,
    *members: type[BaseModel],
    other: type[BaseModel] | None = None,
    default: str | None = None,
) -> Any:
    """A union of ``members`` chosen by the value of ``key`` (each member declares its values
    as a ``Literal``; ``default`` when the key is left out). Tags are ``"<value> <noun>"``
    (with a space: never a key, so error paths leave them out). A value no member has goes
    to ``other`` (to be refused by name later), or is one error naming the choices."""
    tags: dict[Any, str] = {}
    choices: list[Any] = []
    for member in members:
        values = get_args(member.model_fields[key].annotation)
        tags.update({value: f"{values[0]} {noun}" for value in values})
        choices.append(Annotated[member, Tag(f"{values[0]} {noun}")])
    if other is not None:
        choices.append(Annotated[other, Tag(f"other {noun}")])

    def pick(value: Any) -> str | None:
        kind = value.get(key, default) if isinstance(value, dict) else getattr(value, key, None)
        return tags.get(kind, f"other {noun}" if other is not None else None)

    message = f"{key} must be one of {', '.join(map(str, tags))}"
    return Annotated[
        Union[tuple(choices)],  # noqa: UP007 (built at run time)
        Discriminator(pick, custom_error_type=f"invalid_{key}", custom_error_message=message),
    ]


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


if TYPE_CHECKING:
    ContentPart = TextPart | ImagePart | AudioPart | FilePart
    Content = str | list[ContentPart]
else:
    ContentPart = tagged("type", "part", TextPart, ImagePart, AudioPart, FilePart)
    Content = text_or(ContentPart)


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


if TYPE_CHECKING:
    ChatMessage = SystemMessage | UserMessage | AssistantMessage | ToolMessage
else:
    ChatMessage = tagged(
        "role", "message", SystemMessage, UserMessage, AssistantMessage, ToolMessage
    )


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


def as_sent(body: BaseModel) -> dict[str, Any]:
    """A request body as the client sent it: no defaults filled in, no ``None`` values."""
    return body.model_dump(exclude_unset=True, exclude_none=True, by_alias=True)


def forwardable_params(
    request: ChatCompletionRequest, *, pass_unknown: bool = False
) -> dict[str, Any]:
    """The fields to send to the engine (see :mod:`autotune.server.fields`); a field autotune
    cannot honour is refused with a 400 naming it, never dropped."""
    return check_fields(as_sent(request), pass_unknown=pass_unknown)
