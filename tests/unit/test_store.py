"""The SQLite store: migrations, WAL, conversations and atomic appends, on a real database file."""

from __future__ import annotations

from pathlib import Path

import pytest

from autotune.store.conversations import ConversationStore
from autotune.store.db import Database
from autotune.store.schema import MIGRATIONS


@pytest.fixture
def store(tmp_path: Path) -> ConversationStore:
    return ConversationStore(Database(tmp_path / "a.db"))


def test_migrations_run_once_in_wal_mode(tmp_path: Path) -> None:
    db = Database(tmp_path / "a.db")
    assert db.version == max(v for v, _, _ in MIGRATIONS)
    assert db.query("PRAGMA journal_mode")[0][0] == "wal"
    db.close()
    again = Database(tmp_path / "a.db")  # reopening applies nothing twice
    assert again.version == max(v for v, _, _ in MIGRATIONS)


def test_migration_versions_are_unique_and_increasing() -> None:
    versions = [v for v, _, _ in MIGRATIONS]
    assert versions == sorted(set(versions)) and versions[0] == 1


def test_round_trip_with_tool_calls_and_export(store: ConversationStore) -> None:
    conv = store.create(model="m", system="Be brief.")
    call = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    store.append(
        conv.id,
        [
            {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]},
            {"role": "assistant", "content": None, "tool_calls": call},
            {"role": "tool", "content": "4", "tool_call_id": "c1"},
            {"role": "assistant", "content": "Four."},
        ],
    )
    got = store.get(conv.id)
    assert got is not None and got.message_count == 4
    assert got.title == "What is 2+2?"  # from the first user turn
    assert [m.as_openai() for m in got.messages][1] == {
        "role": "assistant",
        "content": "",
        "tool_calls": call,
    }
    assert got.messages[2].extra == {"tool_call_id": "c1"}
    md = store.export_markdown(conv.id)
    assert md is not None and "## System" in md and "Four." in md and '"name": "f"' in md


def test_an_append_that_fails_midway_stores_nothing(store: ConversationStore) -> None:
    conv = store.create()
    bad = [{"role": "user", "content": "ok"}, {"role": "assistant", "tool_calls": object()}]
    with pytest.raises(TypeError):
        store.append(conv.id, bad)
    assert store.messages(conv.id) == []


def test_list_orders_by_last_update_and_delete_cascades(store: ConversationStore) -> None:
    a = store.create(id="a")
    store.create(id="b")
    store.append(a.id, [{"role": "user", "content": "later"}])
    assert [c.id for c in store.list()] == ["a", "b"]
    assert store.delete("a") and not store.delete("a")
    assert store.messages("a") == [] and store.get("b") is not None
    count = store.db.query("SELECT COUNT(*) FROM messages")[0][0]
    assert count == 0


def test_ensure_keeps_a_given_id(store: ConversationStore) -> None:
    conv = store.ensure("imported-42", model="m")
    assert conv.id == "imported-42" and store.ensure("imported-42").model == "m"


def test_telemetry_keeps_recent_runs_and_events_and_prunes_old_ones(tmp_path: Path) -> None:
    import time

    from autotune.ground.records import RunRecord
    from autotune.ground.types import EngineEvent
    from autotune.store.telemetry import TelemetryStore

    telemetry = TelemetryStore(Database(tmp_path / "t.db"))
    old = time.time() - 40 * 86400
    telemetry.record_run(RunRecord("run_old", "m", "embedded", "fast", "api", started_at=old))
    telemetry.record_run(RunRecord("run_new", "m", "embedded", "fast", "api"))
    telemetry.record_event(EngineEvent("load", "m", at=old))
    telemetry.record_event(EngineEvent("reload", "m"))
    assert telemetry.prune(30) == 2
    assert [r["id"] for r in telemetry.runs()] == ["run_new"]
    assert [e["kind"] for e in telemetry.events()] == ["reload"]
