"""The pipeline's decisions and effects, run against the in-process FakeBackend.

Everything here is the real pipeline — admission, gather, the pure decisions (planner,
context window, overflow policy), the run's finish and a real SQLite conversation store —
with only the engine replaced by a scripted fake (``tests/fakes/backend.py``). The same
behaviours are checked on the real engine in ``tests/integration``.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from autotune.ground.errors import (
    ContextLengthExceeded,
    EngineUnavailable,
    InvalidRequest,
    StorageError,
)
from autotune.ground.types import ModelMeta
from autotune.pipeline import ChatInput, ChatRun, Pipeline
from fakes.backend import MODEL, FakeBackend, FakeReply, fake_tokens

pytestmark = pytest.mark.asyncio


def words(n: int, word: str = "word") -> str:
    return " ".join(f"{word}{i}" for i in range(n))


async def ask(pipeline: Pipeline, content: str | list[dict[str, Any]], **kw: Any) -> ChatRun:
    messages = [{"role": "user", "content": content}] if isinstance(content, str) else content
    run = await pipeline.start(ChatInput(messages=messages, **kw))
    async for _ in run:
        pass
    return run


async def test_a_reply_is_streamed_folded_and_recorded(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    fake_backend.queue(FakeReply(("Hi", " you")))
    run = await ask(fake_pipeline, "hello")
    assert run.text == "Hi you" and run.finish_reason == "stop"
    assert run.record.status == "ok" and run.record.prompt_tokens == run.stats.prompt_tokens
    assert fake_pipeline.recent[-1] is run.record
    assert fake_pipeline.queue.running == 0  # the admission place is back


async def test_the_context_is_sticky_then_grows_in_one_step(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    await ask(fake_pipeline, "short question")
    await ask(fake_pipeline, "another short one")
    assert len(fake_backend.loads) == 1  # the second request fits: no reload
    first_ctx = fake_backend.loads[0][1].n_ctx
    run = await ask(fake_pipeline, words(3000))
    assert len(fake_backend.loads) == 2
    assert fake_backend.loads[-1][1].n_ctx > first_ctx
    assert "reload=yes" in run.plan.summary()


async def test_a_grown_context_leaves_the_window_its_headroom(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    """Issue 19 item 8: a history that lands between the window's high-water mark (85 %) and
    100 % of the bucket it needs was grown into that bucket (a reload) and compacted to 50 %
    (a new prefix): the cache thrown away twice. The bucket now includes the headroom."""
    history: list[dict[str, Any]] = []
    for i in range(6):  # ~1,580 tokens: 91 % of the prompt budget the 2,048 bucket leaves
        history += [
            {"role": "user", "content": f"Question {i}: " + words(125, f"q{i}x")},
            {"role": "assistant", "content": f"Answer {i}: " + words(125, f"a{i}x")},
        ]
    history.append({"role": "user", "content": "And now?"})
    await ask(fake_pipeline, "hi")  # loaded at the smallest bucket, counted exactly from here
    run = await ask(fake_pipeline, history, params={"max_tokens": 64})
    assert fake_backend.requests[-1].messages == history  # nothing compacted
    assert fake_backend.loads[-1][1].n_ctx == 4096
    assert "context=full" in run.plan.summary()


async def test_the_newest_message_is_never_cut_the_context_grows(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    """Issue 12: a 1,500-word message on a model loaded at 2,048 tokens was once cut to 32
    tokens with a 200. Now the context grows to hold it whole, and a repeat is the same."""
    await ask(fake_pipeline, "hi", profile="fast")  # loads at 2,048
    assert fake_backend.loads[-1][1].n_ctx == 2048
    long = words(1900)  # ~ the 2,500 engine tokens of a 1,500-word English message
    first = await ask(fake_pipeline, long, profile="fast")
    sent = fake_backend.requests[-1].messages
    assert sent[-1]["content"] == long
    assert first.stats is not None and first.stats.prompt_tokens >= 1900
    assert fake_backend.loads[-1][1].n_ctx >= 2048 + 1024  # past the profile's 2,048 cap
    again = await ask(fake_pipeline, long, profile="fast")
    assert again.stats is not None and again.stats.prompt_tokens == first.stats.prompt_tokens


async def test_history_is_compacted_but_not_the_newest_message(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    history: list[dict[str, Any]] = []
    for i in range(12):
        history += [
            {"role": "user", "content": f"Question {i}: " + words(120, f"q{i}x")},
            {"role": "assistant", "content": f"Answer {i}: " + words(120, f"a{i}x")},
        ]
    newest = {"role": "user", "content": "And the last one? " + words(200, "n")}
    await ask(fake_pipeline, [*history, newest], profile="fast")
    sent = fake_backend.requests[-1].messages
    assert sent[-1] == newest
    assert len(sent) < len(history) + 1  # older turns were folded
    assert "context=" in fake_pipeline.recent[-1].plan


async def test_a_message_longer_than_the_model_gets_a_400_with_numbers(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    await ask(fake_pipeline, "hi")
    loads = len(fake_backend.loads)
    with pytest.raises(ContextLengthExceeded) as info:
        await ask(fake_pipeline, words(9000))
    err = info.value
    assert err.status == 400 and err.code == "context_length_exceeded" and err.param == "messages"
    assert err.needed > 9000 and err.possible == 8192
    assert "8,192" in err.message and "trained" in err.message
    assert len(fake_backend.loads) == loads  # refused before any load
    assert fake_pipeline.queue.running == 0


async def test_truncate_oldest_cuts_the_start_and_says_so(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    text = words(9000) + " THE QUESTION AT THE END?"
    run = await ask(fake_pipeline, text, overflow="truncate-oldest")
    sent = fake_backend.requests[-1].messages[-1]["content"]
    assert sent.endswith("THE QUESTION AT THE END?")
    assert "autotune cut" in sent and len(sent) < len(text)
    assert run.stats is not None and 7000 < run.stats.prompt_tokens <= 8192  # cut, not gutted
    assert "overflow=cut" in run.plan.summary()


async def test_an_unknown_overflow_policy_is_refused(fake_pipeline: Pipeline) -> None:
    with pytest.raises(InvalidRequest) as info:
        await ask(fake_pipeline, "hi", overflow="drop-everything")
    assert info.value.param == "X-Autotune-Overflow"


async def test_max_tokens_beyond_the_model_is_refused_before_any_load(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    """Issue 13: max_tokens 2^31 once reloaded the model to a bigger bucket and back."""
    with pytest.raises(InvalidRequest) as info:
        await ask(fake_pipeline, "hi", params={"max_tokens": 2**31})
    assert info.value.param == "max_tokens" and "8,192" in info.value.message
    assert fake_backend.loads == []


async def test_a_ceiling_max_tokens_is_capped_to_the_context_and_the_plan_says_so(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    """Issue 21: Claude Code sends max_tokens 32000, its own model's maximum, on a model of
    8,192 tokens; as a ceiling (Anthropic's face) it is capped to what the context leaves
    beside the prompt, the engine is sent the cap, and the plan says so."""
    fake_backend.queue(FakeReply(("ok",)))
    run = await ask(fake_pipeline, "hi", params={"max_tokens": 32000}, cap_max_tokens=True)
    capped = run.plan.last("max_tokens")
    assert capped is not None and 256 <= capped.value < 8192
    assert run.request.params["max_tokens"] == capped.value
    assert f"max_tokens={capped.value}" in run.plan.summary()
    assert "32,000 asked" in capped.reason


async def test_max_reply_tokens_caps_a_reply_with_no_limit_or_a_ceiling(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    """AUTOTUNE_MAX_REPLY_TOKENS: a request with no limit, or only a ceiling, gets at most
    that many tokens (the plan says so); a client's own limit below it stands."""
    fake_pipeline.settings = fake_pipeline.settings.model_copy(update={"max_reply_tokens": 48})
    fake_backend.queue(FakeReply(("a",)), FakeReply(("b",)), FakeReply(("c",)))
    unlimited = await ask(fake_pipeline, "hi")
    ceiling = await ask(fake_pipeline, "hi", params={"max_tokens": 32000}, cap_max_tokens=True)
    own = await ask(fake_pipeline, "hi", params={"max_tokens": 16})
    assert unlimited.request.params["max_tokens"] == 48 == ceiling.request.params["max_tokens"]
    assert "max_tokens=48" in unlimited.plan.summary()
    assert own.request.params["max_tokens"] == 16 and own.plan.last("max_tokens") is None


async def test_tool_definitions_count_in_the_context_the_plan_sizes(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    """An agent's tools are thousands of tokens of the prompt: the context holds them."""
    tools = [
        {"type": "function", "function": {"name": f"t{i}", "description": words(200)}}
        for i in range(10)
    ]
    await ask(fake_pipeline, "hi")
    bare = fake_backend.loads[-1][1].n_ctx
    await ask(fake_pipeline, "hi", params={"tools": tools})
    assert fake_backend.loads[-1][1].n_ctx > bare


async def test_a_failed_request_does_not_cause_a_reload_back(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    """Issue 13: the settings a request loads are sticky at once, even if it then fails."""
    await ask(fake_pipeline, "hi")
    fake_backend.queue(FakeReply(("partial", " more"), fail_midway=EngineUnavailable("gone")))
    with pytest.raises(EngineUnavailable):
        await ask(fake_pipeline, words(3000))  # grows the context, then fails
    grown = len(fake_backend.loads)
    await ask(fake_pipeline, "a normal question")
    await ask(fake_pipeline, "another")
    assert len(fake_backend.loads) == grown  # no reload back down


async def test_a_turn_is_stored_before_the_run_ends(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    """Issue 13: the turn is committed before the caller can send its last byte."""
    fake_backend.queue(FakeReply(("Stored", " reply")))
    run = await fake_pipeline.start(
        ChatInput(messages=[{"role": "user", "content": "remember me"}], conversation_id="c1")
    )
    chunks = 0
    async for _ in run:
        chunks += 1
    assert fake_pipeline.store is not None
    stored = [(m.role, m.content) for m in fake_pipeline.store.messages("c1")]
    assert stored == [("user", "remember me"), ("assistant", "Stored reply")]


async def test_a_failed_write_fails_the_run_instead_of_a_silent_ok(
    fake_pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fake_pipeline.store is not None

    def full(*_: Any, **__: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(fake_pipeline.store, "append", full)
    run = await fake_pipeline.start(
        ChatInput(messages=[{"role": "user", "content": "hi"}], conversation_id="c2")
    )
    with pytest.raises(StorageError) as info:
        async for _ in run:
            pass
    assert info.value.status == 507
    assert run.record.status == "error"


async def test_refused_requests_leave_no_conversation_behind(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    fake_backend.queue(FakeReply(error=EngineUnavailable("down")))
    with pytest.raises(EngineUnavailable):
        await ask(fake_pipeline, "hi", conversation_id="never-stored")
    with pytest.raises(ContextLengthExceeded):
        await ask(fake_pipeline, words(9000), conversation_id="never-stored")
    assert fake_pipeline.store is not None
    assert fake_pipeline.store.get("never-stored") is None


async def test_a_resent_history_is_stored_once(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    fake_backend.queue("first answer", "second answer")
    first = [{"role": "user", "content": "one"}]
    await ask(fake_pipeline, first, conversation_id="c3")
    resent = [*first, {"role": "assistant", "content": "first answer"}]
    await ask(fake_pipeline, [*resent, {"role": "user", "content": "two"}], conversation_id="c3")
    assert fake_pipeline.store is not None
    roles = [m.role for m in fake_pipeline.store.messages("c3")]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert fake_backend.requests[-1].messages[-1]["content"] == "two"


async def test_unrelated_requests_sharing_a_first_line_keep_their_own_prompt(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    """Issue 12: a compaction must never leak into another request with the same start."""
    common = {"role": "user", "content": "Summarise this."}
    a = [common, {"role": "assistant", "content": "ok"}, {"role": "user", "content": words(50)}]
    b = [common, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "short"}]
    await ask(fake_pipeline, a, profile="fast")
    await ask(fake_pipeline, b, profile="fast")
    assert fake_backend.requests[-1].messages == b


async def test_estimates_never_undercount_emoji_or_cjk(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    """Issue 13: 3,000 emoji were once estimated at 1,000 tokens and the engine refused the
    prompt at a context autotune had sized too small."""
    text = "😀" * 3000
    run = await ask(fake_pipeline, text)
    assert fake_backend.loads[-1][1].n_ctx >= len(fake_tokens(text))
    assert run.record.status == "ok"


async def test_a_long_estimate_is_recounted_exactly_before_refusing(
    fake_backend: FakeBackend, fake_pipeline: Pipeline
) -> None:
    """Estimates lean high; when one alone would refuse, the engine counts exactly first."""
    fake_backend.meta = ModelMeta(name=MODEL, context_length=4096)
    # ~3,100 fake tokens, but 6-letter words make the character estimate far higher.
    text = " ".join("abcdef" for _ in range(3100))
    run = await ask(fake_pipeline, text)
    assert run.record.status == "ok"
    assert fake_backend.requests[-1].messages[-1]["content"] == text


async def test_retrieving_a_stored_conversation_is_read_only(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    fake_backend.queue("answer")
    run = await ask(fake_pipeline, "hi", conversation_id="c4", persist=False)
    assert run.conversation_id == "c4"
    assert fake_pipeline.store is not None and fake_pipeline.store.get("c4") is None


async def test_an_estimate_the_engine_proves_short_is_corrected_before_any_byte(
    fake_pipeline: Pipeline, fake_backend: FakeBackend
) -> None:
    """Issue 13: a request is never refused for a context autotune could have given it.
    One-letter words are denser than the estimate's characters-per-token: the engine
    refuses the first context, autotune counts exactly and answers in a bigger one."""
    text = " ".join("a" for _ in range(4500))
    run = await ask(fake_pipeline, text, params={"max_tokens": 10})
    assert run.record.status == "ok" and run.stats is not None
    assert [settings.n_ctx for _, settings in fake_backend.loads] == [4096, 8192]
    assert fake_backend.requests[-1].messages[-1]["content"] == text


async def test_measured_speculation_rides_on_the_load_and_shows_in_plan_and_telemetry(
    tmp_path: Any,
) -> None:
    """A tuned model's next load carries its speculative mode; no request reloads for it; the
    engine's draft counts (llama.cpp ``timings.draft_n`` / ``draft_n_accepted``) reach the
    record. A model with no measurement loads exactly as before."""
    from dataclasses import replace

    from autotune.backends.registry import BackendSet
    from autotune.ground.config import Settings
    from autotune.ground.tuned import TunedSettings
    from fakes.backend import LIKE_EMBEDDED

    backend = FakeBackend(
        capabilities=replace(LIKE_EMBEDDED, speculative=True), models=[MODEL, "plain"]
    )
    measured = TunedSettings(speculative="ngram_mod", spec_copy_gain=0.5, spec_chat_gain=0.0)
    pipeline = Pipeline(
        BackendSet({"fake": backend}, ["fake"]),
        Settings(home=tmp_path / "home", backend="embedded", default_model=MODEL),
        tuned=lambda engine, model, profile: measured if model == MODEL else None,
    )
    try:
        backend.queue(FakeReply(("def f():",), timings={"draft_n": 40, "draft_n_accepted": 30}))
        first = await ask(pipeline, "Repeat this file")
        second = await ask(pipeline, "And again")
        plain = await ask(pipeline, "Hi", model="plain")
    finally:
        await pipeline.close()
    (model, load), (other, plain_load) = backend.loads
    assert model == MODEL and load is not None and load.speculative == "ngram_mod"
    assert "spec=ngram_mod" in first.plan.summary() and "spec=ngram_mod" in first.record.plan
    assert (first.record.draft_tokens, first.record.draft_accepted) == (40, 30)
    assert "spec=ngram_mod" in second.plan.summary() and not second.plan.reload_expected
    assert second.record.draft_tokens is None  # this reply drafted nothing
    assert other == "plain" and plain_load is not None and plain_load.speculative is None
    assert "spec=" not in plain.plan.summary()
