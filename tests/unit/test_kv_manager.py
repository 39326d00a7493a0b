"""The KV-cache manager in the real pipeline, against the FakeBackend's slots.

Requests are sent as apps send them: the whole history every turn, no conversation id. The
fake keeps a prompt per slot, reuses its common prefix like llama.cpp does, tokenizes
prompts for look-ups, and saves and restores slots as files with llama.cpp's header
(tests/fakes/backend.py). The same behaviours are checked on the real engine in
tests/integration/test_kv_cache.py.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from autotune.backends.registry import BackendSet
from autotune.ground.config import Settings
from autotune.ground.kv import BLOCK
from autotune.ground.types import EngineEvent
from autotune.pipeline import ChatInput, ChatRun, Pipeline
from autotune.pipeline.kv import KvManager
from autotune.store.conversations import ConversationStore
from autotune.store.db import Database
from autotune.store.kv import KvStore
from fakes.backend import MODEL, FakeBackend, slot_file


class Rig:
    """Pipelines over fake engines that share one database and one KV folder, as an
    ``autotune serve`` restarted on the same machine would."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.kv_dir = tmp / "kv"
        self.kv_dir.mkdir()
        self.db = Database(tmp / "kv.db")
        self.events: list[EngineEvent] = []
        self.open: list[tuple[Pipeline, FakeBackend]] = []

    def start(
        self, *, budget: int = 10**9, concurrency: int = 1, ram_tokens: int = 0
    ) -> tuple[Pipeline, FakeBackend]:
        engine = FakeBackend(kv_dir=self.kv_dir, ram_tokens=ram_tokens)
        settings = Settings(
            home=self.tmp / "home",
            backend="embedded",
            default_model=MODEL,
            max_concurrent=concurrency,
            max_queued=64,
        )
        kv = KvManager(KvStore(self.db, self.kv_dir), budget, self.events.append)
        pipeline = Pipeline(
            BackendSet({"fake": engine}, ["fake"]),
            settings,
            store=ConversationStore(self.db),
            kv=kv,
        )
        engine.before_unload = functools.partial(kv.save_slots, engine)
        self.open.append((pipeline, engine))
        return pipeline, engine

    async def stop(self, pipeline: Pipeline, engine: FakeBackend) -> None:
        await pipeline.close()
        await engine.aclose()  # a clean shutdown: the slots are offered for saving
        assert pipeline.kv is not None
        await pipeline.kv.aclose()

    def kinds(self) -> list[str]:
        return [e.kind for e in self.events]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.db.close()


class Chat:
    """A conversation as an app holds it: the whole history, sent every turn."""

    def __init__(self, first: str = "", system: str | None = None) -> None:
        self.history: list[dict[str, Any]] = []
        if system is not None:
            self.history.append({"role": "system", "content": system})
        self.first = first

    async def say(self, pipeline: Pipeline, text: str, **extra: Any) -> ChatRun:
        self.history.append({"role": "user", "content": text})
        run = await pipeline.start(ChatInput(messages=list(self.history), **extra))
        async for _ in run:
            pass
        self.history.append({"role": "assistant", "content": run.text})
        return run


async def settled(pipeline: Pipeline) -> None:
    """Wait for the saves that follow a turn (they run after the reply, in the background)."""
    assert pipeline.kv is not None
    while pipeline.kv._tasks:
        await asyncio.gather(*list(pipeline.kv._tasks))


def prefilled(run: ChatRun) -> int:
    assert run.stats is not None and run.stats.prompt_tokens is not None
    return run.stats.prompt_tokens - (run.stats.cached_tokens or 0)


