"""Whether the data folder (AUTOTUNE_HOME) takes writes, for `/health` and `autotune doctor`."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["FULL_BYTES", "LOW_BYTES", "FolderStatus", "check_data_folder", "judge_folder"]

#: Free bytes under which the folder counts as full: a turn, its telemetry and a KV index
#: row no longer fit with certainty (SQLite grows its files by pages).
FULL_BYTES = 1024**2
#: Free bytes under which the folder is reported low (KV files alone take tens of MiB).
LOW_BYTES = 256 * 1024**2


@dataclass(frozen=True)
class FolderStatus:
    """The data folder's state: ``ok``, ``low``, ``full``, ``read-only`` or ``missing``."""

    path: str
    status: str
    free_bytes: int | None
    message: str
    #: A background write (telemetry, events) failed since the last one that succeeded.
    writes_failing: bool = False

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "low", "missing") and not self.writes_failing

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge_folder(
    path: str,
    *,
    exists: bool,
    writable: bool,
    free_bytes: int | None,
    probe_error: str | None = None,
    writes_failing: bool = False,
) -> FolderStatus:
    """What the folder's facts mean for autotune (pure): the worst state, with a sentence."""
    if not exists:
        return FolderStatus(path, "missing", None, f"{path} does not exist yet (created on start).")
    if not writable or (probe_error is not None and "space" not in probe_error.lower()):
        why = f" ({probe_error})" if probe_error else ""
        return FolderStatus(
            path,
            "read-only",
            free_bytes,
            f"{path} cannot be written{why}: conversations, telemetry and KV files are not "
            "stored (chat turns that must be stored answer 507). Fix its permissions or mount, "
            "or point AUTOTUNE_HOME elsewhere.",
            writes_failing,
        )
    if (free_bytes is not None and free_bytes < FULL_BYTES) or probe_error is not None:
        return FolderStatus(
            path,
            "full",
            free_bytes,
            f"The disk of {path} is full: conversations, telemetry and KV files are not "
            "stored (chat turns that must be stored answer 507). Free some space.",
            writes_failing,
        )
    if writes_failing:
        return FolderStatus(
            path,
            "failing",
            free_bytes,
            f"Writes to {path} failed recently (the server log says why).",
            True,
        )
    if free_bytes is not None and free_bytes < LOW_BYTES:
        return FolderStatus(
            path, "low", free_bytes, f"Less than 256 MiB free on the disk of {path}."
        )
    return FolderStatus(path, "ok", free_bytes, f"{path} is writable.")


def check_data_folder(
    home: Path, *, probe_write: bool = False, writes_failing: bool = False
) -> FolderStatus:
    """The data folder's state from the file system: its free space and whether it may be
    written (``probe_write``: also write, sync and remove a small file, as ``autotune
    doctor`` does; ``/health`` asks the file system only)."""
    path = str(home)
    if not home.is_dir():
        return judge_folder(path, exists=False, writable=False, free_bytes=None)
    try:
        free: int | None = shutil.disk_usage(home).free
    except OSError:
        free = None
    writable = os.access(home, os.W_OK) and not _mounted_read_only(home)
    probe_error = _probe(home) if probe_write and writable else None
    return judge_folder(
        path,
        exists=True,
        writable=writable,
        free_bytes=free,
        probe_error=probe_error,
        writes_failing=writes_failing,
    )


def _mounted_read_only(home: Path) -> bool:
    try:
        return bool(os.statvfs(home).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):  # no statvfs (Windows)
        return False


def _probe(home: Path) -> str | None:
    """Write, sync and remove a 64 KiB file; the error's words, None when it worked."""
    probe = home / f".doctor-{uuid.uuid4().hex[:8]}"
    try:
        with probe.open("wb") as f:
            f.write(b"\0" * 65536)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return None
