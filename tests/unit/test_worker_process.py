"""Stopping engine child processes: terminate, wait, then kill (real child processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from autotune.backends.worker_process import stop_process

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _child(code: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    return proc


def test_a_child_that_exits_on_sigterm_is_not_killed() -> None:
    proc = _child("import time; print('ready', flush=True); time.sleep(60)")
    stop_process(proc, grace=30)
    assert proc.poll() == -signal.SIGTERM


def test_a_child_that_ignores_sigterm_is_killed_after_the_grace_period() -> None:
    proc = _child(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        " print('ready', flush=True); time.sleep(60)"
    )
    stop_process(proc, grace=0.2)
    assert proc.poll() == -signal.SIGKILL


def test_a_child_that_already_exited_keeps_its_exit_code() -> None:
    proc = _child("print('ready', flush=True); raise SystemExit(3)")
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    stop_process(proc, grace=30)
    assert proc.returncode == 3
