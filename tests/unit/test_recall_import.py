"""Importing conversations from JSONL: ids kept, re-imports add nothing, bad lines reported."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autotune.recall.manager import RecallManager
from autotune.store.conversations import ConversationStore
from autotune.store.db import Database

CORPUS = Path(__file__).parents[1] / "fixtures" / "recall" / "corpus.jsonl"


@pytest.fixture
def manager(tmp_path: Path) -> RecallManager:
    return RecallManager(Database(tmp_path / "import.db"))


def write(path: Path, *lines: Any) -> Path:
    path.write_bytes(
        b"".join(
            (line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n"
            for line in lines
        )
    )
    return path


def convo(id: Any, *turns: str, **fields: Any) -> dict[str, Any]:
    roles = ["user", "assistant"]
    messages = [{"role": roles[n % 2], "content": t} for n, t in enumerate(turns)]
    return {"id": id, "messages": messages, **fields}


def test_the_fixture_corpus_imports_with_its_ids_and_titles(manager: RecallManager) -> None:
    report = manager.import_jsonl(CORPUS)
    lines = CORPUS.read_text().splitlines()
    assert report.ok and report.imported == len(lines) == 44 and report.lines == 44
    expected = [json.loads(line) for line in lines]
    store = ConversationStore(manager.db)
    for record in expected:
        conv = store.get(record["id"])
        assert conv is not None and conv.title == record["title"]
        assert conv.source == "import" and conv.model == record["model"]
        assert [(m.role, m.content) for m in conv.messages] == [
            (m["role"], m["content"]) for m in record["messages"]
        ]
    assert report.messages == sum(len(r["messages"]) for r in expected)
    # Imported turns are searchable straight away (the FTS triggers saw them).
    assert manager.search_fts("acetone", limit=1)[0].conversation_id == "sourdough"


def test_reimporting_the_same_file_adds_nothing(manager: RecallManager) -> None:
    manager.import_jsonl(CORPUS)
    before = manager.db.query("SELECT COUNT(*) FROM messages")[0][0]
    again = manager.import_jsonl(CORPUS)
    assert (again.imported, again.updated, again.unchanged, again.messages) == (0, 0, 44, 0)
    assert manager.db.query("SELECT COUNT(*) FROM messages")[0][0] == before
    assert manager.db.query("SELECT COUNT(*) FROM conversations")[0][0] == 44


def test_a_longer_export_of_a_conversation_extends_it(
    manager: RecallManager, tmp_path: Path
) -> None:
    manager.import_jsonl(write(tmp_path / "a.jsonl", convo("c1", "hello", "hi there")))
    longer = convo("c1", "hello", "hi there", "and one more", "sure")
    report = manager.import_jsonl(write(tmp_path / "b.jsonl", longer))
    assert (report.imported, report.updated, report.messages) == (0, 1, 2)
    messages = ConversationStore(manager.db).messages("c1")
    assert [(m.seq, m.content) for m in messages][-2:] == [(3, "and one more"), (4, "sure")]


def test_a_different_conversation_under_a_stored_id_is_a_bad_line(
    manager: RecallManager, tmp_path: Path
) -> None:
    manager.import_jsonl(write(tmp_path / "a.jsonl", convo("c1", "hello", "hi there")))
    report = manager.import_jsonl(write(tmp_path / "b.jsonl", convo("c1", "other", "words")))
    assert [(b.line, "already stored" in b.reason) for b in report.bad_lines] == [(1, True)]
    assert [m.content for m in ConversationStore(manager.db).messages("c1")] == [
        "hello",
        "hi there",
    ]


def test_bad_lines_are_reported_with_number_and_reason_and_the_rest_imports(
    manager: RecallManager, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "mixed.jsonl",
        convo("good-1", "first", "ok"),
        b'{"id": "broken", "messages": [',
        b"",
        b"   ",
        [1, 2, 3],
        {"title": "no id", "messages": [{"role": "user", "content": "x"}]},
        convo("", "empty id"),
        {"id": "no-messages"},
        {"id": "empty-messages", "messages": []},
        {"id": "bad-role", "messages": [{"role": "bot", "content": "x"}]},
        {"id": "bad-content", "messages": [{"role": "user", "content": 42}]},
        {"id": "bad-message", "messages": ["hello"]},
        convo("bad-title", "x", title=7),
        convo("bad-date", "x", created_at="last tuesday"),
        b'{"id": "latin1", "messages": [{"role": "user", "content": "caf\xe9"}]}',
        convo(12345, "numeric ids are kept as strings"),
        convo("good-2", "dated", created_at="2025-01-02T03:04:05Z", title="Given title"),
    )
    report = manager.import_jsonl(path)
    reasons = {b.line: b.reason for b in report.bad_lines}
    assert sorted(reasons) == [2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    assert reasons[2].startswith("invalid JSON")
    assert "object" in reasons[5] and "id" in reasons[6] and "id" in reasons[7]
    assert "messages" in reasons[8] and "messages" in reasons[9]
    assert "'bot'" in reasons[10] and "message 1" in reasons[11] and "message 1" in reasons[12]
    assert "title" in reasons[13] and "created_at" in reasons[14] and "UTF-8" in reasons[15]
    assert (report.imported, report.lines) == (3, 17)
    store = ConversationStore(manager.db)
    assert store.get("12345") is not None
    dated = store.get("good-2")
    assert dated is not None and dated.title == "Given title"
    assert dated.created_at == 1735787045.0
    assert store.get("good-1") is not None and store.get("good-1").title == "first"  # type: ignore[union-attr]


def test_tool_calls_survive_an_import(manager: RecallManager, tmp_path: Path) -> None:
    call = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    record = {
        "id": "tools",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "use the tool"}]},
            {"role": "assistant", "content": None, "tool_calls": call},
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
        ],
    }
    assert manager.import_jsonl(write(tmp_path / "t.jsonl", record)).ok
    messages = ConversationStore(manager.db).messages("tools")
    assert [m.as_openai() for m in messages] == [
        {"role": "user", "content": "use the tool"},
        {"role": "assistant", "content": "", "tool_calls": call},
        {"role": "tool", "content": "42", "tool_call_id": "c1"},
    ]
    # Importing it again is still a no-op: list content compares as its text.
    assert manager.import_jsonl(tmp_path / "t.jsonl").unchanged == 1


def test_a_missing_file_raises_os_error(manager: RecallManager, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        manager.import_jsonl(tmp_path / "nope.jsonl")


def test_progress_reports_bytes_up_to_the_file_size(manager: RecallManager, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    manager.import_jsonl(CORPUS, progress=lambda done, total: seen.append((done, total)))
    size = CORPUS.stat().st_size
    assert len(seen) == 44 and seen[-1] == (size, size)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
