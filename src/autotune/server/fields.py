"""Every top-level request field of every API face, and what autotune does with it: one table
per API (OpenAI chat :data:`FIELDS`, :data:`COMPLETIONS`, :data:`ANTHROPIC`,
:data:`RESPONSES`), checked one way (:func:`check_fields`).

A field is **forwarded** to the engine in its terms (backends translate or refuse what their
engine lacks: Ollama's backend maps ``response_format`` to ``format``, for instance),
**owned** by autotune itself, **accepted** as metadata that changes nothing in the answer,
or **refused** with a 400 naming it. Nothing is dropped silently. Tests check that every
field of the official clients' request types is in its table, so a new field cannot slip
through unclassified.

Fields outside OpenAI's schema are refused too (``unknown_parameter``), except the sampling
extensions local engines share (llama.cpp's ``top_k``, ``min_p`` …), unless
``AUTOTUNE_PASS_UNKNOWN_FIELDS`` lets them through to an engine that understands them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from autotune.ground.decision import Decision
from autotune.ground.errors import InvalidRequest

__all__ = [
    "ANTHROPIC",
    "COMPLETIONS",
    "ENGINE_EXTENSIONS",
    "FIELDS",
    "RESPONSES",
    "Rule",
    "accepted_note",
    "check_fields",
    "unknown_field",
]

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
    #: A refused field sent empty (``false``, ``0``) asks for nothing, and passes.
    empty_ok: bool = False
    #: Accepted, and named in the plan (``X-Autotune-Plan: accepted=…``) when sent: a
    #: client-side field of the hosted API that changes nothing here.
    noted: bool = False

    def refuses(self, value: Any) -> bool:
        return self.action == "refuse" and not (self.empty_ok and value in (None, False, 0))


def own(why: str) -> Rule:
    return Rule("own", why)


def forward(why: str) -> Rule:
    return Rule("forward", why)


def accept(why: str) -> Rule:
    return Rule("accept", why)


def noted(why: str, check: Check | None = None) -> Rule:
    """Accepted, changing nothing here, and named in the plan when sent."""
    return Rule("accept", why, check, noted=True)


def refuse(why: str) -> Rule:
    return Rule("refuse", why)


def refuse_given(why: str) -> Rule:
    """Refused unless sent empty (``false``, ``0``)."""
    return Rule("refuse", why, empty_ok=True)


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


def accepted_note(body: Mapping[str, Any], table: Mapping[str, Rule]) -> list[Decision]:
    """The plan's note naming the fields sent that ``table`` accepts as ``noted``."""
    names = [name for name in body if (rule := table.get(name)) is not None and rule.noted]
    if not names:
        return []
    why = "; ".join(f"{name}: {table[name].why}" for name in names)
    return [Decision("accepted", ",".join(names), why)]


def check_fields(
    body: Mapping[str, Any],
    *,
    table: Mapping[str, Rule] | None = None,
    pass_unknown: bool = False,
    schema: str = "OpenAI",
    extensions: bool = True,
    forwarded: bool = True,
) -> dict[str, Any]:
    """Check ``body`` (as the client sent it, no ``None`` values) against ``table`` (OpenAI
    chat's by default): raises :class:`InvalidRequest` naming a field autotune refuses, or
    one outside ``schema``'s API (unless ``pass_unknown``, or one of the engines' sampling
    ``extensions``). Returns what to send to the engine: the unknown fields let through, and
    with ``forwarded`` the fields the table forwards (a face that translates them itself
    leaves that off)."""
    table = FIELDS if table is None else table
    out: dict[str, Any] = {}
    for name, value in body.items():
        rule = table.get(name)
        if rule is None:
            if (extensions and name in ENGINE_EXTENSIONS) or pass_unknown:
                out[name] = value
                continue
            raise unknown_field(name, schema)
        if rule.refuses(value):
            raise InvalidRequest(f"{name!r} is not supported: {rule.why}.", param=name)
        problem = rule.check(value, body) if rule.check else None
        if problem is not None:
            raise InvalidRequest(f"{name!r} cannot be honoured: {problem}.", param=name)
        if forwarded and rule.action == "forward":
            out[name] = value
    return out


# ---------------------------------------------------------------------- the other APIs

#: ``POST /v1/completions``.
COMPLETIONS: dict[str, Rule] = {
    "model": own("the engine is chosen by model name"),
    "prompt": own("never cut; a prompt that cannot fit is a 400"),
    "suffix": own("fill-in-the-middle on the engine (llama.cpp /infill)"),
    "stream": own("server-sent events"),
    "stream_options": own("include_usage adds the engine's usage chunk"),
    "echo": own("the prompt is put before the completion here"),
    "max_tokens": forward("also sizes the context; 16 when left out, as OpenAI"),
    "temperature": forward("sent to the engine"),
    "top_p": forward("sent to the engine"),
    "stop": forward("sent to the engine"),
    "seed": forward("sent to the engine"),
    "presence_penalty": forward("sent to the engine"),
    "frequency_penalty": forward("sent to the engine"),
    "logit_bias": forward("sent to the engine"),
    "logprobs": forward("the engine's, in the legacy shape"),
    "n": forward("refused above what the engine can answer at once"),
    "best_of": own("1 (or equal to n) only: autotune does not rank samples"),
    "user": accept("metadata; it changes nothing in the answer"),
}


