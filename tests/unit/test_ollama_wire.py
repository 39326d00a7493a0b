"""The Ollama face's pure translation (``autotune.server.ollama_wire``): requests in, every
field translated or refused by name; replies out, in shapes the official ``ollama`` package's
own response types accept."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ollama import _types as ollama_types
from pydantic import ValidationError

from autotune.ground.errors import InvalidRequest
from autotune.ground.types import EngineStats, ModelEntry, ModelMeta, RunningModel
from autotune.server.ollama_models import details, model_info, ps_entry, tag_entry
from autotune.server.ollama_reply import ReplyShape, done_fields, logprobs, tool_calls
from autotune.server.ollama_wire import (
    REFUSED_OPTIONS,
    ChatBody,
    GenerateBody,
    WireMessage,
    is_completion,
    parse_keep_alive,
    translate,
    validation_message,
)

#: A 1×1 PNG, base64 as Ollama clients send images.
PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGBgAAAABQABpfZFQAAAAABJRU5E"
    "rkJggg=="
)


def chat(**fields: Any) -> ChatBody:
    return ChatBody(model="m", messages=[{"role": "user", "content": "hi"}], **fields)


# --------------------------------------------------------------------------- options


def test_options_become_openai_and_llamacpp_fields() -> None:
    out = translate(
        chat(
            options={
                "temperature": 0.2,
                "top_p": 0.9,
                "top_k": 20,
                "min_p": 0.05,
                "repeat_penalty": 1.1,
                "seed": 7,
                "stop": "END",
                "num_predict": 64,
                "num_ctx": 5000,
            }
        )
    )
    assert out.params == {
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 20,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
        "seed": 7,
        "stop": ["END"],
        "max_tokens": 64,
    }
    assert out.min_context == 5000  # a floor for the planner, never a reload per request


def test_num_predict_minus_one_means_no_limit_and_zero_is_refused() -> None:
    assert "max_tokens" not in translate(chat(options={"num_predict": -1})).params
    assert "max_tokens" not in translate(chat(options={"num_predict": -2})).params
    with pytest.raises(InvalidRequest, match="num_predict"):
        translate(chat(options={"num_predict": 0}))


@pytest.mark.parametrize("name", sorted(REFUSED_OPTIONS))
def test_options_autotune_cannot_honour_are_refused_by_name(name: str) -> None:
    value: Any = True if name in ("numa", "low_vram", "f16_kv", "use_mmap") else 1
    with pytest.raises(InvalidRequest, match=f"options.{name} is not supported") as caught:
        translate(chat(options={name: value}))
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"flash_attention": True}, "Unknown option 'flash_attention'"),
        ({"num_ctx": "big"}, "options.num_ctx"),
        ({"num_ctx": -4}, "options.num_ctx"),
        ({"temperature": -1}, "options.temperature -1.0 is out of range"),
        ({"top_p": 1.5}, "options.top_p 1.5 is out of range"),
        ({"min_p": "low"}, "options.min_p must be a number"),
    ],
)
def test_bad_option_values_are_refused(options: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidRequest, match=words.replace(".", r"\.")):
        translate(chat(options=options))


def test_options_set_to_null_are_left_out() -> None:
    assert translate(chat(options={"num_gpu": None, "temperature": None})).params == {}


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (300, 300.0),
        (0, 0.0),
        (-1, -1.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
        ("250ms", 0.25),
        ("-5m", -1.0),
        ("10", 10.0),
        (None, None),
    ],
)
def test_keep_alive_is_seconds_negative_forever(value: Any, seconds: float | None) -> None:
    assert parse_keep_alive(value) == seconds


@pytest.mark.parametrize("value", ["soon", "5 minutes", "", "1h-5m", float("inf")])
def test_keep_alive_that_is_no_duration_is_refused(value: Any) -> None:
    with pytest.raises(InvalidRequest, match="keep_alive"):
        parse_keep_alive(value)


def test_format_json_and_a_schema_become_response_format() -> None:
    assert translate(chat(format="json")).params["response_format"] == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    sent = translate(chat(format=schema)).params["response_format"]
    assert sent == {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
    assert "response_format" not in translate(chat(format="")).params


def test_think_false_or_a_level_is_reasoning_effort_true_is_the_default() -> None:
    off = translate(chat(think=False))
    assert off.params == {"reasoning_effort": "none"} and off.no_thinking
    assert translate(chat(think="high")).params == {"reasoning_effort": "high"}
    assert translate(chat(think=True)).params == {}
    with pytest.raises(InvalidRequest, match="think 'max'"):
        translate(chat(think="max"))


def test_logprobs_are_forwarded_and_top_logprobs_needs_them() -> None:
    assert translate(chat(logprobs=True, top_logprobs=3)).params == {
        "logprobs": True,
        "top_logprobs": 3,
    }
    with pytest.raises(InvalidRequest, match="top_logprobs needs logprobs"):
        translate(chat(top_logprobs=3))


# --------------------------------------------------------------------------- messages


def test_images_become_data_url_parts_after_the_text() -> None:
    body = ChatBody(
        model="m",
        messages=[{"role": "user", "content": "what is it?", "images": [PNG, "/9j/4AAQ"]}],
    )
    (message,) = translate(body).messages
    assert message["content"] == [
        {"type": "text", "text": "what is it?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
    ]
    with pytest.raises(InvalidRequest, match=r"messages\[0\]\.images\[0\] must be base64"):
        translate(ChatBody(model="m", messages=[{"role": "user", "images": ["not base64!"]}]))


def test_a_tool_round_trip_becomes_openai_tool_calls_and_results() -> None:
    body = ChatBody(
        model="m",
        messages=[
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {"function": {"name": "weather", "arguments": {"city": "Paris"}}},
                    {"function": {"name": "time", "arguments": {}}},
                ],
            },
            {"role": "tool", "tool_name": "time", "content": "12:00"},
            {"role": "tool", "tool_name": "weather", "content": "sunny"},
        ],
        tools=[{"type": "function", "function": {"name": "weather", "parameters": {}}}],
    )
    out = translate(body)
    calls = out.messages[1]["tool_calls"]
    assert [c["id"] for c in calls] == ["call_1_0", "call_1_1"]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert out.messages[2]["tool_call_id"] == "call_1_1"  # matched by the tool's name
    assert out.messages[3]["tool_call_id"] == "call_1_0"
    assert out.params["tools"][0]["function"]["name"] == "weather"


def test_unknown_roles_and_message_fields_are_refused() -> None:
    with pytest.raises(InvalidRequest, match=r"messages\[0\]\.role 'robot'"):
        translate(ChatBody(model="m", messages=[{"role": "robot", "content": "x"}]))
    with pytest.raises(ValidationError):
        WireMessage(role="user", content="x", colour="blue")  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        ChatBody(model="m", messages=[], temperature=1)  # type: ignore[call-arg]


def test_generate_is_a_system_and_a_user_message() -> None:
    out = translate(GenerateBody(model="m", prompt="Say hi", system="Be brief"))
    assert out.messages == [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "Say hi"},
    ]
    assert translate(GenerateBody(model="m")).messages == []  # load or unload only
    assert translate(GenerateBody(model="m", system="Be brief")).messages == []


@pytest.mark.parametrize(
    ("field", "value"),
    [("template", "{{ .Prompt }}"), ("context", [1, 2, 3])],
)
def test_generate_fields_not_offered_are_refused_by_name(field: str, value: Any) -> None:
    with pytest.raises(InvalidRequest, match=f"'{field}' is not supported"):
        translate(GenerateBody(model="m", prompt="x", **{field: value}))


def test_a_raw_prompt_or_a_suffix_is_a_completion_with_no_chat_messages() -> None:
    for body in (
        GenerateBody(model="m", prompt="def f(", raw=True),
        GenerateBody(model="m", prompt="def f(", suffix=")"),
    ):
        assert is_completion(body) and translate(body).messages == []
    with pytest.raises(InvalidRequest) as caught:  # no template to put a system prompt in
        translate(GenerateBody(model="m", prompt="x", raw=True, system="Be brief"))
    assert caught.value.param == "system"


# --------------------------------------------------------------------------- replies


def test_done_fields_are_the_engines_timings_in_nanoseconds() -> None:
    stats = EngineStats(
        prompt_tokens=30, prompt_ms=12.5, completion_tokens=8, decode_ms=80.0, reloaded=False
    )
    done = done_fields(stats, total_ns=200_000_000, waited_ns=50_000_000, finish_reason="stop")
    assert done == {
        "done": True,
        "done_reason": "stop",
        "total_duration": 200_000_000,
        "load_duration": 0,
        "prompt_eval_count": 30,
        "prompt_eval_duration": 12_500_000,
        "eval_count": 8,
        "eval_duration": 80_000_000,
    }


def test_a_reload_shows_in_load_duration() -> None:
    reloaded = EngineStats(prompt_ms=100.0, reloaded=True)
    done = done_fields(reloaded, total_ns=9, waited_ns=900_000_000, finish_reason="length")
    assert done["load_duration"] == 800_000_000 and done["done_reason"] == "length"
    told = EngineStats(load_ms=1500.0)
    assert done_fields(told, total_ns=9, waited_ns=1, finish_reason=None)["load_duration"] == (
        1_500_000_000
    )
    usage = {"prompt_tokens": 5, "completion_tokens": 2}
    counted = done_fields(None, total_ns=9, waited_ns=1, finish_reason=None, usage=usage)
    assert (counted["prompt_eval_count"], counted["eval_count"]) == (5, 2)


def test_tool_calls_and_logprobs_come_back_in_ollamas_shape() -> None:
    calls = tool_calls(
        [{"id": "c1", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]
    )
    assert calls == [
        {"function": {"index": 0, "name": "weather", "arguments": {"city": "Paris"}}, "id": "c1"}
    ]
    probs = logprobs(
        [{"token": "Hi", "logprob": -0.1, "top_logprobs": [{"token": "Hi", "logprob": -0.1}]}]
    )
    assert probs == [
        {"token": "Hi", "logprob": -0.1, "top_logprobs": [{"token": "Hi", "logprob": -0.1}]}
    ]
    unasked = logprobs(
        [{"token": "Hi", "logprob": -0.1, "top_logprobs": [{"token": "Hi"}]}], top=False
    )
    assert unasked == [{"token": "Hi", "logprob": -0.1}]  # llama.cpp's 20 unasked alternatives


def chunk(delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, **extra}]}


def test_a_chat_stream_is_text_pieces_then_tool_calls_then_done() -> None:
    shape = ReplyShape("m", "chat")
    assert shape.piece(chunk({"role": "assistant"})) is None
    piece = shape.piece(chunk({"content": "Hel"}))
    assert piece is not None
    parsed = ollama_types.ChatResponse(**piece)
    assert parsed.message.content == "Hel" and parsed.done is False
    thinking = shape.piece(chunk({"reasoning_content": "hmm"}))
    assert thinking is not None and thinking["message"]["thinking"] == "hmm"
    calls = [{"function": {"name": "f", "arguments": "{}"}}]
    stats = EngineStats(prompt_tokens=3, completion_tokens=2)
    done = done_fields(stats, total_ns=5, waited_ns=1, finish_reason="tool_calls")
    first, last = shape.closing(calls, done)
    assert ollama_types.ChatResponse(**first).message.tool_calls[0].function.name == "f"  # type: ignore[index]
    final = ollama_types.ChatResponse(**last)
    assert final.done and final.done_reason == "stop" and final.eval_count == 2


def test_think_false_leaves_thinking_out() -> None:
    shape = ReplyShape("m", "chat", no_thinking=True)
    assert shape.piece(chunk({"reasoning_content": "hmm"})) is None


def test_a_whole_generate_reply_parses_as_the_clients_type() -> None:
    shape = ReplyShape("m", "generate")
    done = done_fields(None, total_ns=5, waited_ns=1, finish_reason="stop")
    whole = shape.whole("Hello", thinking="t", calls=(), probs=None, done=done)
    parsed = ollama_types.GenerateResponse(**whole)
    assert (parsed.response, parsed.thinking, parsed.done) == ("Hello", "t", True)
    assert ollama_types.GenerateResponse(**shape.loaded("unload")).done_reason == "unload"


# --------------------------------------------------------------------------- models

META = ModelMeta(
    name="smollm2:135m",
    architecture="llama",
    parameter_count=134_515_008,
    block_count=30,
    head_count=9,
    head_count_kv=3,
    embedding_length=576,
    context_length=8192,
    quantization="Q4_1",
    family="llama",
    path="/models/smollm2.gguf",
    size_bytes=98_362_432,
)


def test_tags_entries_parse_as_the_clients_list_response() -> None:
    entry = ModelEntry(name="smollm2:135m", backend="embedded", size_bytes=98_362_432, path="/x")
    tag = tag_entry(entry, META, digest="ab" * 32, modified=0.0)
    listing = ollama_types.ListResponse(models=[tag])  # type: ignore[list-item]
    (model,) = listing.models
    assert model.model == "smollm2:135m" and model.size == 98_362_432
    assert model.details is not None
    assert (model.details.format, model.details.family) == ("gguf", "llama")
    assert (model.details.parameter_size, model.details.quantization_level) == ("134.52M", "Q4_1")


def test_ps_entries_parse_and_forever_is_centuries_ahead() -> None:
    running = RunningModel(
        name="smollm2:135m", backend="embedded", size_bytes=5, context_length=2048
    )
    entry = ps_entry(running, META, digest="cd" * 32)
    (model,) = ollama_types.ProcessResponse(models=[entry]).models  # type: ignore[list-item]
    assert model.context_length == 2048 and model.expires_at is not None
    assert model.expires_at.year > 2200


def test_model_info_uses_gguf_key_names() -> None:
    info = model_info(META)
    assert info["general.architecture"] == "llama"
    assert info["llama.block_count"] == 30 and info["llama.attention.head_count_kv"] == 3
    assert info["general.parameter_count"] == 134_515_008
    shown = ollama_types.ShowResponse(model_info=info, details=details(None, META))
    assert shown.modelinfo == info


def test_validation_messages_name_the_field() -> None:
    assert validation_message([{"type": "missing", "loc": ("body", "model")}]) == (
        "Missing required field 'model'."
    )
    assert "Unknown field 'temperature'" in validation_message(
        [{"type": "extra_forbidden", "loc": ("body", "temperature")}]
    )
