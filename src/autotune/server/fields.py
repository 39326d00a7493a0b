"""Every OpenAI chat-completions request field, and what autotune does with it: one table.

A field is **forwarded** to the engine in its terms (backends translate or refuse what their
engine lacks: Ollama's backend maps ``response_format`` to ``format``, for instance),
**owned** by autotune itself, **accepted** as metadata that changes nothing in the answer,
or **refused** with a 400 naming it. Nothing is dropped silently. A test checks that every
field of the ``openai`` package's request type is in :data:`FIELDS`, so a new OpenAI field
cannot slip through unclassified.

Fields outside OpenAI's schema are refused too (``unknown_parameter``), except the sampling
extensions local engines share (llama.cpp's ``top_k``, ``min_p`` …), unless
``AUTOTUNE_PASS_UNKNOWN_FIELDS`` lets them through to an engine that understands them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from autotune.ground.errors import InvalidRequest

__all__ = ["ENGINE_EXTENSIONS", "FIELDS", "Rule", "check_fields", "unknown_field"]

Check = Callable[[Any, Mapping[str, Any]], str | None]


@dataclass(frozen=True)
class Rule:
    """What happens to one field: ``forward`` | ``own`` | ``accept`` | ``refuse``."""

    action: str
    #: Why, in a sentence (the refusal's message, or the documentation's).
    why: str = ""
    #: For forwarded or accepted fields: returns a refusal reason for values autotune
    #: cannot honour, or None.
    check: Check | None = None


def _tool_choice(value: Any, body: Mapping[str, Any]) -> str | None:
    if body.get("tools"):
        names = {
            (t.get("function") or {}).get("name") for t in body["tools"] if isinstance(t, Mapping)
        }
        if isinstance(value, Mapping):
            name = (value.get("function") or {}).get("name")
            if name not in names:
                return f"it names the function {name!r}, which is not in 'tools'"
        return None
    if value == "required" or isinstance(value, Mapping):
        return "it asks for a tool call, but the request has no 'tools'"
    return None


def _only(*allowed: Any) -> Check:
    def check(value: Any, body: Mapping[str, Any]) -> str | None:
        if value in allowed:
            return None
        return f"{value!r} is not offered here (only {', '.join(map(repr, allowed))})"

    return check


def _text_only(value: Any, body: Mapping[str, Any]) -> str | None:
    if isinstance(value, list) and all(v == "text" for v in value):
        return None
    return "local engines here answer with text only"


_FORWARD = Rule("forward", "sent to the engine in its terms")
_METADATA = Rule("accept", "metadata for OpenAI's platform; it changes nothing in the answer")

FIELDS: dict[str, Rule] = {
    # the request itself
    "model": Rule("own", "the engine is chosen by model name"),
    "messages": Rule("own", "fitted into the context; the newest message is never cut"),
    "stream": Rule("own", "server-sent events, as OpenAI streams them"),
    "stream_options": Rule("own", "include_usage adds the engine's usage chunk"),
    # sampling and output, forwarded
    "temperature": _FORWARD,
    "top_p": _FORWARD,
    "max_tokens": Rule("forward", "also sizes the context (refused above the model's)"),
    "max_completion_tokens": Rule("forward", "as max_tokens"),
    "stop": _FORWARD,
    "seed": _FORWARD,
    "presence_penalty": _FORWARD,
    "frequency_penalty": _FORWARD,
    "logit_bias": _FORWARD,
    "logprobs": _FORWARD,
    "top_logprobs": _FORWARD,
    "n": Rule("forward", "refused above what the engine can answer at once"),
    "response_format": Rule("forward", "JSON mode and JSON schema, as grammar on llama.cpp"),
    "tools": Rule("forward", "refused for a model whose chat template has no tool support"),
    "tool_choice": Rule("forward", "checked against 'tools'", _tool_choice),
    "parallel_tool_calls": _FORWARD,
    "reasoning_effort": Rule("forward", "for engines with reasoning models (Ollama: think)"),
    # metadata
    "user": _METADATA,
    "metadata": _METADATA,
    "safety_identifier": _METADATA,
    "prompt_cache_key": Rule("accept", "autotune's prompt caching is automatic"),
    "prompt_cache_retention": Rule("accept", "autotune's prompt caching is automatic"),
    "prompt_cache_options": Rule("accept", "autotune's prompt caching is automatic"),
    "service_tier": Rule("accept", "a local engine has one tier", _only("auto", "default")),
    "store": Rule(
        "accept",
        "OpenAI's stored completions are not offered; X-Conversation-Id stores a conversation",
        _only(False),
    ),
    "modalities": Rule("accept", "text is the only output modality", _text_only),
    # refused: no local engine behind autotune does these
    "functions": Rule("refuse", "the deprecated functions API is not offered; use 'tools'"),
    "function_call": Rule(
        "refuse", "the deprecated functions API is not offered; use 'tool_choice'"
    ),
    "audio": Rule("refuse", "audio output is not offered by local engines here"),
    "prediction": Rule("refuse", "predicted outputs are not offered (autotune tunes speculation)"),
    "web_search_options": Rule("refuse", "web search is not offered by local engines"),
    "verbosity": Rule("refuse", "verbosity is a setting of OpenAI's own models"),
    "moderation": Rule("refuse", "moderation is a service of OpenAI's platform"),
}

#: Sampling fields outside OpenAI's schema that llama.cpp, vLLM, SGLang or Ollama take.
ENGINE_EXTENSIONS = frozenset(
    {
        "top_k",
        "min_p",
        "typical_p",
        "repeat_penalty",
        "repeat_last_n",
        "repetition_penalty",
        "penalty_last_n",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "dry_multiplier",
        "dry_base",
        "dry_allowed_length",
        "dry_penalty_last_n",
        "xtc_probability",
        "xtc_threshold",
        "dynatemp_range",
        "dynatemp_exponent",
        "grammar",
        "json_schema",
        "min_tokens",
        "ignore_eos",
        "chat_template_kwargs",
        "reasoning_format",
    }
)


def unknown_field(name: str, schema: str = "OpenAI") -> InvalidRequest:
    """The 400 for a field outside the API's schema, naming the setting that passes it on."""
    return InvalidRequest(
        f"Unknown parameter {name!r}. Set AUTOTUNE_PASS_UNKNOWN_FIELDS=1 to send fields "
        f"outside {schema}'s schema to an engine that understands them.",
        param=name,
        code="unknown_parameter",
    )


def check_fields(body: Mapping[str, Any], *, pass_unknown: bool = False) -> dict[str, Any]:
    """The fields to forward; raises :class:`InvalidRequest` naming a field autotune refuses.

    ``body`` is the request as the client sent it (no ``None`` values).
    """
    forward: dict[str, Any] = {}
    for name, value in body.items():
        rule = FIELDS.get(name)
        if rule is None:
            if name in ENGINE_EXTENSIONS or pass_unknown:
                forward[name] = value
                continue
            raise unknown_field(name)
        if rule.action == "refuse":
            raise InvalidRequest(f"{name!r} is not supported: {rule.why}.", param=name)
        problem = rule.check(value, body) if rule.check else None
        if problem is not None:
            raise InvalidRequest(f"{name!r} cannot be honoured: {problem}.", param=name)
        if rule.action == "forward":
            forward[name] = value
    return forward
