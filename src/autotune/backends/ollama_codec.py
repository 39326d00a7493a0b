"""Pure translation between the OpenAI chat shapes autotune runs and Ollama's native API, for
the Ollama backend: a chat request as ``/api/chat`` (every field translated or refused by name),
Ollama's reply lines as ``chat.completion.chunk`` dicts, its timings as engine stats, and its
model facts (expiry, per-layer head counts)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from autotune.ground.errors import UnsupportedOption, UpstreamError
from autotune.ground.types import ChatRequest, EngineStats, LoadSettings

__all__ = [
    "ENGINE",
    "RELOAD_THRESHOLD_MS",
    "ChunkWriter",
    "expiry",
    "first_int",
    "int_or_list",
    "ollama_chat_body",
    "ollama_stats",
    "parse_line",
]

ENGINE = "Ollama"

#: A cold load takes seconds; a warm request still reports a few ms of scheduler time in
#: ``load_duration`` (docs/api.md examples: 1.3–6.6 ms warm, 0.53–6.3 s cold). 100 ms sits between.
RELOAD_THRESHOLD_MS = 100.0

# OpenAI sampling fields that Ollama takes, under the same name, inside ``options``.
_SAME_NAME_OPTIONS = ("temperature", "top_p", "seed", "frequency_penalty", "presence_penalty")
# Ollama-native sampler options that some clients send alongside OpenAI fields (llama.cpp style).
_NATIVE_OPTIONS = (
    "top_k",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "repeat_last_n",
    "num_keep",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
)
# Fields that only steer transport or attribution and change nothing Ollama computes.
_NO_EFFECT = ("stream", "stream_options", "user")
_THINK_LEVELS = ("low", "medium", "high")


# --------------------------------------------------------------------------- request translation


def ollama_chat_body(request: ChatRequest) -> dict[str, Any]:
    """The ``/api/chat`` body for ``request``; :class:`UnsupportedOption` for what Ollama lacks."""
    options: dict[str, Any] = {}
    body: dict[str, Any] = {
        "model": request.model,
        "messages": _ollama_messages(request.messages),
        "stream": True,
    }
    for key, value in request.params.items():
        if value is None or key in _NO_EFFECT:
            continue
        translate = _PARAMS.get(key)
        if translate is None:
            raise UnsupportedOption(key, ENGINE, "it has no equivalent in Ollama's chat API")
        translate(_Param(key, value, request.params, body, options))
    if request.load is not None:
        options.update(_load_options(request.load))
    if options:
        body["options"] = options
    if request.keep_alive is not None:
        body["keep_alive"] = _keep_alive(request.keep_alive)
    return body


@dataclass(frozen=True)
class _Param:
    """One OpenAI request field on its way into the Ollama body or its ``options``."""

    key: str
    value: Any
    params: Mapping[str, Any]
    body: dict[str, Any]
    options: dict[str, Any]


def _as_option(p: _Param) -> None:
    p.options[p.key] = p.value


def _stop(p: _Param) -> None:
    p.options["stop"] = [p.value] if isinstance(p.value, str) else list(p.value)


def _max_tokens(p: _Param) -> None:
    # max_completion_tokens is the newer name; it wins when both are given.
    if p.key == "max_completion_tokens" or "max_completion_tokens" not in p.params:
        p.options["num_predict"] = p.value


def _response_format(p: _Param) -> None:
    fmt = _format_for(p.value)
    if fmt is not None:
        p.body["format"] = fmt


def _tools(p: _Param) -> None:
    p.body["tools"] = p.value


def _reasoning_effort(p: _Param) -> None:
    p.body["think"] = _think_for(p.value)


def _think(p: _Param) -> None:
    p.body["think"] = p.value  # Ollama's own field, passed by clients that know it


def _only_when(ok: Callable[[Any], bool], reason: str) -> Callable[[_Param], None]:
    """A field Ollama has no use for: accepted at the value that asks for nothing."""

    def check(p: _Param) -> None:
        if not ok(p.value):
            raise UnsupportedOption(p.key, ENGINE, reason)

    return check


_NO_LOGPROBS = _only_when(lambda v: not v, "autotune does not translate Ollama's native logprobs")

#: How each OpenAI field reaches Ollama; a field not listed here is refused.
_PARAMS: dict[str, Callable[[_Param], None]] = {
    **{key: _as_option for key in (*_SAME_NAME_OPTIONS, *_NATIVE_OPTIONS)},
    "stop": _stop,
    "max_tokens": _max_tokens,
    "max_completion_tokens": _max_tokens,
    "response_format": _response_format,
    "tools": _tools,
    "tool_choice": _only_when(
        lambda v: v == "auto", "Ollama always lets the model decide; only 'auto' is possible"
    ),
    "parallel_tool_calls": _only_when(
        lambda v: v is True, "Ollama cannot forbid parallel tool calls"
    ),
    "n": _only_when(lambda v: v == 1, "Ollama returns one choice per request"),
    "logprobs": _NO_LOGPROBS,
    "top_logprobs": _NO_LOGPROBS,
    "reasoning_effort": _reasoning_effort,
    "think": _think,
}


def _load_options(load: LoadSettings) -> dict[str, Any]:
    """num_ctx/num_batch/num_thread: load-time options, a changed value reloads the model.

    flash_attn and cache_type_k/v are never sent: on Ollama they are server env vars
    (OLLAMA_FLASH_ATTENTION, OLLAMA_KV_CACHE_TYPE), unknown options are ignored. n_ubatch has
    no Ollama option; n_parallel is OLLAMA_NUM_PARALLEL (env): neither is sent.
    """
    pairs = (("n_ctx", "num_ctx"), ("n_batch", "num_batch"), ("n_threads", "num_thread"))
    return {
        theirs: getattr(load, ours) for ours, theirs in pairs if getattr(load, ours) is not None
    }


def _keep_alive(seconds: float) -> int | float:
    # Ollama reads a JSON number as seconds and any negative number as "forever".
    if seconds < 0:
        return -1
    return int(seconds) if float(seconds).is_integer() else seconds


def _format_for(response_format: Any) -> Any:
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        if isinstance(schema, Mapping):
            return dict(schema)
        raise UnsupportedOption("response_format", ENGINE, "json_schema needs a 'schema' object")
    raise UnsupportedOption("response_format", ENGINE, f"unknown type {kind!r}")


def _think_for(effort: Any) -> bool | str:
    # Ollama's `think` takes true/false, or "low"/"medium"/"high" for models with levels (gpt-oss).
    if effort in _THINK_LEVELS:
        return str(effort)
    if effort == "none":
        return False
    raise UnsupportedOption("reasoning_effort", ENGINE, "Ollama takes none, low, medium or high")


def _ollama_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages in Ollama's shape; unknown keys are kept (Ollama ignores them)."""
    out: list[dict[str, Any]] = []
    tool_names: dict[str, str] = {}
    for i, message in enumerate(messages):
        msg = dict(message)
        if msg.get("role") == "developer":  # OpenAI's newer name; Ollama templates know "system"
            msg["role"] = "system"
        content = msg.get("content")
        if content is None:
            msg["content"] = ""
        elif isinstance(content, list):
            msg["content"], images = _split_parts(content, i)
            if images:
                msg["images"] = [*msg.get("images", []), *images]
        if msg.get("tool_calls"):
            msg["tool_calls"] = [
                _ollama_tool_call(call, i, tool_names) for call in msg["tool_calls"]
            ]
        if msg.get("role") == "tool" and "tool_name" not in msg:
            name = tool_names.get(str(msg.get("tool_call_id")))
            if name:
                msg["tool_name"] = name  # Ollama names the tool a result belongs to
        out.append(msg)
    return out


