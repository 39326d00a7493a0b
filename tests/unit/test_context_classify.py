"""Message scoring is pure: chatter scores 0–0.1, prose 0.2–0.4, technical content higher."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.context.classify import (
    CHATTER_THRESHOLD,
    is_chatter,
    message_text,
    score_message,
    technical_score,
)

CHATTER = [
    "ok",
    "Ok.",
    "thanks!",
    "Thank you so much",
    "lol",
    "got it",
    "👍",
    "cool, thx",
    "",
    "  ",
]
PROSE = [
    "What's the capital of France?",
    "no, use the other one instead",
    "Can you explain how the scheduler decides which request goes first?",
    "works now",
]
TECHNICAL = [
    "I get KeyError: 'user_id' in src/auth/session.py when I log in",
    "run `pip install -e .` and then `pytest -q`",
    "```python\ndef f(x):\n    return x * 2\n```",
    'Traceback (most recent call last):\n  File "a.py", line 1\nValueError: bad',
    "$ docker compose up -d --build",
    "The build failed: error: linker `cc` not found",
    "see https://github.com/ggml-org/llama.cpp/issues/1234 for the fix",
]


@pytest.mark.parametrize("text", CHATTER)
def test_chatter_scores_below_the_threshold(text: str) -> None:
    assert technical_score(text) < CHATTER_THRESHOLD
    assert is_chatter(text)
    assert is_chatter({"role": "user", "content": text})


@pytest.mark.parametrize("text", PROSE)
def test_plain_prose_is_not_chatter(text: str) -> None:
    assert CHATTER_THRESHOLD <= technical_score(text) < 0.5
    assert not is_chatter(text)


@pytest.mark.parametrize("text", TECHNICAL)
def test_technical_content_scores_high(text: str) -> None:
    assert technical_score(text) >= 0.5


def test_technical_outranks_prose_outranks_chatter() -> None:
    assert max(map(technical_score, CHATTER)) < min(map(technical_score, PROSE))
    assert max(map(technical_score, PROSE)) < min(map(technical_score, TECHNICAL))


def test_a_little_chatter_around_a_real_request_is_not_chatter() -> None:
    assert not is_chatter("ok thanks, now how do I add a second database to the config?")


def test_tool_messages_and_tool_calls_count_as_technical() -> None:
    assert score_message({"role": "tool", "tool_call_id": "c1", "content": "ok"}) >= 0.5
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "ls"}}],
    }
    assert score_message(call) >= 0.5
    assert not is_chatter(call)


def test_message_text_reads_parts_and_tool_calls() -> None:
    msg = {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "a"},
            {"type": "image_url"},
            {"type": "text", "text": "b"},
        ],
        "tool_calls": [{"id": "x", "function": {"name": "grep", "arguments": '{"q": 1}'}}],
    }
    assert message_text(msg) == 'a\nb\ngrep({"q": 1})'
    assert message_text(msg, with_tool_calls=False) == "a\nb"
    assert message_text({"role": "user"}) == ""


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=300))
def test_scores_stay_in_range_and_code_always_counts(text: str) -> None:
    score = technical_score(text)
    assert 0.0 <= score <= 1.0
    assert technical_score(text + "\n```sh\nmake test\n```\n") >= 0.5
