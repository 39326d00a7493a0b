"""A full disk and a read-only data folder, for real: ``autotune serve`` (its own process, the
embedded engine) with ``AUTOTUNE_HOME`` on a small tmpfs that the test fills (and, once the
server has stopped, remounts read-only). Every face and conversation creation answer the
API's storage error (507, in the face's own shape); never a 500, never an exception no one
retrieved in the log, and ``/health`` and ``autotune doctor`` say what is wrong.

Mounting needs root (CI runs as root); elsewhere the test is skipped and says why.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from autotune.operations import storage

pytestmark = pytest.mark.engine

MODEL = "smollm2:135m"
CID = "full-disk"
#: Room for the database, the logs and a few turns; the test fills the rest.
TMPFS_SIZE = "16m"


@pytest.fixture
def small_home(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs as autotune's home, where ``serve_process`` puts it (skipped where
    mounting is not permitted)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(home)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield home
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def _fill(folder: Path) -> Path:
    """Write a file until the disk has no byte left; the file (delete it to free the disk)."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 65536)
        with contextlib.suppress(OSError):
            while True:  # the last few pages, a byte at a time
                f.write(b"\0")
    return filler


def _status_of(call: Callable[[], Any]) -> int:
    """200 when the call succeeds, else the status of the API error the client raised."""
    try:
        call()
    except (openai.APIStatusError, anthropic.APIStatusError) as exc:
        return exc.status_code
    except ollama.ResponseError as exc:
        return exc.status_code
    return 200


def _doctor(home: Path) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "autotune", "doctor", "--json"],
        env={**os.environ, "AUTOTUNE_HOME": str(home)},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return done.returncode, json.loads(done.stdout)


def test_a_full_disk_and_a_read_only_folder_answer_507_on_every_face(
    small_home: Path, serve_process: Callable[..., Any]
) -> None:
    """Before: turns 2 and 3 and ``POST /api/conversations`` answered 500 on a full disk,
    and telemetry left "Task exception was never retrieved" tracebacks in the log."""
    server = serve_process().start()
    url = server.url
    oai = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
    claude = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=120)
    stored = {"X-Conversation-Id": CID}
    hi = [{"role": "user", "content": "Hi."}]
    oai.chat.completions.create(model=MODEL, messages=hi, max_tokens=2, extra_headers=stored)

    filler = _fill(small_home)
    calls: dict[str, Callable[[], Any]] = {
        "openai chat": lambda: oai.chat.completions.create(
            model=MODEL, messages=hi, max_tokens=2, extra_headers=stored
        ),
        "responses (stored by default)": lambda: oai.responses.create(
            model=MODEL, input="Hi.", max_output_tokens=16
        ),
        "anthropic": lambda: claude.messages.create(
            model=MODEL, max_tokens=2, messages=hi, extra_headers=stored
        ),
        "ollama": lambda: ollama.Client(host=url, headers=stored).chat(
            model=MODEL, messages=hi, options={"num_predict": 2}
        ),
    }
    statuses = {face: _status_of(call) for face, call in calls.items()}
    assert statuses == dict.fromkeys(statuses, 507), statuses
    # A stream's headers went out before the turn could be stored: its error is an event.
    with pytest.raises(openai.APIError, match="disk is full"):
        for _ in oai.chat.completions.create(
            model=MODEL, messages=hi, max_tokens=2, extra_headers=stored, stream=True
        ):
            pass

    created = httpx.post(url + "/api/conversations", json={"title": "x"}, timeout=30)
    assert created.status_code == 507, created.text
    assert "disk is full" in created.json()["error"]["message"]
    anthropic_shape = httpx.post(
        url + "/v1/messages",
        json={"model": MODEL, "max_tokens": 2, "messages": hi},
        headers=stored,
        timeout=120,
    )
    assert anthropic_shape.status_code == 507
    assert anthropic_shape.json()["type"] == "error"
    health = httpx.get(url + "/health", timeout=30).json()
    assert health["status"] == "degraded" and health["storage"]["status"] == "full"
    code, report = _doctor(small_home)
    assert code == 1 and report["data_folder"]["status"] == "full"

    filler.unlink()
    server.stop()
    assert "Task exception was never retrieved" not in server.log
    assert "Traceback" not in server.log and "internal_error" not in server.log
    assert server.log.count("telemetry not written") == 1, server.log  # one line per outage

    # A folder the database has closed can be remounted read-only: what doctor sees then.
    subprocess.run(["mount", "-o", "remount,ro", str(small_home)], check=True)
    code, report = _doctor(small_home)
    assert code == 1 and report["data_folder"]["status"] == "read-only"
    assert storage.check_data_folder(small_home).status == "read-only"  # what /health shows
