"""Starts and stops engine worker processes: the parent side of :mod:`.engine_worker`."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from autotune.ground.errors import ModelLoadError

__all__ = ["key_file", "start_worker", "stop_process", "stop_worker"]


def start_worker(
    spec: dict[str, Any], log_path: Path | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a worker for ``spec`` (path, alias, launch settings); returns (process, base URL).

    Blocks until the model is loaded. Raises :class:`ModelLoadError` when it cannot load.
    A spec without ``n_ctx`` leaves every launch setting at llama.cpp's own default.
    """
    log: Any = subprocess.DEVNULL
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "ab")  # noqa: SIM115 (the child writes to it; closed below)
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune.backends.engine_worker", json.dumps(spec)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        start_new_session=True,  # Ctrl-C in a terminal chat must not kill the engine
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    if log is not subprocess.DEVNULL:
        log.close()
    assert proc.stdout is not None
    line = proc.stdout.readline().decode(errors="replace").strip()
    try:
        reply = json.loads(line) if line else {"error": f"exited with code {proc.wait()}"}
    except json.JSONDecodeError:
        reply = {"error": line[:200]}
    if "url" not in reply:
        stop_worker(proc)
        raise ModelLoadError(
            f"The embedded engine could not load {spec.get('alias')} ({spec.get('path')}): "
            f"{reply.get('error')}.",
            hint="Check that the file is a complete GGUF of an architecture llama.cpp knows.",
        )
    return proc, str(reply["url"])


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """Close the worker's stdin (it exits on EOF), then escalate if it lingers."""
    if proc.poll() is None and proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            stop_process(proc, grace=3)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def stop_process(proc: subprocess.Popen[bytes], *, grace: float) -> None:
    """Terminate ``proc``, give it ``grace`` seconds to exit, then kill it; returns once it is
    gone, its exit code on ``proc``."""
    if proc.poll() is not None:
        return
    try:
        handle = psutil.Process(proc.pid)  # not reaped yet, so still this child's pid
        handle.terminate()
    except psutil.NoSuchProcess:
        proc.wait()
        return
    _, alive = psutil.wait_procs([handle], timeout=grace)
    for lingering in alive:
        lingering.kill()
    psutil.wait_procs(alive)
    # wait_procs reaped the child and set the documented ``returncode`` on each process it saw
    # go; Popen can no longer read it, so it is handed over.
    code = getattr(handle, "returncode", None)
    proc.returncode = code if code is not None else proc.wait()


@contextlib.contextmanager
def key_file(api_key: str) -> Iterator[str]:
    """A file only this user can read (0600), holding ``api_key`` while a worker starts.

    The worker reads and deletes it; the key never appears in a command line, which any
    local user can read (``ps``). Removed here too, in case the worker failed first.
    """
    fd, path = tempfile.mkstemp(prefix="autotune-worker-", suffix=".key")
    try:
        with os.fdopen(fd, "w") as file:
            file.write(api_key)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
