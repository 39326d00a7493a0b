"""A process killed with SIGKILL during a burst of writes loses no committed turn.

A child process appends turns through ConversationStore as fast as it can and prints each
turn's number right after the commit returns; the parent reads a while, kills it with SIGKILL
mid-burst, reopens the database and checks that every reported turn is there and that the
FTS index agrees with the messages table. Three rounds, each on the database the last kill
left behind (hot WAL included).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autotune.recall.store import RecallStore
from autotune.store.conversations import ConversationStore
from autotune.store.db import Database

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")

CHILD = r"""
import sys
from autotune.store.conversations import ConversationStore
from autotune.store.db import Database

store = ConversationStore(Database(sys.argv[1]))
round_, n = sys.argv[2], 0
print("ready", flush=True)
while True:
    n += 1
    tag = f"r{round_}t{n}"
    store.append("burst", [
        {"role": "user", "content": f"question {tag} about sourdough " + "x" * (n % 500)},
        {"role": "assistant", "content": f"answer {tag} " + "y" * (n % 900)},
    ])
    sys.stdout.write(tag + "\n")
    sys.stdout.flush()
"""

TURNS_BEFORE_KILL = 150


def burst_and_kill(db_path: Path, round_: int) -> list[str]:
    """Run one child until it reported enough turns, SIGKILL it, return every tag it printed."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(db_path), str(round_)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "ready"
        tags: list[str] = []
        deadline = time.monotonic() + 60
        while len(tags) < TURNS_BEFORE_KILL and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            tags.append(line.strip())
        assert child.poll() is None, "the writer died on its own"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        # Lines already in the pipe were printed after their commit returned: they count too.
        tags += [line.strip() for line in child.stdout.read().splitlines() if line.strip()]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return tags


def test_sigkill_mid_burst_loses_no_committed_turn(tmp_path: Path) -> None:
    db_path = tmp_path / "burst.db"
    db = Database(db_path)
    RecallStore(db)  # migration 3 applied before any writer starts
    ConversationStore(db).create(id="burst")
    db.close()

    reported: list[str] = []
    for round_ in range(3):
        tags = burst_and_kill(db_path, round_)
        assert len(tags) >= TURNS_BEFORE_KILL
        reported += tags

        db = Database(db_path)
        store = RecallStore(db)
        assert db.query("PRAGMA integrity_check")[0][0] == "ok"
        store.integrity_check()  # the FTS index matches the messages table exactly
        rows = db.query("SELECT content FROM messages WHERE conversation_id = 'burst'")
        stored = {r[0].split()[1] for r in rows if r[0].startswith("question ")}
        answers = {r[0].split()[1] for r in rows if r[0].startswith("answer ")}
        missing = [t for t in reported if t not in stored or t not in answers]
        assert missing == [], f"committed turns lost after SIGKILL: {missing[:5]}"
        # No half turn: every question has its answer (each append is one transaction).
        assert stored == answers
        # The last reported turn is findable through the index, not just present in the table.
        last = tags[-1]
        ids = [i for i, _ in store.search_fts(last)]
        assert len(ids) == 2
        seqs = db.query("SELECT seq FROM messages WHERE conversation_id = 'burst' ORDER BY seq")
        assert [r[0] for r in seqs] == list(range(1, len(seqs) + 1))
        db.close()
