"""The KV-cache manager in the real pipeline, against the FakeBackend's slots.

The fake keeps a prompt per slot, reuses its common prefix like llama.cpp does, and saves
and restores slots as files (tests/fakes/backend.py). The same behaviours are checked on
the real engine in tests/integration/test_kv_cache.py.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from autotune.backends.registry import BackendSet
from autotune.ground.config import Settings
from autotune.ground.types import EngineEvent
from autotune.pipeline import ChatInput, ChatRun, Pipeline
from autotune.pipeline.kv import KvManager
from autotune.store.conversations import ConversationStore
from autotune.store.db import Database
from autotune.store.kv import KvStore
from fakes.backend import MODEL, FakeBackend


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


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    rig.db.close()


async def turn(pipeline: Pipeline, conv: str, text: str) -> ChatRun:
    run = await pipeline.start(
        ChatInput(messages=[{"role": "user", "content": text}], conversation_id=conv)
    )
    async for _ in run:
        pass
    return run


async def test_a_conversation_resumes_from_disk_after_a_restart(rig: Rig) -> None:
    pipeline, engine = rig.start()
    long = " ".join(f"fact{i}" for i in range(3000))
    first = await turn(pipeline, "c1", f"Remember these: {long}")
    second = await turn(pipeline, "c1", "And the first fact?")
    assert second.record.kv == "hit"
    await rig.stop(pipeline, engine)
    assert [a[0] for a in engine.slot_actions] == ["save"]

    pipeline, engine = rig.start()  # a new engine: its slots are empty
    third = await turn(pipeline, "c1", "And the last fact?")
    assert third.stats is not None and second.stats is not None
    assert third.record.kv == "restored"
    assert third.stats.cached_tokens >= second.stats.prompt_tokens  # only the new turn
    assert third.stats.prompt_tokens - third.stats.cached_tokens <= 0.05 * third.stats.prompt_tokens
    assert "kv_cache=restore" in third.plan.summary()
    assert first.record.kv == "miss"
    # The pipeline loads ahead of the stream on an engine with slots: the request that
    # paid for the load still says so, and the next one does not.
    assert (first.record.reloaded, second.record.reloaded) == (True, False)
    assert first.record.load_ms is not None and second.record.load_ms is None
    assert third.record.reloaded is True
    await rig.stop(pipeline, engine)


async def test_conversations_taking_turns_on_one_slot_keep_their_prefix(rig: Rig) -> None:
    pipeline, engine = rig.start()
    for rnd in range(3):
        for k in range(4):
            run = await turn(
                pipeline, f"conv{k}", f"round {rnd} of conversation {k}: " + "w " * 200
            )
            assert run.stats is not None
            if rnd:  # after the first round every turn reuses its whole previous prompt
                assert run.record.kv == "restored"
                assert run.stats.prompt_tokens - run.stats.cached_tokens < 220
    saves = [a for a in engine.slot_actions if a[0] == "save"]
    assert len(saves) == 11  # every hand-over of the slot, never twice the same state
    await rig.stop(pipeline, engine)


@pytest.mark.parametrize("damage", ["truncate", "corrupt", "other model"])
async def test_a_damaged_file_is_removed_and_the_turn_answered(rig: Rig, damage: str) -> None:
    pipeline, engine = rig.start()
    await turn(pipeline, "c1", "one " * 300)
    await turn(pipeline, "c2", "two")  # c1 is saved as c2 takes the slot
    assert pipeline.kv is not None
    (saved,) = await asyncio.to_thread(pipeline.kv.store.files)
    await asyncio.gather(*pipeline.kv._sealing.values())
    path = rig.kv_dir / saved.filename
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "corrupt":
        path.write_bytes(data.replace(b"one", b"owe", 1))
    else:  # a file of another model under this name, with its own checksum recorded
        path.write_text('{"identity": "another-model", "tokens": []}')
        pipeline.kv.store.seal(saved.__class__(**{**saved.__dict__, "size": path.stat().st_size}))
        pipeline.kv.store.db.execute("UPDATE kv_files SET bytes = ?", (path.stat().st_size,))
    run = await turn(pipeline, "c1", "again")
    assert run.record.status == "ok" and run.record.kv in ("miss", "saved")
    assert (not path.exists() and pipeline.kv.store.files() == []) or all(
        f.conversation != "c1" for f in pipeline.kv.store.files()
    )
    assert any(e.kind == "kv_file_removed" for e in rig.events)
    await rig.stop(pipeline, engine)


async def test_the_disk_budget_evicts_the_least_recently_used_file(rig: Rig) -> None:
    pipeline, engine = rig.start()
    await turn(pipeline, "a", "alpha " * 100)
    await turn(pipeline, "b", "beta " * 100)  # saves a
    await turn(pipeline, "c", "gamma " * 100)  # saves b
    assert pipeline.kv is not None
    sizes = [f.size for f in pipeline.kv.store.files()]
    pipeline.kv.disk_budget = sum(sizes) + 10  # room for two files
    await turn(pipeline, "a", "again")  # saves c: a third file, so the oldest goes
    names = sorted(f.conversation for f in pipeline.kv.store.files())
    assert names == ["b", "c"] or names == ["a", "c"]  # never more than two
    assert len(names) == 2 and "c" in names
    await rig.stop(pipeline, engine)


async def test_twenty_concurrent_conversations_on_two_slots(rig: Rig) -> None:
    pipeline, engine = rig.start(concurrency=2)
    runs = await asyncio.gather(*(turn(pipeline, f"conv{i}", f"hello {i}") for i in range(20)))
    assert all(r.record.status == "ok" for r in runs)
    runs = await asyncio.gather(*(turn(pipeline, f"conv{i}", f"again {i}") for i in range(20)))
    assert all(r.record.status == "ok" for r in runs)
    assert engine.loads[-1][1].n_parallel == 2
    assert {a[1] for a in engine.slot_actions} <= {0, 1}  # and none hit a busy slot
    await rig.stop(pipeline, engine)


@pytest.mark.parametrize("ram_tokens", [100_000, 500])
async def test_a_ram_cache_that_holds_them_spares_the_disk(rig: Rig, ram_tokens: int) -> None:
    """With a host-RAM prompt cache big enough for four conversations, llama.cpp serves
    their turns from RAM: autotune restores nothing and saves only when a file lags; with
    one too small, every hand-over is a save and every return a restore. Either way every
    turn after the first round reuses its previous prompt."""
    pipeline, engine = rig.start(ram_tokens=ram_tokens)
    for rnd in range(4):
        for k in range(4):
            text = f"round {rnd}?" if rnd else f"conversation {k}: " + "w " * 1000
            run = await turn(pipeline, f"conv{k}", text)
            if rnd:
                assert run.stats is not None
                assert run.stats.prompt_tokens - run.stats.cached_tokens < 20
    actions = [a for a, *_ in engine.slot_actions]
    handovers, returns = 15, 12
    if ram_tokens > 10_000:
        # Turns come from RAM. What a restore overwrote is not in RAM any more (llama.cpp
        # keeps a slot's state only when a request takes the slot), so about one
        # conversation a round comes from disk — never all four.
        assert actions.count("restore") <= 5 and actions.count("save") <= 8
    else:  # nothing fits the RAM cache: every hand-over saved, every return restored
        assert actions.count("save") >= handovers - 1 and actions.count("restore") >= returns - 1
    await rig.stop(pipeline, engine)
