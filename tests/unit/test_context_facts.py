"""Fact extraction is pure pattern matching: same messages, same facts, bounded text."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.context.facts import (
    FACTS_HEADER,
    FactCollector,
    Facts,
    extract_facts,
    one_line_summary,
    render_facts,
)

CONVERSATION = [
    {"role": "system", "content": "We decided nothing here; system prompts are skipped."},
    {
        "role": "user",
        "content": "I'm building a FastAPI service in src/app/main.py with Python 3.11. "
        "Redis is the cache layer.",
    },
    {
        "role": "assistant",
        "content": "Let's go with SQLAlchemy 2.0 for the ORM. Set `pool_size` to 20. "
        "The docs are at https://docs.sqlalchemy.org/en/20/ for details.",
    },
    {
        "role": "user",
        "content": "Now it fails:\nTraceback (most recent call last):\n"
        '  File "src/app/main.py", line 3, in <module>\n    import foo\n'
        "ModuleNotFoundError: No module named 'foo'\n",
    },
    {
        "role": "assistant",
        "content": "Install it with `pip install foo`. Startup should take 300 ms.",
    },
    {"role": "user", "content": "works now, thanks"},
    {"role": "user", "content": "ok"},
    {
        "role": "assistant",
        "content": "I fixed the import in src/app/main.py. We'll keep the API under /api/v1.",
    },
    {"role": "tool", "tool_call_id": "c1", "content": "ERROR: connection refused to db:5432"},
    {"role": "user", "content": "Should we use Postgres? Let me know about the cache layer."},
]


def test_extracts_every_category() -> None:
    facts = extract_facts(CONVERSATION)
    assert facts.messages == len(CONVERSATION)
    assert facts.decisions == (
        "Let's go with SQLAlchemy 2.0 for the ORM.",
        "We'll keep the API under /api/v1.",
    )
    assert facts.accomplishments == (
        "works now, thanks (after: Install it with `pip install foo`.)",
        "I fixed the import in src/app/main.py.",
    )
    assert "ModuleNotFoundError: No module named 'foo'" in facts.errors
    assert "ERROR: connection refused to db:5432" in facts.errors  # from tool output
    for fact in [
        "src/app/main.py",
        "Python 3.11",
        "SQLAlchemy 2.0",
        "https://docs.sqlalchemy.org/en/20/",
        "`pool_size`",
        "Redis is the cache layer.",
        "should take 300 ms",
        "/api/v1",
    ]:
        assert fact in facts.key_facts, fact
    assert "cache" in facts.topics and "layer" in facts.topics


def test_questions_and_system_prompts_are_not_decisions() -> None:
    facts = extract_facts(CONVERSATION)
    assert not any("Should we" in d or "system prompts" in d for d in facts.decisions)


def test_chatter_yields_nothing() -> None:
    facts = extract_facts([{"role": "user", "content": c} for c in ("ok", "thanks!", "lol")])
    assert facts.is_empty()
    assert facts.messages == 3
    assert render_facts(facts).startswith(FACTS_HEADER)


def test_repeated_facts_move_to_the_end_once() -> None:
    msgs = [
        {"role": "user", "content": "We'll use uv for packaging."},
        {"role": "user", "content": "Let's go with ruff for lint."},
        {"role": "user", "content": "We'll use uv for packaging."},
    ]
    assert extract_facts(msgs).decisions == (
        "Let's go with ruff for lint.",
        "We'll use uv for packaging.",
    )


def test_collector_matches_extract_on_every_prefix() -> None:
    collector = FactCollector()
    for i, m in enumerate(CONVERSATION, 1):
        collector.add(m)
        assert collector.facts() == extract_facts(CONVERSATION[:i])


def test_render_lists_categories_and_keeps_the_newest_items() -> None:
    facts = Facts(decisions=tuple(f"decision number {i}" for i in range(20)), messages=40)
    text = render_facts(facts, max_chars=200)
    assert len(text) <= 200
    assert text.startswith(f"{FACTS_HEADER} (40 messages):\n- Decisions: ")
    assert "decision number 19" in text and "decision number 0;" not in text
    full = render_facts(extract_facts(CONVERSATION))
    labels = [line.split(":")[0] for line in full.splitlines()[1:]]
    assert labels == ["- Decisions", "- Done", "- Errors", "- Key facts", "- Topics"]


def test_one_line_summary_is_one_bounded_line() -> None:
    facts = extract_facts(CONVERSATION)
    line = one_line_summary(facts, 160)
    assert "\n" not in line and len(line) <= 160
    assert line.startswith(f"Earlier in this conversation ({len(CONVERSATION)} messages)")
    assert "decided: We'll keep the API under /api/v1" in one_line_summary(facts, 400)


_text = st.lists(
    st.sampled_from(
        [
            "We'll use Postgres 16 for storage.",
            "I fixed the bug in src/x.py.",
            "KeyError: 'a' happened again.",
            "Latency is 40 ms now.",
            "ok",
            "thanks!",
            "The cache is a Redis instance.",
            "see https://example.com/a/b",
            "random words about nothing in particular",
        ]
    ),
    min_size=1,
    max_size=4,
).map(" ".join)
_messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "tool"]), "content": _text | st.text()}
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(_messages, st.integers(60, 2000), st.integers(40, 300))
def test_rendered_text_is_bounded_and_deterministic(
    messages: list[dict[str, str]], max_chars: int, line_chars: int
) -> None:
    facts = extract_facts(messages)
    assert facts == extract_facts(messages)
    text = render_facts(facts, max_chars)
    assert len(text) <= max_chars
    assert text == render_facts(facts, max_chars)
    line = one_line_summary(facts, line_chars)
    assert len(line) <= line_chars and "\n" not in line
