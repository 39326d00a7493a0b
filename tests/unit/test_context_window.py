"""The context window is pure: property tests on generated conversations, counted by the estimator.

Generated text carries ids (``S12`` sentences, ``C3`` code blocks, ``L40`` log lines) so a test
can tell a whole sentence, block or line from a cut one wherever it lands in the output.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autotune.context.facts import FACTS_HEADER
from autotune.context.tokens import TokenEstimator
from autotune.context.window import (
    COMPRESSED,
    EMERGENCY,
    FULL,
    RECENT,
    TIERS,
    CompactionState,
    ContextOverflow,
    ContextWindow,
    FitResult,
)

Message = dict[str, Any]
_EST = TokenEstimator()
SYSTEM = "You are a careful assistant for a small engineering team. Answer briefly."
WORDS = [
    "cache",
    "parser",
    "server",
    "request",
    "budget",
    "token",
    "window",
    "model",
    "engine",
    "queue",
    "thread",
    "socket",
    "buffer",
    "index",
    "schema",
    "client",
    "router",
    "worker",
    "deploy",
    "config",
    "metric",
]
CHATTER = ["ok", "thanks!", "lol", "got it", "cool, thx"]


def count(messages: list[Message]) -> int:
    return _EST.count("model", messages)


class Registry:
    """Every generated sentence, code block and log line, by id."""

    def __init__(self) -> None:
        self.items: dict[str, str] = {}

    def add(self, prefix: str, body: str) -> str:
        key = f"{prefix}{len(self.items)}"
        self.items[key] = body.replace("@", key)
        return self.items[key]


def _prose(draw: st.DrawFn, reg: Registry, max_paragraphs: int = 3) -> str:
    paragraphs = []
    for _ in range(draw(st.integers(1, max_paragraphs))):
        if draw(st.integers(0, 4)) == 0:
            lines = "\n".join(f"    step_{i}(x)  # @" for i in range(draw(st.integers(1, 3))))
            paragraphs.append(reg.add("C", f"```python\n{lines}\n```"))
            continue
        sentences = []
        for _ in range(draw(st.integers(1, 5))):
            words = draw(st.lists(st.sampled_from(WORDS), min_size=2, max_size=12))
            end = draw(st.sampled_from([".", ".", "!", "?"]))
            sentences.append(reg.add("S", f"@ {' '.join(words)}{end}"))
        paragraphs.append(" ".join(sentences))
    return "\n\n".join(paragraphs)


def _log(draw: st.DrawFn, reg: Registry) -> str:
    lines = []
    for i in range(draw(st.integers(1, 60))):
        level = "ERROR" if draw(st.integers(0, 15)) == 0 else "INFO"
        lines.append(reg.add("L", f"2024-05-01 10:00:{i % 60:02d} {level} @ step {i}"))
    return "\n".join(lines)


@st.composite
def conversations(
    draw: st.DrawFn, max_turns: int = 12
) -> tuple[list[Message], list[int], Registry]:
    """(messages, checkpoints, registry): a checkpoint is a length at which the client sends."""
    reg = Registry()
    system = draw(st.sampled_from([None, SYSTEM, SYSTEM * 6]))
    msgs: list[Message] = [{"role": "system", "content": system}] if system else []
    checkpoints = []
    for _ in range(draw(st.integers(1, max_turns))):
        if draw(st.integers(0, 4)) == 0:
            user = draw(st.sampled_from(CHATTER))
        else:
            user = _prose(draw, reg, 2)
        msgs.append({"role": "user", "content": user})
        checkpoints.append(len(msgs))
        for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
            ids = [reg.add("T", "call_@") for _ in range(draw(st.integers(1, 2)))]
            msgs.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": i,
                            "type": "function",
                            "function": {"name": "run", "arguments": "{}"},
                        }
                        for i in ids
                    ],
                }
            )
            msgs.extend(
                {"role": "tool", "tool_call_id": i, "content": _log(draw, reg)} for i in ids
            )
            checkpoints.append(len(msgs))
        msgs.append({"role": "assistant", "content": _prose(draw, reg)})
    return msgs, checkpoints, reg


def _system(messages: list[Message]) -> list[Message]:
    return [m for m in messages[:1] if m["role"] == "system"]


def _newest_turn(messages: list[Message]) -> list[Message]:
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return messages[last_user:]


def _text(message: Message) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else ""


_BLOCK_STARTS = (FACTS_HEADER, "Earlier in this conversation")
_IDS = re.compile(r"\b[SCLT]\d+\b")


def check_invariants(
    inp: list[Message], res: FitResult, budget: int, reg: Registry, in_system: bool = True
) -> None:
    out = res.messages
    assert res.tokens == count(out) <= budget
    assert res.tier in TIERS
    system = _system(inp)
    # The system prompt is kept verbatim; the block (if any) follows it.
    blocks = []
    if system and in_system:
        sys_text = system[0]["content"]
        assert out[0]["role"] == "system" and out[0]["content"].startswith(sys_text)
        if out[0]["content"] != sys_text:
            blocks.append(out[0]["content"].removeprefix(sys_text + "\n\n"))
    elif system:
        assert out[0] == system[0]
    start = 1 if system else 0
    if (not system or not in_system) and len(out) > start and out[start]["role"] == "system":
        blocks.append(out[start]["content"])
        start += 1
    assert all(b.startswith(_BLOCK_STARTS) for b in blocks)
    assert all(m["role"] != "system" for m in out[start:])
    newest = _newest_turn(inp)
    if count(system + newest) <= budget:
        assert out[-len(newest) :] == newest, "the newest turn must be sent verbatim"
    # Every other message is an input message or a compressed copy of one, in input order.
    origin = {key: i for i, m in enumerate(inp) for key in _IDS.findall(_text(m))}
    for i, m in enumerate(inp):
        for call in m.get("tool_calls") or ():
            origin[call["id"]] = i
        if m["role"] == "tool":
            origin["reply:" + m["tool_call_id"]] = i
    order = []
    for m in out[start:]:
        text = _text(m)
        assert text.count("```") % 2 == 0, "a code fence was cut"
        for key in set(_IDS.findall(text)):
            assert reg.items[key] in text, f"{key} was cut"
        keys = set(_IDS.findall(text)) | {c["id"] for c in m.get("tool_calls") or ()}
        if m["role"] == "tool":
            keys.add("reply:" + m["tool_call_id"])
        sources = {origin[key] for key in keys}
        assert len(sources) <= 1, "a message mixes text from several messages"
        if sources:
            (i,) = sources
            assert inp[i]["role"] == m["role"] and inp[i].get("tool_call_id") == m.get(
                "tool_call_id"
            )
            order.append(i)
        elif m not in inp:  # no id left: compression dropped every sentence of it
            assert _text(m).strip("[]… \n") == "", m
    assert order == sorted(order) and len(set(order)) == len(order), "messages were reordered"
    _check_tool_pairs(out)


def _check_tool_pairs(out: list[Message]) -> None:
    for i, m in enumerate(out):
        if m.get("tool_calls"):
            ids = {c["id"] for c in m["tool_calls"]}
            replies = set()
            j = i + 1
            while j < len(out) and out[j]["role"] == "tool":
                replies.add(out[j]["tool_call_id"])
                j += 1
            assert replies == ids, "a tool call was sent without all its replies"
        if m["role"] == "tool":
            j = i - 1
            while j >= 0 and out[j]["role"] == "tool":
                j -= 1
            assert j >= 0 and out[j].get("tool_calls"), "a tool reply was sent without its call"
            assert m["tool_call_id"] in {c["id"] for c in out[j]["tool_calls"]}


def _round_trip(state: CompactionState | None) -> CompactionState | None:
    if state is None:
        return None
    back = CompactionState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert back == state
    return back


_budget_share = st.floats(0.08, 1.3)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations(), _budget_share, st.data())
def test_a_fresh_fit_keeps_every_invariant(
    conv: tuple[list[Message], list[int], Registry], share: float, data: st.DataObject
) -> None:
    msgs, checkpoints, reg = conv
    inp = msgs[: data.draw(st.sampled_from(checkpoints))]
    budget = max(40, int(count(msgs) * share))
    window = ContextWindow()
    try:
        res = window.fit(inp, budget, count)
    except ContextOverflow as exc:
        assert count(_system(inp) + _newest_turn(inp)) > budget
        assert exc.budget == budget
        return
    check_invariants(inp, res, budget, reg)
    assert window.fit(inp, budget, count) == res  # deterministic
    assert inp == msgs[: len(inp)]  # the input is not modified


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conversations(max_turns=16), _budget_share, st.booleans())
def test_between_compactions_the_prompt_only_grows(
    conv: tuple[list[Message], list[int], Registry], share: float, in_system: bool
) -> None:
    msgs, checkpoints, reg = conv
    budget = max(40, int(count(msgs) * share))
    window = ContextWindow(block_in_system=in_system)
    state: CompactionState | None = None
    prev: list[Message] | None = None
    prev_end = 0
    for end in checkpoints:
        inp = msgs[:end]
        try:
            res = window.fit(inp, budget, count, state)
        except ContextOverflow:
            assert count(_system(inp) + _newest_turn(inp)) > budget
            state, prev = None, None
            continue
        check_invariants(inp, res, budget, reg, in_system)
        if prev is not None:
            continuation = prev + msgs[prev_end:end]
            # compacted is False exactly when the previous prompt is extended byte for byte.
            assert res.compacted == (res.messages != continuation)
            if not res.compacted:
                assert res.messages[: len(prev)] == prev
        assert window.fit(inp, budget, count, state) == res
        state, prev, prev_end = _round_trip(res.state), res.messages, end


# ---------------------------------------------------------------------------- scripted


TOPICS = ["the parser", "the cache", "the HTTP server", "the database layer", "the CLI", "logs"]


def scripted_turn(i: int) -> tuple[str, str]:
    topic = TOPICS[i % len(TOPICS)]
    user = (
        f"Question {i}: how should we handle {topic} when the input is large? "
        f"Responses take about {i * 10} ms right now."
    )
    if i % 7 == 3:
        user = "thanks!"
    reply = (
        f"For {topic}, we'll use a bounded buffer. This keeps memory flat.\n\n"
        f"```python\ndef handle_{i}(data):\n    return data[:{i}]\n```\n\n"
        f"It processes items in chunks. Each chunk is checked before it is stored. "
        f"The code lives in src/mod{i}.py."
    )
    return user, reply


def test_sixty_turns_change_the_prefix_at_most_five_times() -> None:
    window = ContextWindow()
    msgs: list[Message] = [{"role": "system", "content": SYSTEM}]
    budget = 4000
    state, prev = None, None
    changes, reprefilled, sent = 0, 0, 0
    for i in range(60):
        user, reply = scripted_turn(i)
        msgs.append({"role": "user", "content": user})
        res = window.fit(msgs, budget, count, state)
        assert res.tokens <= budget
        if res.compacted:
            changes += 1
            reprefilled += res.tokens
        else:
            if prev is not None:
                assert res.messages[: len(prev)] == prev
            reprefilled += res.tokens - (count(prev) if prev else 0)
        sent += res.tokens
        state, prev = _round_trip(res.state), res.messages
        msgs.append({"role": "assistant", "content": reply})
    assert count(msgs) > 1.5 * budget  # the budget really forced compaction
    assert 1 <= changes <= 5
    assert res.tier == RECENT
    assert FACTS_HEADER in res.messages[0]["content"]
    assert "we'll use a bounded buffer" in res.messages[0]["content"]
    assert reprefilled < sent / 3  # most prompt tokens came from the engine's cache


def _turns(n: int, reply: str, start: int = 0) -> list[Message]:
    out: list[Message] = []
    for i in range(start, start + n):
        out.append({"role": "user", "content": f"Question {i}: what about part {i} of the plan?"})
        out.append({"role": "assistant", "content": reply.format(i=i)})
    return out


REPLY = "Part {i} uses the cache. We'll use Redis for part {i}. It is configured in src/p{i}.py."


def test_a_short_conversation_is_sent_as_is() -> None:
    msgs = [{"role": "system", "content": SYSTEM}, *_turns(3, REPLY)]
    msgs.append({"role": "user", "content": "And then?"})
    res = ContextWindow().fit(msgs, 10_000, count)
    assert res == FitResult(msgs, None, FULL, False, count(msgs))


def test_a_compaction_folds_old_turns_and_keeps_recent_ones_verbatim() -> None:
    msgs = [{"role": "system", "content": SYSTEM}, *_turns(30, REPLY)]
    msgs.append({"role": "user", "content": "Summarise the plan."})
    budget = int(count(msgs) * 0.6)
    res = ContextWindow().fit(msgs, budget, count)
    assert res.compacted and res.tier == RECENT
    assert res.state is not None and res.state.kept == ()
    system, *rest = res.messages
    assert system["content"].startswith(SYSTEM + "\n\n" + FACTS_HEADER)
    last_folded = msgs[res.state.folded]  # history starts at msgs[1]
    assert last_folded["role"] == "assistant"
    decision = re.search(r"We'll use Redis for part \d+", last_folded["content"])
    assert decision and decision.group(0) in system["content"]  # the newest folded decision
    assert rest == msgs[len(msgs) - len(rest) :]  # a verbatim suffix
    assert rest[0]["role"] == "user"  # folded at a turn boundary
    assert len(rest) >= 5  # at least two earlier turns besides the newest
    fill = (res.tokens - count(msgs[:1])) / (budget - count(msgs[:1]))
    assert fill <= 0.5


LONG = " ".join(
    f"Sentence {k} of the long answer about item {{i}} explains one more detail." for k in range(40)
)


def test_large_recent_turns_are_compressed_and_chatter_dropped() -> None:
    msgs = [{"role": "system", "content": SYSTEM}, *_turns(6, LONG)]
    msgs += [
        {"role": "user", "content": "thanks!"},
        {"role": "assistant", "content": "You're welcome!"},
        {"role": "user", "content": "Now the last question about item 9?"},
    ]
    budget = 2600
    res = ContextWindow().fit(msgs, budget, count)
    assert res.tier == COMPRESSED and res.compacted
    assert res.tokens <= budget
    kept = res.state.kept if res.state else ()
    assert kept and all(m["role"] in ("user", "assistant") for m in kept)
    assert any("[…]" in m["content"] for m in kept)
    assert not any(m["content"] in ("thanks!", "You're welcome!") for m in res.messages)
    assert res.messages[-1] == msgs[-1]


def test_a_huge_newest_turn_leaves_room_for_nothing_else() -> None:
    msgs = [{"role": "system", "content": SYSTEM}, *_turns(5, REPLY)]
    big = " ".join(f"Line {k} of the pasted document says something." for k in range(120))
    msgs.append({"role": "user", "content": big})
    budget = int(count(msgs[:1] + msgs[-1:]) * 1.25)
    res = ContextWindow().fit(msgs, budget, count)
    assert res.tier == EMERGENCY
    assert res.messages[-1] == msgs[-1]
    assert [m["role"] for m in res.messages] == ["system", "user"]


def test_a_newest_turn_over_the_budget_is_never_compressed() -> None:
    """Issue 12: the newest message is sacred. Over the budget it is not squeezed to fit (it
    once was, down to a few tokens); the window says how many tokens it needs instead."""
    code = "```python\ndef main():\n    return 42\n```"
    big = " ".join(f"Paragraph sentence {k} with some filler words." for k in range(200))
    msgs = [
        {"role": "system", "content": SYSTEM},
        *_turns(2, REPLY),
        {"role": "user", "content": f"{big}\n\n{code}\n\nWhy does it fail?"},
    ]
    with pytest.raises(ContextOverflow) as info:
        ContextWindow().fit(msgs, 400, count)
    assert info.value.needed == count([msgs[0], msgs[-1]]) > 400
    assert info.value.budget == 400


def test_overflow_when_the_newest_turn_cannot_fit() -> None:
    code = "```\n" + "\n".join(f"x{k} = {k}" for k in range(400)) + "\n```"
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": code}]
    with pytest.raises(ContextOverflow) as info:
        ContextWindow().fit(msgs, 300, count)
    assert info.value.needed > 300 and info.value.budget == 300
    with pytest.raises(ContextOverflow):
        ContextWindow().fit([{"role": "system", "content": SYSTEM * 50}], 100, count)


def _compacted(budget_share: float = 0.6) -> tuple[list[Message], int, FitResult]:
    msgs = [{"role": "system", "content": SYSTEM}, *_turns(30, REPLY)]
    msgs.append({"role": "user", "content": "next?"})
    budget = int(count(msgs) * budget_share)
    res = ContextWindow().fit(msgs, budget, count)
    assert res.state is not None and res.state.folded > 0
    return msgs, budget, res


def test_an_edited_history_drops_the_state() -> None:
    msgs, budget, res = _compacted()
    edited = [dict(m) for m in msgs]
    edited[1]["content"] = "Question 0, edited."
    window = ContextWindow()
    assert window.fit(edited, budget, count, res.state) == window.fit(edited, budget, count)
    shorter = msgs[:3]
    assert window.fit(shorter, budget, count, res.state) == window.fit(shorter, budget, count)


def test_a_changed_system_prompt_drops_the_state() -> None:
    msgs, budget, res = _compacted()
    changed = [{"role": "system", "content": "Be terse."}, *msgs[1:]]
    window = ContextWindow()
    assert window.fit(changed, budget, count, res.state) == window.fit(changed, budget, count)


def test_the_block_can_be_its_own_message_or_the_first_one() -> None:
    msgs = [{"role": "system", "content": SYSTEM}, *_turns(30, REPLY)]
    msgs.append({"role": "user", "content": "next?"})
    budget = int(count(msgs) * 0.6)
    res = ContextWindow(block_in_system=False).fit(msgs, budget, count)
    assert res.messages[0] == msgs[0]
    assert res.messages[1]["role"] == "system"
    assert res.messages[1]["content"].startswith(FACTS_HEADER)
    bare = ContextWindow().fit(msgs[1:], budget, count)
    assert bare.messages[0]["role"] == "system"
    assert bare.messages[0]["content"].startswith(FACTS_HEADER)


def test_a_list_system_prompt_gets_a_text_part() -> None:
    parts = [{"type": "text", "text": SYSTEM}]
    msgs = [{"role": "system", "content": parts}, *_turns(30, REPLY)]
    msgs.append({"role": "user", "content": "next?"})
    res = ContextWindow().fit(msgs, int(count(msgs) * 0.6), count)
    content = res.messages[0]["content"]
    assert content[0] == parts[0] and content[1]["text"].startswith("\n\n" + FACTS_HEADER)


def test_state_serialisation_rejects_foreign_data() -> None:
    _, _, res = _compacted()
    assert res.state is not None
    data = res.state.to_dict()
    assert json.loads(json.dumps(data)) == data
    for bad in (
        {**data, "version": 99},
        {**data, "folded": -1},
        {**data, "folded": True},
        {**data, "tier": "huge"},
        {**data, "kept": "x"},
        {**data, "block": 3},
    ):
        with pytest.raises(ValueError):
            CompactionState.from_dict(bad)


def test_water_marks_are_validated() -> None:
    for kwargs in ({"low_water": 0.9, "high_water": 0.8}, {"high_water": 1.5}, {"low_water": 0}):
        with pytest.raises(ValueError):
            ContextWindow(**kwargs)
    with pytest.raises(ValueError):
        ContextWindow().fit([{"role": "user", "content": "hi"}], 0, count)


def test_tool_exchanges_are_folded_or_kept_whole() -> None:
    msgs: list[Message] = [{"role": "system", "content": SYSTEM}]
    for i in range(25):
        msgs.append({"role": "user", "content": f"Check service {i} please."})
        call = {"id": f"c{i}", "type": "function", "function": {"name": "probe", "arguments": "{}"}}
        msgs.append({"role": "assistant", "content": None, "tool_calls": [call]})
        msgs.append({"role": "tool", "tool_call_id": f"c{i}", "content": f"service {i}: up\n" * 20})
        msgs.append({"role": "assistant", "content": f"Service {i} is up."})
    msgs.append({"role": "user", "content": "All good?"})
    for share in (0.2, 0.35, 0.6, 0.9):
        res = ContextWindow().fit(msgs, int(count(msgs) * share), count)
        _check_tool_pairs(res.messages)
        assert res.messages[-1] == msgs[-1]


def test_a_retry_with_the_same_messages_sends_the_same_prompt() -> None:
    msgs, budget, res = _compacted()
    again = ContextWindow().fit(msgs, budget, count, res.state)
    assert again == FitResult(res.messages, res.state, res.tier, False, res.tokens)


def test_empty_and_system_only_inputs() -> None:
    assert ContextWindow().fit([], 100, count) == FitResult([], None, FULL, False, count([]))
    only = [{"role": "system", "content": SYSTEM}, {"role": "developer", "content": "Be terse."}]
    res = ContextWindow().fit(only, 1000, count)
    assert res.messages == only and res.state is None


def test_developer_messages_count_as_the_system_prompt() -> None:
    msgs = [{"role": "developer", "content": SYSTEM}, *_turns(30, REPLY)]
    msgs.append({"role": "user", "content": "next?"})
    res = ContextWindow().fit(msgs, int(count(msgs) * 0.6), count)
    assert res.messages[0]["role"] == "developer"
    assert res.messages[0]["content"].startswith(SYSTEM + "\n\n" + FACTS_HEADER)
