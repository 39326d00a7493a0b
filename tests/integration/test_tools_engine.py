"""Tool round trips (call → result → answer) through all four faces, with the official clients,
on the real embedded engine and the tool-capable test model (``gemma3-tools``: Gemma-3-270M with
a chat template that renders tools, built by ``make setup`` — see tests/tool_model.py).

llama.cpp reads the tool-call markers off the template and parses real ``tool_calls`` out of
what the model writes. The 270M model never chooses a tool by itself, so the calls here are
forced (``tool_choice`` required or named; autotune asks llama.cpp for them as a JSON schema),
except on Ollama's API, which has no ``tool_choice``: there the prompt spells the call out and
the model copies it, which llama.cpp's own parser then turns into a call. The answer after a
tool result is whatever the model writes (it tends to echo the result): only its presence is
checked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import ollama
import openai
import pytest

from autotune.ground.config import Settings
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer
from tool_model import TOOL_MODEL

pytestmark = [pytest.mark.engine, pytest.mark.usefixtures("tool_model_env")]

MODEL = TOOL_MODEL
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
SUM = {
    "type": "object",
    "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
    "required": ["a", "b"],
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": CITY,
    },
}
ADD = {
    "type": "function",
    "function": {"name": "add", "description": "Add two integers.", "parameters": SUM},
}
QUESTION = "What is the weather in Paris?"
RESULT = "Sunny, 21 degrees."


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory, tool_models_dir: Path) -> Iterator[str]:
    home = tmp_path_factory.mktemp("tools-home")
    settings = Settings(home=home, backend="embedded", memory_budget=4 * 1024**3, recall=False)
    with BackgroundServer(create_app(settings)) as server:
        yield server.url


@pytest.fixture
def oai(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture
def claude(url: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=300)


def _city(arguments: str | dict[str, Any]) -> Any:
    values = json.loads(arguments) if isinstance(arguments, str) else arguments
    assert set(values) == {"city"}, values
    return values["city"]


# ---------------------------------------------------------------------- OpenAI chat


def test_openai_chat_required_call_streamed_then_result_and_answer(oai: openai.OpenAI) -> None:
    asked: list[Any] = [{"role": "user", "content": "Add 2 and 3."}]
    stream = oai.chat.completions.create(
        model=MODEL,
        messages=asked,
        tools=[ADD],
        tool_choice="required",
        max_tokens=40,
        temperature=0,
        stream=True,
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += delta.id or ""
                call["name"] += (delta.function and delta.function.name) or ""
                call["arguments"] += (delta.function and delta.function.arguments) or ""
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and list(calls) == [0]
    call = calls[0]
    assert call["name"] == "add" and call["id"]
    arguments = json.loads(call["arguments"])
    assert set(arguments) == {"a", "b"} and all(isinstance(v, int) for v in arguments.values())
    function = {"name": call["name"], "arguments": call["arguments"]}
    history = [
        *asked,
        {
            "role": "assistant",
            "tool_calls": [{"id": call["id"], "type": "function", "function": function}],
        },
        {"role": "tool", "tool_call_id": call["id"], "content": "5"},
    ]
    answer = oai.chat.completions.create(
        model=MODEL, messages=history, tools=[ADD], max_tokens=6, temperature=0
    )
    assert answer.choices[0].message.content and not answer.choices[0].message.tool_calls
    assert answer.choices[0].finish_reason in ("stop", "length")


# ---------------------------------------------------------------------- Responses


def test_responses_named_call_then_its_output_as_codex_sends_it(oai: openai.OpenAI) -> None:
    """Codex's shape: ``store: false``, the whole input every time, the call and its output
    as items."""
    tool = {"type": "function", "name": "get_weather", "parameters": CITY, "strict": False}
    asked: list[Any] = [{"role": "user", "content": QUESTION}]
    first = oai.responses.create(
        model=MODEL,
        input=asked,
        tools=[tool],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=40,
        temperature=0,
        store=False,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert isinstance(_city(calls[0].arguments), str)
    second = oai.responses.create(
        model=MODEL,
        input=[
            *asked,
            calls[0].model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": calls[0].call_id, "output": RESULT},
        ],
        tools=[tool],
        max_output_tokens=6,
        temperature=0,
        store=False,
    )
    assert second.output_text
    assert not [item for item in second.output if item.type == "function_call"]


# ---------------------------------------------------------------------- Anthropic


def test_anthropic_named_tool_use_then_result_and_streamed_answer(
    claude: anthropic.Anthropic,
) -> None:
    tools: list[Any] = [
        {"name": "get_weather", "description": "The weather in a city.", "input_schema": CITY},
        {"name": "add", "input_schema": SUM},
    ]
    asked: list[Any] = [{"role": "user", "content": QUESTION}]
    first = claude.messages.create(
        model=MODEL,
        max_tokens=40,
        messages=asked,
        tools=tools,
        tool_choice={"type": "tool", "name": "get_weather"},
        extra_body={"temperature": 0},
    )
    assert first.stop_reason == "tool_use"
    uses = [block for block in first.content if block.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].id
    assert isinstance(_city(uses[0].input), str)  # an object, not a JSON string
    with claude.messages.stream(
        model=MODEL,
        max_tokens=6,
        messages=[
            *asked,
            {"role": "assistant", "content": [b.model_dump() for b in first.content]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": RESULT}],
            },
        ],
        tools=tools,
        extra_body={"temperature": 0},
    ) as stream:
        answer = stream.get_final_message()
    assert answer.stop_reason in ("end_turn", "max_tokens")
    assert answer.content and answer.content[0].type == "text" and answer.content[0].text


# ---------------------------------------------------------------------- Ollama


def test_ollama_call_copied_by_the_model_then_result_and_answer(url: str) -> None:
    client = ollama.Client(host=url, timeout=300)
    tools: list[Any] = [WEATHER]
    asked = [
        {
            "role": "user",
            "content": 'Repeat exactly: <tool_call>\n{"name": "get_weather", '
            '"arguments": {"city": "Paris"}}\n</tool_call>',
        }
    ]
    first = client.chat(
        model=MODEL, messages=asked, tools=tools, options={"num_predict": 40, "temperature": 0}
    )
    calls = first.message.tool_calls or []
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert _city(dict(calls[0].function.arguments)) == "Paris"
    answer = client.chat(
        model=MODEL,
        messages=[
            *asked,
            first.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_name": "get_weather", "content": RESULT},
        ],
        tools=tools,
        options={"num_predict": 6, "temperature": 0},
    )
    assert answer.message.content and not answer.message.tool_calls
    assert answer.done and answer.done_reason in ("stop", "length")