async def test_a_whole_history_resumes_from_disk_after_a_restart(rig: Rig) -> None:
    pipeline, engine = rig.start()
    chat = Chat()
    first = await chat.say(pipeline, "Remember these: " + " ".join(f"f{i}" for i in range(3000)))
    second = await chat.say(pipeline, "And the first fact?")
    assert second.record.kv == "hit" and first.record.kv == "miss"
    cached = second.stats.cached_tokens  # type: ignore[union-attr]
    assert f"kv_cache=hit; kv_reused={cached}/" in second.plan.summary() and cached > 3000
    await settled(pipeline)
    # Saved once after the long first turn; the short second added too little to save again.
    assert [a[0] for a in engine.slot_actions] == ["save"]
    await rig.stop(pipeline, engine)

    pipeline, engine = rig.start()  # a new engine: its slots are empty
    third = await chat.say(pipeline, "And the last fact?")
    assert third.record.kv == "restored" and "kv_cache=restore" in third.plan.summary()
    assert prefilled(third) <= 0.05 * (third.stats.prompt_tokens or 0)  # type: ignore[union-attr]
    # The pipeline loads ahead of the stream on an engine with slots: the request that
    # paid for the load still says so, and the next one does not.
    assert (first.record.reloaded, second.record.reloaded) == (True, False)
    assert first.record.load_ms is not None and second.record.load_ms is None
    assert third.record.reloaded is True
    await rig.stop(pipeline, engine)


async def test_a_new_session_with_a_saved_preamble_prefills_only_the_rest(rig: Rig) -> None:
    preamble = "You are an agent. Tools: " + " ".join(f"tool{i}(x)" for i in range(1500))
    pipeline, engine = rig.start()
    await Chat(system=preamble).say(pipeline, "List the files.")
    await rig.stop(pipeline, engine)

    pipeline, engine = rig.start()
    second = await Chat(system=preamble).say(pipeline, "Open the README instead, please.")
    assert second.record.kv == "restored"
    assert prefilled(second) <= 0.1 * 1500  # the new question, not the preamble
    await rig.stop(pipeline, engine)


async def test_short_prompts_cost_no_look_up(rig: Rig) -> None:
    pipeline, engine = rig.start()
    run = await Chat().say(pipeline, "Hi there, how are you?")
    assert engine.lookups == 0
    # The choice (too short to look up), then what the engine reused by its own count.
    assert [d.value for d in run.plan.decisions if d.key == "kv_cache"] == ["short", "miss"]
    await settled(pipeline)
    assert engine.slot_actions == []
    await rig.stop(pipeline, engine)


async def test_a_file_the_newer_one_holds_is_dropped(rig: Rig) -> None:
    pipeline, engine = rig.start()
    chat = Chat()
    await chat.say(pipeline, " ".join(f"a{i}" for i in range(400)))
    await settled(pipeline)
    assert pipeline.kv is not None
    (older,) = pipeline.kv.store.files()
    await chat.say(pipeline, " ".join(f"b{i}" for i in range(400)))  # doubles: saved again
    await settled(pipeline)
    (newer,) = pipeline.kv.store.files()
    assert newer.filename != older.filename and newer.tokens > older.tokens
    assert not (rig.kv_dir / older.filename).exists() and "kv_file_replaced" in rig.kinds()
    # A different conversation keeps its own file beside it.
    await Chat().say(pipeline, " ".join(f"c{i}" for i in range(400)))
    await settled(pipeline)
    assert len(pipeline.kv.store.files()) == 2
    await rig.stop(pipeline, engine)


async def test_conversations_taking_turns_on_one_slot_keep_their_prefix(rig: Rig) -> None:
    pipeline, engine = rig.start()
    chats = [Chat() for _ in range(4)]
    for rnd in range(3):
        for k, chat in enumerate(chats):
            run = await chat.say(pipeline, f"round {rnd} of conversation {k}: " + "w " * 200)
            if rnd:  # after the first round every turn reuses its whole previous prompt
                assert run.record.kv == "restored"
                assert prefilled(run) < 220
    await settled(pipeline)
    saves = [a for a in engine.slot_actions if a[0] == "save"]
    assert len(saves) <= 12  # at most one per turn, never twice the same state
    await rig.stop(pipeline, engine)


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "other model"])
async def test_a_damaged_file_is_removed_and_the_turn_answered(rig: Rig, damage: str) -> None:
    pipeline, engine = rig.start()
    chat = Chat()
    await chat.say(pipeline, "one " * 300)
    await settled(pipeline)
    assert pipeline.kv is not None
    (saved,) = pipeline.kv.store.files()
    await pipeline.kv.files.aclose()  # its checksum is recorded
    await Chat().say(pipeline, "two " * 300)  # takes the slot
    path = rig.kv_dir / saved.filename
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "corrupt":
        path.write_bytes(data[:-4] + b"XXXX")
    else:  # a file of another model under this name, with its own checksum recorded
        path.write_bytes(slot_file([1, 2, 3], "another-model").ljust(len(data), b" "))
        pipeline.kv.store.seal(saved)
    run = await chat.say(pipeline, "again")
    assert run.record.status == "ok" and run.record.kv in ("miss", "saved")
    assert not path.exists() and "kv_file_removed" in rig.kinds()
    await rig.stop(pipeline, engine)