#: Anthropic's context-management edits (beta ``context-management-2025-06-27``) that change
#: nothing here: earlier thinking is never sent to the engine, and autotune's context window
#: compacts old turns (tool results included) itself, rarely and in big steps.
_CONTEXT_EDITS = ("clear_thinking_", "clear_tool_uses_")


def _context_edits(value: Any) -> str | None:
    edits = value.get("edits") if isinstance(value, Mapping) else None
    if not isinstance(edits, list):
        return "it must be an object with a list of 'edits'"
    for i, edit in enumerate(edits):
        kind = edit.get("type") if isinstance(edit, Mapping) else None
        if not isinstance(kind, str) or not kind.startswith(_CONTEXT_EDITS):
            return f"edits[{i}] of type {kind!r} is not one autotune's context window does"
    return None


#: ``POST /v1/messages`` (Anthropic): forwarded fields are translated by the face.
ANTHROPIC: dict[str, Rule] = {
    "model": own("the engine is chosen by model name"),
    "messages": own(
        "translated to chat messages; the newest is never cut; system messages among them join "
        "the system prompt (the plan says system=<n> moved to the start)"
    ),
    "system": own("the system prompt (a string or text blocks)"),
    "max_tokens": forward(
        "a ceiling: above what the context leaves beside the prompt it is capped to it, and the "
        "plan says max_tokens=<cap>"
    ),
    "stream": own("Anthropic's server-sent events"),
    "stop_sequences": own("matched by autotune on the streamed text, so the answer names one"),
    "temperature": forward("an older Messages field Claude Code still sends"),
    "top_p": forward("an older Messages field"),
    "top_k": forward("an older Messages field; llama.cpp, vLLM and Ollama take it"),
    "tools": forward("custom tools as functions; server tools are refused by type"),
    "tool_choice": forward("auto, any, tool or none, as OpenAI's tool_choice"),
    "thinking": own("enabled: the engine's reasoning text becomes thinking blocks"),
    "output_config": forward("effort as reasoning_effort, format as a JSON schema"),
    "metadata": accept("metadata; a user id names a user, not a conversation"),
    "service_tier": accept("a local engine has one tier"),
    "cache_control": accept("autotune's prompt caching is automatic"),
    "inference_geo": accept("the engine runs on this machine"),
    "speed": accept("a local engine has one speed"),
    "diagnostics": accept("metadata"),
    "user_profile_id": accept("metadata"),
    "workspace_id": accept("metadata"),
    "container": refuse("code-execution containers are a service of Anthropic's platform"),
    "mcp_servers": refuse("remote MCP servers are a service of Anthropic's platform"),
    "context_management": noted(
        "its edits (clearing earlier thinking or tool results) are what autotune's own context "
        "window does; earlier thinking is never sent to the engine",
        lambda value, body: _context_edits(value),
    ),
}


#: ``POST /v1/responses``: forwarded fields are translated by the face.
RESPONSES: dict[str, Rule] = {
    "model": own("the engine is chosen by model name"),
    "input": own("translated to chat messages; the newest is never cut"),
    "instructions": own("the system prompt of this request"),
    "stream": own("the Responses event stream"),
    "stream_options": accept("events are never obfuscated on loopback"),
    "store": own("stores the turn in a conversation so previous_response_id can resume it"),
    "previous_response_id": own("resumes the stored conversation (and the engine's cache)"),
    "conversation": own("an autotune conversation id, as X-Conversation-Id"),
    "max_output_tokens": forward("as max_tokens"),
    "temperature": forward("sent to the engine"),
    "top_p": forward("sent to the engine"),
    "tools": forward(
        "function tools; namespace groups flattened into functions; built-in tools (web "
        "search …) not offered to the model, said in the plan; other types refused"
    ),
    "tool_choice": forward("auto, none, required or one function"),
    "parallel_tool_calls": forward("sent to the engine"),
    "text": forward("format as response_format (JSON mode, JSON schema)"),
    "reasoning": forward("effort as reasoning_effort"),
    "truncation": own("auto: the start of the newest input may be cut to fit"),
    "include": accept("no extra output is produced here"),
    "metadata": accept("metadata; it changes nothing in the answer"),
    "user": accept("metadata"),
    "safety_identifier": accept("metadata"),
    "prompt_cache_key": accept("autotune's prompt caching is automatic"),
    "prompt_cache_retention": accept("autotune's prompt caching is automatic"),
    "prompt_cache_options": accept("autotune's prompt caching is automatic"),
    "service_tier": accept("a local engine has one tier"),
    "max_tool_calls": accept("autotune runs no built-in tools"),
    "client_metadata": noted("Codex's own turn metadata (its session and thread ids)"),
    "background": refuse_given("background responses are not offered; stream instead"),
    "background_options": refuse_given("background responses are not offered"),
    "prompt": refuse_given("stored prompt templates are a service of OpenAI's platform"),
    "top_logprobs": refuse_given(
        "logprobs are offered on /v1/chat/completions and /v1/completions"
    ),
    "context_management": refuse_given("autotune manages the context itself"),
    "moderation": refuse_given("moderation is a service of OpenAI's platform"),
    "image": refuse_given("image generation is not offered by local engines here"),
    "access_programs": refuse_given("a service of OpenAI's platform"),
}
