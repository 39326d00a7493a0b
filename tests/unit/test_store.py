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


def test_telemetry_is_bounded_while_running_not_only_at_start_up(tmp_path: Path) -> None:
    """Issue 13.10 — before: runs and events were pruned only when a process started, so a
    long-running server kept every row (here 60 of 60 runs, 30 of 30 old events)."""
    import time

    from autotune.ground.records import RunRecord
    from autotune.ground.types import EngineEvent
    from autotune.store.telemetry import TelemetryStore

    telemetry = TelemetryStore(Database(tmp_path / "t.db"), max_rows=20, prune_every=10)
    old = time.time() - 40 * 86400
    for _ in range(30):
        telemetry.record_event(EngineEvent("load", "m", at=old))
    for i in range(60):
        started = time.time() - 60 + i  # oldest first
        telemetry.record_run(
            RunRecord(f"run_{i:02d}", "m", "embedded", "fast", "api", started_at=started)
        )
    runs = telemetry.runs(limit=1000)
    assert len(runs) <= 20 + 10  # pruned every 10 writes down to 20
    assert runs[0]["id"] == "run_59"  # the newest are kept
    assert telemetry.events(limit=1000, since=0) == []  # 40 days old: gone without a restart


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "is empty (0 bytes)"),
        (b"hello, this is not a database\n" * 50, "is not an SQLite database"),
    ],
)
def test_an_unusable_database_file_is_refused_and_never_replaced(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    """Issue 13.9 — before: a zero-length file was silently made a new, empty database."""
    from autotune.store.db import DatabaseUnusable

    path = tmp_path / "autotune.db"
    path.write_bytes(content)
    with pytest.raises(DatabaseUnusable) as refused:
        Database(path)
    message = refused.value.message
    assert str(path) in message and problem in message and "mv " in message
    assert path.read_bytes() == content  # untouched


def test_a_damaged_database_is_refused_with_the_way_out(tmp_path: Path) -> None:
    """Issue 13.9 — before: a damaged file opened, and the first query failed later (after
    the server had announced itself) with SQLite's bare "database disk image is malformed"."""
    from autotune.store.db import DatabaseUnusable, check_database

    path = tmp_path / "autotune.db"
    db = Database(path)
    store = ConversationStore(db)
    for i in range(200):
        store.append(store.create().id, [{"role": "user", "content": f"message {i} " * 20}])
    db.close()
    assert check_database(path) is None
    data = bytearray(path.read_bytes())
    page = 4096
    data[3 * page : 5 * page] = bytes(range(256)) * (2 * page // 256)  # two pages of noise
    path.write_bytes(bytes(data))
    problem = check_database(path)
    assert problem is not None and problem.startswith("is damaged")
    with pytest.raises(DatabaseUnusable) as refused:
        Database(path)
    assert str(path) in refused.value.message and "\n" not in refused.value.message
    assert path.read_bytes() == bytes(data)


def test_a_database_whose_content_is_still_in_its_wal_opens(tmp_path: Path) -> None:
    """A process killed before a checkpoint leaves its commits in ``-wal``: that is healthy."""
    import sqlite3

    from autotune.store.db import check_database

    path = tmp_path / "autotune.db"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("CREATE TABLE t (x)")
    writer.execute("INSERT INTO t VALUES (1)")
    assert (tmp_path / "autotune.db-wal").stat().st_size > 0
    assert check_database(path) is None  # read while the writer still holds it
    assert check_database(tmp_path / "missing.db") is None  # absent: created on first use
    writer.close()