async def test_the_disk_budget_evicts_the_least_recently_used_file(rig: Rig) -> None:
    pipeline, engine = rig.start()
    for word in ("alpha", "beta"):
        await Chat().say(pipeline, f"{word} " * 100)
        await settled(pipeline)
    assert pipeline.kv is not None
    sizes = [f.size for f in pipeline.kv.store.files()]
    pipeline.kv.files.disk_budget = sum(sizes) + 10  # room for two files
    await Chat().say(pipeline, "gamma " * 100)  # a third file, so the oldest goes
    await settled(pipeline)
    files = pipeline.kv.store.files()
    assert len(files) == 2 and "kv_file_evicted" in rig.kinds()
    await rig.stop(pipeline, engine)


async def test_twenty_concurrent_conversations_on_two_slots(rig: Rig) -> None:
    pipeline, engine = rig.start(concurrency=2)
    chats = [Chat() for _ in range(20)]
    runs = await asyncio.gather(
        *(c.say(pipeline, f"hello {i} " + "x " * 100) for i, c in enumerate(chats))
    )
    assert all(r.record.status == "ok" for r in runs)
    runs = await asyncio.gather(*(c.say(pipeline, f"again {i}") for i, c in enumerate(chats)))
    assert all(r.record.status == "ok" for r in runs)
    assert engine.loads[-1][1].n_parallel == 2
    assert {a[1] for a in engine.slot_actions} <= {0, 1}  # and none hit a busy slot
    await rig.stop(pipeline, engine)


@pytest.mark.parametrize("ram_tokens", [100_000, 500])
async def test_a_ram_cache_that_holds_them_spares_the_disk(rig: Rig, ram_tokens: int) -> None:
    """With a host-RAM prompt cache big enough for four conversations, llama.cpp serves
    their turns from RAM: autotune restores nothing and saves only after long turns; with
    one too small, every return is a restore. Either way every turn after the first round
    reuses its previous prompt (less what a file may lag: under a block, which costs less
    to prefill again than to save)."""
    pipeline, engine = rig.start(ram_tokens=ram_tokens)
    chats = [Chat() for _ in range(4)]
    for rnd in range(4):
        for k, chat in enumerate(chats):
            text = f"round {rnd}?" if rnd else f"conversation {k}: " + "w " * 1000
            run = await chat.say(pipeline, text)
            if rnd:
                assert prefilled(run) < BLOCK + 20
    await settled(pipeline)
    actions = [a for a, *_ in engine.slot_actions]
    if ram_tokens > 10_000:
        # Turns come from RAM. What a restore overwrote is not in RAM any more (llama.cpp
        # keeps a slot's state only when a request takes the slot), so about one
        # conversation a round comes from disk — never all four.
        assert actions.count("restore") <= 5 and actions.count("save") <= 8
    else:  # nothing fits the RAM cache: every return restored
        assert actions.count("restore") >= 12 - 1
    await rig.stop(pipeline, engine)


async def test_a_conversation_id_is_a_hint_never_needed(rig: Rig) -> None:
    """The same history with and without X-Conversation-Id gets the same KV."""
    pipeline, engine = rig.start()
    named, anonymous = Chat(), Chat()
    notes = " ".join(f"n{i}" for i in range(500))
    await named.say(pipeline, "first " + notes, conversation_id="named", persist=False)
    await anonymous.say(pipeline, "second " + notes)
    await rig.stop(pipeline, engine)
    pipeline, engine = rig.start()
    runs = [
        await named.say(pipeline, "more?", conversation_id="named", persist=False),
        await anonymous.say(pipeline, "more?"),
    ]
    assert [r.record.kv for r in runs] == ["restored", "restored"]
    await rig.stop(pipeline, engine)
