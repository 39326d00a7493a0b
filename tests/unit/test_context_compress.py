"""Compression is pure: it drops whole sentences and log lines, never a piece of code."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.context.compress import (
    LOG_MARK,
    PROSE_MARK,
    compress,
    compress_message,
    is_log_like,
    segments,
    split_sentences,
)

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
]


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, dict[str, str], dict[str, str]]:
    """Prose paragraphs of numbered sentences (``S3 …``) and numbered code blocks (``C1``)."""
    sentences: dict[str, str] = {}
    blocks: dict[str, str] = {}
    parts: list[str] = []
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.booleans()) and len(blocks) < 3:
            key = f"C{len(blocks)}"
            body = "\n".join(f"    x{i} = {i}  # {key}" for i in range(draw(st.integers(1, 4))))
            blocks[key] = f"```python\n{body}\n```"
            parts.append(blocks[key])
            continue
        paragraph = []
        for _ in range(draw(st.integers(1, 6))):
            key = f"S{len(sentences)}"
            words = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=10))
            end = draw(st.sampled_from([".", "!", "?", "..."]))
            sentences[key] = f"{key} {' '.join(words)}{end}"
            paragraph.append(sentences[key])
        parts.append(draw(st.sampled_from([" ", "\n"])).join(paragraph))
    return "\n\n".join(parts), sentences, blocks


def _assert_whole(out: str, sentences: dict[str, str], blocks: dict[str, str]) -> None:
    for key in set(re.findall(r"\bS\d+\b", out)):
        assert sentences[key] in out, f"sentence {key} was cut"
    for key, block in blocks.items():
        assert block in out, f"code block {key} was cut or dropped"


@settings(max_examples=80, deadline=None)
@given(documents(), st.integers(0, 1200))
def test_prose_loses_whole_sentences_only_and_keeps_code(
    doc: tuple[str, dict[str, str], dict[str, str]], target: int
) -> None:
    text, sentences, blocks = doc
    out = compress(text, target)
    _assert_whole(out, sentences, blocks)
    smallest = compress(text, 0)
    assert len(out) <= target or out == smallest
    if len(text) <= target:
        assert out == text
    assert compress(text, target) == out  # deterministic


@settings(max_examples=80, deadline=None)
@given(st.text(max_size=400))
def test_segments_join_back_to_the_text(text: str) -> None:
    assert "".join(s.text for s in segments(text)) == text
    assert "".join(s.text for s in segments(text, lines=True)) == text


@settings(max_examples=40, deadline=None)
@given(documents(), st.integers(1, 300))
def test_token_targets_use_the_count_callable(
    doc: tuple[str, dict[str, str], dict[str, str]], target: int
) -> None:
    text, sentences, blocks = doc

    def tokens(s: str) -> int:
        return len(s.split())

    out = compress(text, target, tokens)
    _assert_whole(out, sentences, blocks)
    assert tokens(out) <= target or out == compress(text, 0, tokens)


def test_sentence_splitting_respects_abbreviations_and_versions() -> None:
    text = "Use e.g. the v1.2 API. It works, i.e. mostly. Next one! And a question? yes."
    assert split_sentences(text) == [
        "Use e.g. the v1.2 API.",
        "It works, i.e. mostly.",
        "Next one!",
        "And a question? yes.",
    ]


def test_first_and_technical_sentences_survive_longest() -> None:
    text = (
        "The server crashes on start. I had a nice weekend. The weather was fine. "
        "We went out for a walk. It raises KeyError: 'port' in config.py. Any idea why?"
    )
    out = compress(text, 100)
    assert out.startswith("The server crashes on start.")
    assert "KeyError: 'port'" in out  # error sentences are protected
    assert "weekend" not in out
    assert PROSE_MARK in out


def test_a_traceback_is_kept_whole() -> None:
    trace = (
        "Traceback (most recent call last):\n"
        '  File "app.py", line 3, in <module>\n'
        "    main()\n"
        "ZeroDivisionError: division by zero\n"
    )
    text = "Some words here. " * 20 + "\n\n" + trace + "\nMore words follow. " * 10
    out = compress(text, 200)
    assert trace in out


def _log(lines: int, errors: dict[int, str]) -> str:
    rows = []
    for i in range(lines):
        rows.append(errors.get(i, f"2024-05-01 10:00:{i % 60:02d} INFO worker step {i} ok"))
    return "\n".join(rows) + "\n"


def test_a_long_log_becomes_head_errors_and_tail() -> None:
    errors = {150: "2024-05-01 10:02:30 ERROR worker step 150 failed: disk full"}
    text = _log(300, errors)
    assert is_log_like(text)
    out = compress(text, 1500)
    assert len(out) <= 1500
    lines = out.splitlines()
    assert lines[0] == "2024-05-01 10:00:00 INFO worker step 0 ok"
    assert lines[-1] == "2024-05-01 10:00:59 INFO worker step 299 ok"
    assert errors[150] in lines
    omitted = [int(n) for n in re.findall(r"\[… (\d+) lines omitted …\]", out)]
    assert len(omitted) == 2
    kept = [line for line in lines if not line.startswith("[…")]
    assert sum(omitted) + len(kept) == 300  # every line is either kept or counted
    error_at = kept.index(errors[150])
    head, tail = kept[:error_at], kept[error_at + 1 :]
    assert len(tail) > len(head) > 0  # the tail, where failures land, gets the larger share


def test_tool_messages_are_compressed_as_logs() -> None:
    msg = {"role": "tool", "tool_call_id": "c7", "content": "line of output\n" * 200}
    out = compress_message(msg, 300)
    assert out["tool_call_id"] == "c7"
    assert LOG_MARK.format(n=0).split("0")[0] in out["content"]
    assert len(out["content"]) <= 300
    assert msg["content"] == "line of output\n" * 200  # the input is not modified


def test_list_content_shares_the_target() -> None:
    long = "Sentence number one is here. " * 30
    msg = {"role": "user", "content": [{"type": "text", "text": long}, {"type": "image_url"}]}
    out = compress_message(msg, 200)
    assert out["content"][1] == {"type": "image_url"}
    assert len(out["content"][0]["text"]) <= 200


def test_text_within_the_target_is_returned_unchanged() -> None:
    text = "Short. Text."
    assert compress(text, 100) is text
    assert compress(text, 2, lambda s: 2) is text


def test_an_unclosed_fence_protects_to_the_end() -> None:
    text = "Intro sentence here. Another one.\n\n```\ncode line 1\ncode line 2\n"
    out = compress(text, 10)
    assert out.endswith("```\ncode line 1\ncode line 2\n")
