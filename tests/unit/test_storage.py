"""A full disk or a read-only data folder: what a client gets (ground/errors.py) and what
``/health`` and ``autotune doctor`` say (operations/storage.py), as pure decisions."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from autotune.ground.errors import storage_failure
from autotune.operations.storage import FULL_BYTES, check_data_folder, judge_folder


def test_a_store_that_cannot_write_is_a_507_and_a_bug_stays_a_bug() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    failure = storage_failure(full, "The conversation")
    assert failure is not None and failure.status == 507 and failure.disk_full
    assert failure.message.startswith("The conversation could not be stored: the disk is full")
    read_only = storage_failure(
        sqlite3.OperationalError("attempt to write a readonly database"), "x"
    )
    assert read_only is not None and read_only.status == 507 and not read_only.disk_full
    no_space = storage_failure(OSError(errno.ENOSPC, "No space left on device"), "x")
    assert no_space is not None and no_space.disk_full
    assert storage_failure(sqlite3.IntegrityError("UNIQUE constraint failed"), "x") is None
    assert storage_failure(ValueError("no"), "x") is None


def test_the_folder_is_judged_by_its_worst_state() -> None:
    ok = judge_folder("/h", exists=True, writable=True, free_bytes=10 * 1024**3)
    assert ok.status == "ok" and ok.ok
    assert (
        judge_folder("/h", exists=True, writable=True, free_bytes=FULL_BYTES - 1).status == "full"
    )
    probe_full = judge_folder(
        "/h", exists=True, writable=True, free_bytes=5 * 1024**2, probe_error="No space left"
    )
    assert probe_full.status == "full" and not probe_full.ok
    read_only = judge_folder("/h", exists=True, writable=False, free_bytes=10 * 1024**3)
    assert read_only.status == "read-only" and "AUTOTUNE_HOME" in read_only.message
    failing = judge_folder("/h", exists=True, writable=True, free_bytes=10**10, writes_failing=True)
    assert failing.status == "failing" and not failing.ok
    assert judge_folder("/h", exists=False, writable=False, free_bytes=None).ok  # made on start


def test_a_writable_folder_passes_the_doctors_probe(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    status = check_data_folder(folder, probe_write=True)
    assert status.ok and status.free_bytes is not None
    assert list(folder.iterdir()) == []  # the probe file is gone
