"""Pure translation of Ollama's native requests into autotune's pipeline.

An Ollama ``/api/chat`` or ``/api/generate`` body becomes the pieces of a
:class:`~autotune.pipeline.ChatInput` — OpenAI-shaped messages, OpenAI/llama.cpp sampling
fields, the least context asked for, a keep-alive in seconds. Every field and option is in
one of the tables below: translated, or refused with a 400 that names it (never dropped
silently). The way back is :mod:`.ollama_reply` (replies) and :mod:`.ollama_models`
(listings).

The request bodies are the official ``ollama`` package's pydantic types (``ollama._types``),
with the few fields whose client-side shape differs from the wire (images are base64
strings on the wire, tools are free JSON schemas) overridden.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ollama import _types as ollama_types
from pydantic import ConfigDict, Field, ValidationError

from autotune.ground.errors import InvalidRequest

__all__ = [
    "OLLAMA_API_VERSION",
    "OLLAMA_PATHS",
    "ChatBody",
    "GenerateBody",
    "ModelBody",
    "PullBody",
    "Translated",
    "WireMessage",
    "WireToolCall",
    "chat_messages",
    "generate_messages",
    "parse_keep_alive",
    "translate",
    "validation_message",
]

#: The Ollama API version this face speaks (``GET /api/version``): clients gate features
#: such as ``think``, tool calls and JSON-schema ``format`` on it.
OLLAMA_API_VERSION = "0.12.0"
#: The paths of Ollama's API (docs/api.md), offered here or not: their errors, an unknown
#: route's 404 included, are answered in Ollama's shape.
OLLAMA_PATHS = (
    "/api/chat",
    "/api/generate",
    "/api/embed",
    "/api/embeddings",
    "/api/tags",
    "/api/show",
    "/api/ps",
    "/api/pull",
    "/api/push",
    "/api/create",
    "/api/copy",
    "/api/delete",
    "/api/blobs",
    "/api/version",
)

_THINK_LEVELS = ("low", "medium", "high")
_ROLES = ("system", "user", "assistant", "tool")
#: How base64 image data starts, by type (the data: URL llama.cpp reads names it).
_IMAGE_HEADS = (("/9j/", "image/jpeg"), ("R0lG", "image/gif"), ("UklGR", "image/webp"))
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


# --------------------------------------------------------------------------- request bodies


class WireToolCall(ollama_types.Message.ToolCall):
    """A tool call in a message, with the ``id`` newer Ollama versions add."""

    id: str | None = None


class WireMessage(ollama_types.Message):
    """A chat message as it arrives: ``images`` are base64 strings, unknown keys refused."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] | None = None  # type: ignore[assignment]
    tool_calls: list[WireToolCall] | None = None
    tool_call_id: str | None = None


class ChatBody(ollama_types.ChatRequest):
    """``POST /api/chat``; ``stream`` defaults to true, as Ollama's does.

    Two fields Open WebUI's Ollama payload carries outside Ollama's schema are taken, not
    refused (Ollama ignores unknown fields): ``metadata``, its own bookkeeping (chat and
    message ids, the task), which changes nothing; and a top-level ``num_predict``, where its
    payload puts a request's ``max_tokens`` — honoured as ``options.num_predict`` (unless that
    is set), the limit Open WebUI meant for its background tasks."""

    model_config = ConfigDict(extra="forbid")

    messages: list[WireMessage] | None = None
    tools: list[dict[str, Any]] | None = None  # type: ignore[assignment]
    options: dict[str, Any] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    metadata: dict[str, Any] | None = Field(None, exclude=True)
    num_predict: int | None = Field(None, exclude=True)


