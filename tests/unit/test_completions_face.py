"""The completions face's field table and its logprobs in the legacy shape."""

from __future__ import annotations

import typing

import pytest
from openai.types import completion_create_params
from openai.types.completion_choice import Logprobs

from autotune.ground.errors import InvalidRequest
from autotune.server.completions import FIELDS, LegacyLogprobs, completion_params


def test_every_field_of_the_official_request_type_is_in_the_table() -> None:
    official = set(typing.get_type_hints(completion_create_params.CompletionCreateParamsStreaming))
    assert not official - set(FIELDS), sorted(official - set(FIELDS))


def test_fields_are_forwarded_defaulted_or_refused() -> None:
    params = completion_params({"model": "m", "prompt": "x", "echo": True, "top_k": 5, "user": "u"})
    assert params == {"top_k": 5, "max_tokens": 16}  # OpenAI's default max_tokens
    with pytest.raises(InvalidRequest) as info:
        completion_params({"prompt": "x", "best_of": 3})
    assert info.value.param == "best_of"
    with pytest.raises(InvalidRequest) as info:
        completion_params({"prompt": "x", "echo": True, "logprobs": 1})
    assert info.value.param == "echo"
    with pytest.raises(InvalidRequest) as info:
        completion_params({"prompt": "x", "bogus": 1})
    assert info.value.code == "unknown_parameter"


def test_llamacpp_logprobs_become_the_legacy_shape() -> None:
    collected = LegacyLogprobs(offset=3)
    entry = {
        "token": " a",
        "logprob": -0.5,
        "top_logprobs": [{"token": " a", "logprob": -0.5}, {"token": " b", "logprob": -1.0}],
    }
    piece = collected.add({"content": [entry, {**entry, "token": "+", "top_logprobs": []}]})
    assert piece is not None and piece["text_offset"] == [3, 5]
    legacy = Logprobs.model_validate(collected.data)
    assert legacy.tokens == [" a", "+"] and legacy.token_logprobs == [-0.5, -0.5]
    assert legacy.top_logprobs == [{" a": -0.5, " b": -1.0}, {}]
    vllm = {"tokens": ["x"], "token_logprobs": [-0.1], "top_logprobs": [None], "text_offset": [0]}
    assert collected.add(vllm) == vllm and collected.add(None) is None
