"""Every OpenAI chat-completions field is honoured, translated or refused — never dropped."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat import completion_create_params

from autotune.ground.errors import InvalidRequest
from autotune.server.fields import ENGINE_EXTENSIONS, FIELDS, check_fields

BASE: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]


def test_every_field_of_the_openai_request_type_is_in_the_table() -> None:
    """Generated from the official client's own types: a new OpenAI field fails here first."""
    official = set(completion_create_params.CompletionCreateParamsBase.__annotations__)
    official |= set(completion_create_params.CompletionCreateParamsStreaming.__annotations__)
    missing = official - set(FIELDS)
    assert not missing, f"classify these in autotune.server.fields.FIELDS: {sorted(missing)}"
    assert {rule.action for rule in FIELDS.values()} <= {"forward", "own", "accept", "refuse"}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("functions", [{"name": "f", "parameters": {}}]),
        ("function_call", "auto"),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("modalities", ["text", "audio"]),
        ("prediction", {"type": "content", "content": "x"}),
        ("web_search_options", {}),
        ("service_tier", "priority"),
        ("verbosity", "low"),
        ("store", True),
        ("tool_choice", "required"),
        ("tool_choice", {"type": "function", "function": {"name": "lookup"}}),
        ("foo_bar", 1),
    ],
)
def test_fields_autotune_cannot_honour_get_a_400_naming_them(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        check_fields({**BASE, field: value})
    assert info.value.param == field and info.value.status == 400
    assert field in info.value.message


def test_an_unknown_field_is_refused_by_default_and_passed_when_allowed() -> None:
    with pytest.raises(InvalidRequest) as info:
        check_fields({**BASE, "foo_bar": 1})
    assert info.value.code == "unknown_parameter" and "AUTOTUNE_PASS_UNKNOWN_FIELDS" in str(
        info.value
    )
    assert check_fields({**BASE, "foo_bar": 1}, pass_unknown=True) == {"foo_bar": 1}


def test_forwarded_fields_reach_the_engine_and_metadata_does_not() -> None:
    body = {
        **BASE,
        "stream": True,
        "temperature": 0.2,
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "reasoning_effort": "low",
        "top_k": 20,
        "user": "someone",
        "metadata": {"a": "b"},
        "store": False,
        "modalities": ["text"],
        "service_tier": "auto",
    }
    forwarded = check_fields(body)
    assert forwarded == {
        "temperature": 0.2,
        "tools": TOOLS,
        "tool_choice": body["tool_choice"],
        "reasoning_effort": "low",
        "top_k": 20,
    }
    assert "top_k" in ENGINE_EXTENSIONS