class GenerateBody(ollama_types.GenerateRequest):
    """``POST /api/generate`` (non-raw: the prompt is a user message through the chat path)."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] | None = None  # type: ignore[assignment]
    options: dict[str, Any] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)


class ModelBody(ollama_types.ShowRequest):
    """``POST /api/show``: ``model`` (``name`` is its old spelling)."""

    model: str | None = Field(None, min_length=1)  # type: ignore[assignment]
    name: str | None = Field(None, min_length=1)
    verbose: bool | None = None


class PullBody(ollama_types.PullRequest):
    """``POST /api/pull``: ``model`` (or ``name``); ``insecure`` has no meaning for the hub."""

    model: str | None = Field(None, min_length=1)  # type: ignore[assignment]
    name: str | None = Field(None, min_length=1)


# --------------------------------------------------------------------------- options


def _as_option(param: str) -> Any:
    def apply(value: Any, out: Translated) -> None:
        out.params[param] = value

    return apply


def _stop(value: Any, out: Translated) -> None:
    out.params["stop"] = [value] if isinstance(value, str) else list(value)


def _num_predict(value: Any, out: Translated) -> None:
    # -1: no limit, -2: until the context is full; both are "no max_tokens" here.
    if value == 0:
        raise InvalidRequest(
            "options.num_predict 0 asks for no reply; send a positive number or -1.",
            param="options.num_predict",
        )
    if value > 0:
        out.params["max_tokens"] = value


def _num_ctx(value: Any, out: Translated) -> None:
    if value <= 0:
        raise InvalidRequest("options.num_ctx must be a positive number of tokens.")
    out.min_context = value


_LOAD_TIME = (
    "a load-time setting autotune's planner chooses for this machine and model "
    "(it is never reloaded per request)"
)
#: Ollama options autotune cannot honour, and why (the 400 says it).
REFUSED_OPTIONS: dict[str, str] = {
    **{
        name: _LOAD_TIME
        for name in (
            "numa",
            "num_batch",
            "num_gpu",
            "main_gpu",
            "low_vram",
            "f16_kv",
            "logits_all",
            "vocab_only",
            "use_mmap",
            "use_mlock",
            "embedding_only",
        )
    },
    "num_thread": _LOAD_TIME + "; set AUTOTUNE_THREADS instead",
    "num_keep": "autotune fits the context itself (history is compacted rarely, the newest "
    "message is never cut)",
    "tfs_z": "tail-free sampling was removed from llama.cpp",
    "penalize_newline": "llama.cpp no longer has this penalty",
}

#: Ollama options autotune applies: the OpenAI or llama.cpp field each becomes.
OPTIONS: dict[str, Any] = {
    **{
        name: _as_option(name)
        for name in (
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "typical_p",
            "repeat_penalty",
            "repeat_last_n",
            "presence_penalty",
            "frequency_penalty",
            "mirostat",
            "mirostat_tau",
            "mirostat_eta",
            "seed",
        )
    },
    "stop": _stop,
    "num_predict": _num_predict,
    "num_ctx": _num_ctx,
}

#: Value ranges checked before anything is sent (the engine would otherwise answer 500).
_RANGES: dict[str, tuple[float, float]] = {
    "temperature": (0.0, 100.0),
    "top_p": (0.0, 1.0),
    "min_p": (0.0, 1.0),
    "typical_p": (0.0, 1.0),
    "top_k": (0, 1 << 20),
    "repeat_last_n": (-1, 1 << 20),
    "repeat_penalty": (0.0, 100.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
    "mirostat": (0, 2),
    "mirostat_tau": (0.0, 100.0),
    "mirostat_eta": (0.0, 100.0),
    "num_predict": (-2, 1 << 30),
    "num_ctx": (1, 1 << 30),
    "seed": (-(1 << 63), (1 << 64) - 1),
}


@dataclass
class Translated:
    """What an Ollama request becomes for the pipeline."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    min_context: int | None = None
    keep_alive: float | None = None
    #: The client asked for thinking to be left out.
    no_thinking: bool = False


def _options(options: Mapping[str, Any] | None, out: Translated) -> None:
    if not options:
        return
    unknown = [k for k in options if k not in OPTIONS and k not in REFUSED_OPTIONS]
    if unknown:
        raise InvalidRequest(
            f"Unknown option {unknown[0]!r}: it is not one of Ollama's options.",
            param=f"options.{unknown[0]}",
        )
    if isinstance(options.get("stop"), str):  # one stop string: taken as a list of one
        options = {**options, "stop": [options["stop"]]}
    try:  # the types Ollama declares for each option
        typed = ollama_types.Options.model_validate(options)
    except ValidationError as exc:
        problem = validation_message(exc.errors())
        raise InvalidRequest(problem.replace("'", "'options.", 1), param="options") from None
    for name, value in options.items():
        if value is None:
            continue
        if name in REFUSED_OPTIONS:
            raise InvalidRequest(
                f"options.{name} is not supported: {REFUSED_OPTIONS[name]}.",
                param=f"options.{name}",
            )
        # The client's Options type lacks some of the server's options (min_p): those keep
        # their raw value and are type-checked by their range below.
        value = getattr(typed, name, value)
        _check_range(name, value)
        OPTIONS[name](value, out)