def _split_parts(parts: list[Any], index: int) -> tuple[str, list[str]]:
    texts: list[str] = []
    images: list[str] = []
    for part in parts:
        kind = part.get("type") if isinstance(part, Mapping) else None
        if kind == "text":
            texts.append(str(part.get("text", "")))
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url", "") if isinstance(ref, Mapping) else str(ref or "")
            if not url.startswith("data:") or "," not in url:
                raise UnsupportedOption(
                    f"messages[{index}].content", ENGINE, "images must be base64 data: URLs"
                )
            images.append(url.split(",", 1)[1])  # Ollama takes bare base64
        else:
            raise UnsupportedOption(
                f"messages[{index}].content", ENGINE, f"content part {kind!r} is not supported"
            )
    return "\n".join(texts), images


def _ollama_tool_call(call: Mapping[str, Any], index: int, names: dict[str, str]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    args = function.get("arguments")
    if isinstance(args, str):  # OpenAI sends a JSON string; Ollama wants the object
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            raise UnsupportedOption(
                f"messages[{index}].tool_calls", ENGINE, "arguments must be a JSON object"
            ) from None
    function["arguments"] = args if args is not None else {}
    if call.get("id") and function.get("name"):
        names[str(call["id"])] = str(function["name"])
    converted: dict[str, Any] = {"function": function}
    if call.get("id"):
        converted["id"] = call["id"]
    return converted


# --------------------------------------------------------------------------- response translation


def _ms(ns: Any) -> float | None:
    return ns / 1e6 if isinstance(ns, (int, float)) else None


def ollama_stats(final: Mapping[str, Any]) -> EngineStats:
    """:class:`EngineStats` from Ollama's final ``done`` message (nanoseconds → milliseconds)."""
    load_ms = _ms(final.get("load_duration"))
    keys = (
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
        "done_reason",
    )
    return EngineStats(
        # prompt_eval_count counts the whole prompt even on a cache hit (Go omits it when 0).
        prompt_tokens=final.get("prompt_eval_count"),
        cached_tokens=None,  # Ollama does not report it; a short prompt_eval_duration shows a hit
        prompt_ms=_ms(final.get("prompt_eval_duration")),
        completion_tokens=final.get("eval_count"),
        decode_ms=_ms(final.get("eval_duration")),
        load_ms=load_ms,
        total_ms=_ms(final.get("total_duration")),
        reloaded=None if load_ms is None else load_ms > RELOAD_THRESHOLD_MS,
        raw={k: final[k] for k in keys if k in final},
    )


class ChunkWriter:
    """Builds OpenAI ``chat.completion.chunk`` dicts for one streamed reply."""

    def __init__(self, model: str) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model = model
        self.role_sent = False
        self.tool_calls = 0

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }

    def delta(self, message: Mapping[str, Any]) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if not self.role_sent:
            delta["role"] = "assistant"
        if message.get("thinking"):
            delta["reasoning_content"] = message["thinking"]
        if message.get("content"):
            delta["content"] = message["content"]
        calls = message.get("tool_calls")
        if calls:
            delta["tool_calls"] = [self._tool_call(call) for call in calls]
        return delta

    def _tool_call(self, call: Mapping[str, Any]) -> dict[str, Any]:
        # Ollama sends each call whole, with arguments as an object; OpenAI streams a JSON string.
        function = call.get("function") or {}
        out = {
            "index": self.tool_calls,
            "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {
                "name": function.get("name", ""),
                "arguments": json.dumps(function.get("arguments") or {}, ensure_ascii=False),
            },
        }
        self.tool_calls += 1
        return out


def expiry(value: datetime | None) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    seconds = value.timestamp()
    # keep_alive < 0 shows as an expiry centuries ahead (`ollama ps` prints "Forever").
    return None if seconds - time.time() > 100 * 365 * 86400 else seconds


def first_int(value: Any) -> int | None:
    if isinstance(value, list):  # per-layer arrays: the largest layer decides head sizes
        numbers = [v for v in value if isinstance(v, (int, float))]
        return int(max(numbers)) if numbers else None
    return int(value) if isinstance(value, (int, float)) else None


def int_or_list(value: Any) -> int | list[int] | None:
    if isinstance(value, list):
        return [int(v) for v in value]
    return int(value) if isinstance(value, (int, float)) else None


def parse_line(line: str) -> dict[str, Any]:
    try:
        part = json.loads(line)
    except json.JSONDecodeError:
        raise UpstreamError(502, f"unreadable reply line: {line[:120]!r}", ENGINE) from None
    if not isinstance(part, dict):
        raise UpstreamError(502, f"unexpected reply line: {line[:120]!r}", ENGINE)
    return part