def _check_range(name: str, value: Any) -> None:
    bounds = _RANGES.get(name)
    if bounds is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"options.{name} must be a number.", param=f"options.{name}")
    low, high = bounds
    if (isinstance(value, float) and not math.isfinite(value)) or not low <= value <= high:
        raise InvalidRequest(
            f"options.{name} {value!r} is out of range ({low:g} to {high:g}).",
            param=f"options.{name}",
        )


def parse_keep_alive(value: float | str | None) -> float | None:
    """Seconds a model stays loaded: a number of seconds or a Go duration (``"5m"``,
    ``"1h30m"``); negative is forever (-1), 0 unloads it once the reply is done."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidRequest("keep_alive must be seconds or a duration like 5m.")
    seconds = float(value) if isinstance(value, (int, float)) else _go_duration(value.strip())
    if not math.isfinite(seconds):
        raise InvalidRequest("keep_alive must be a finite duration.", param="keep_alive")
    return -1.0 if seconds < 0 else seconds


def _go_duration(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    try:
        return sign * float(body)  # a bare number: seconds
    except ValueError:
        pass
    parts = _GO_DURATION.findall(body)
    if not body or "".join(n + u for n, u in parts) != body:
        raise InvalidRequest(
            f"keep_alive {text!r} is not a duration: use seconds, or 30s, 5m, 1h30m; "
            "a negative value keeps the model loaded for ever.",
            param="keep_alive",
        )
    return sign * sum(float(n) * _GO_UNITS[u] for n, u in parts)


def _format(value: Any, out: Translated) -> None:
    if value in (None, ""):
        return
    if value == "json":
        out.params["response_format"] = {"type": "json_object"}
    elif isinstance(value, Mapping):
        schema = {"name": "response", "schema": dict(value)}
        out.params["response_format"] = {"type": "json_schema", "json_schema": schema}
    else:
        raise InvalidRequest(
            f'format {value!r} is not offered: send "json" or a JSON schema object.',
            param="format",
        )


def _think(value: Any, out: Translated) -> None:
    # think=true is the engine's default for a thinking model; false or a level is sent as
    # reasoning_effort, which llama.cpp and autotune's Ollama backend both understand.
    if value is None or value is True:
        return
    if value is False:
        out.params["reasoning_effort"] = "none"
        out.no_thinking = True
    elif value in _THINK_LEVELS:
        out.params["reasoning_effort"] = value
    else:
        raise InvalidRequest(
            f"think {value!r} is not offered: send true, false, or low, medium or high.",
            param="think",
        )


# --------------------------------------------------------------------------- messages


def _image_part(data: str, where: str) -> dict[str, Any]:
    data = data.strip()
    if data.startswith("data:"):
        return {"type": "image_url", "image_url": {"url": data}}
    if not data or not re.fullmatch(r"[A-Za-z0-9+/=\s]+", data):
        raise InvalidRequest(f"{where} must be base64-encoded image data.", param=where)
    mime = next((m for head, m in _IMAGE_HEADS if data.startswith(head)), "image/png")
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{data}"}}


def _content(message: WireMessage, where: str) -> str | list[dict[str, Any]]:
    text = message.content or ""
    if not message.images:
        return text
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    for i, image in enumerate(message.images):
        parts.append(_image_part(image, f"{where}.images[{i}]"))
    return parts


def _calls_out(message: WireMessage, index: int, pending: list[tuple[str, str]]) -> list[Any]:
    calls = []
    for j, call in enumerate(message.tool_calls or ()):
        call_id = call.id or f"call_{index}_{j}"
        pending.append((call.function.name, call_id))
        arguments = json.dumps(dict(call.function.arguments), ensure_ascii=False)
        calls.append(
            {
                "id": call_id,
                "type": "function",
                "function": {"name": call.function.name, "arguments": arguments},
            }
        )
    return calls


def _tool_call_id(message: WireMessage, pending: list[tuple[str, str]]) -> str | None:
    """The id of the call a tool result answers: given, else the first pending call of that
    tool (Ollama names the tool, OpenAI-shaped templates want the id)."""
    if message.tool_call_id:
        return message.tool_call_id
    for k, (name, call_id) in enumerate(pending):
        if message.tool_name is None or name == message.tool_name:
            del pending[k]
            return call_id
    return None


def chat_messages(messages: Sequence[WireMessage]) -> list[dict[str, Any]]:
    """Ollama chat messages as OpenAI chat messages (earlier turns' thinking is not sent
    back, as Ollama's own templates leave it out)."""
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.role not in _ROLES:
            raise InvalidRequest(
                f"{where}.role {message.role!r} is not one of {', '.join(_ROLES)}.",
                param=f"{where}.role",
            )
        converted: dict[str, Any] = {"role": message.role, "content": _content(message, where)}
        if message.role == "assistant" and message.tool_calls:
            converted["tool_calls"] = _calls_out(message, i, pending)
        if message.role == "tool":
            call_id = _tool_call_id(message, pending)
            if call_id:
                converted["tool_call_id"] = call_id
        out.append(converted)
    return out


def generate_messages(body: GenerateBody) -> list[dict[str, Any]]:
    """``/api/generate``'s system and prompt (and images) as chat messages; none without a
    prompt (Ollama then only loads or unloads the model, whatever ``system`` says)."""
    messages: list[dict[str, Any]] = []
    if not body.prompt and not body.images:
        return messages
    if body.system:
        messages.append({"role": "system", "content": body.system})
    user = WireMessage(role="user", content=body.prompt or "", images=body.images)
    messages.append({"role": "user", "content": _content(user, "prompt")})
    return messages


def is_completion(body: GenerateBody) -> bool:
    """A raw prompt or fill-in-the-middle: the engine completes text, no chat template."""
    return bool(body.raw or body.suffix)


def _refuse_generate_fields(body: GenerateBody) -> None:
    reasons = {
        "template": "autotune uses the model's own chat template",
        "context": "the tokenised context of an earlier reply is not kept; use /api/chat or "
        "the X-Conversation-Id header to continue a conversation",
        "width": "image generation is not offered",
        "height": "image generation is not offered",
        "steps": "image generation is not offered",
    }
    for name, why in reasons.items():
        value = getattr(body, name)
        if value not in (None, False, "", [], ()):
            raise InvalidRequest(f"{name!r} is not supported: {why}.", param=name)


def _refuse_in_completions(body: GenerateBody) -> None:
    """A raw prompt or a fill-in-the-middle request has no chat template to carry these."""
    if body.system:
        raise InvalidRequest(
            "'system' is not supported with raw or suffix: the prompt goes to the model as it "
            "is, with no template to put a system prompt in.",
            param="system",
        )
    if body.images:
        raise InvalidRequest(
            "'images' need the chat template: send them without raw.", param="images"
        )
    if not body.prompt and not body.suffix:
        raise InvalidRequest("A raw request needs a 'prompt'.", param="prompt")


def _common(body: ChatBody | GenerateBody, out: Translated) -> None:
    _options(body.options, out)
    _format(body.format, out)
    _think(body.think, out)
    out.keep_alive = parse_keep_alive(body.keep_alive)
    if body.logprobs:
        out.params["logprobs"] = True
        if body.top_logprobs:
            out.params["top_logprobs"] = body.top_logprobs
    elif body.top_logprobs:
        raise InvalidRequest("top_logprobs needs logprobs: true.", param="top_logprobs")


def translate(body: ChatBody | GenerateBody) -> Translated:
    """The pipeline's view of an Ollama chat or generate request; InvalidRequest (400) for
    anything autotune cannot honour, naming it."""
    out = Translated()
    if isinstance(body, GenerateBody):
        _refuse_generate_fields(body)
        if is_completion(body):
            _refuse_in_completions(body)
        else:
            out.messages = generate_messages(body)
    else:
        out.messages = chat_messages(body.messages or [])
        if body.tools:
            out.params["tools"] = [dict(tool) for tool in body.tools]
        if body.num_predict is not None and "num_predict" not in (body.options or {}):
            body = body.model_copy(
                update={"options": {**(body.options or {}), "num_predict": body.num_predict}}
            )
    _common(body, out)
    return out


# --------------------------------------------------------------------------- errors


def validation_message(errors: Sequence[Mapping[str, Any]]) -> str:
    """One sentence for the first problem pydantic found in a request."""
    if not errors:
        return "Invalid request."
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
    where = ".".join(loc) or "body"
    kind = first.get("type")
    if kind == "json_invalid":
        return "The request body is not valid JSON."
    if kind == "missing":
        return f"Missing required field {where!r}."
    if kind == "extra_forbidden":
        return f"Unknown field {where!r}: it is not part of Ollama's API."
    return f"Invalid value for {where!r}: {first.get('msg', 'invalid')}."
