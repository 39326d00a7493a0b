"""``autotune serve`` as a real process: starts, answers, shows in ``ps``, stops on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from autotune.server.runner import free_port


def refused(*args: str, **env: str) -> tuple[int, str]:
    """Run ``autotune <args>`` that must refuse to start; (exit code, stderr) after checking
    that it said nothing on stdout (no banner) and printed no traceback."""
    done = subprocess.run(
        [sys.executable, "-m", "autotune", *args],
        env={**os.environ, "AUTOTUNE_BACKEND": "embedded", "NO_COLOR": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0, done.stdout
    assert "serving on" not in done.stdout and "Traceback" not in done.stderr, done.stderr
    return done.returncode, " ".join(done.stderr.split())  # one line, however it wrapped


def test_serve_refuses_a_public_address_without_a_key() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "autotune", "serve", "--host", "0.0.0.0"],
        env={**os.environ, "AUTOTUNE_BACKEND": "embedded"},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2
    assert "AUTOTUNE_API_KEY" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.engine
def test_serve_answers_shows_in_ps_and_stops_on_ctrl_c() -> None:
    port = free_port()
    env = {
        **os.environ,
        "AUTOTUNE_BACKEND": "embedded",
        "AUTOTUNE_PORT": str(port),
        "NO_COLOR": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        client = OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)
        reply = client.chat.completions.create(
            model="smollm2:135m", max_tokens=6, messages=[{"role": "user", "content": "Hi"}]
        )
        assert reply.choices[0].message.content
        ps = subprocess.run(
            [sys.executable, "-m", "autotune", "ps", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ps.returncode == 0, ps.stderr
        (loaded,) = json.loads(ps.stdout)["models"]
        assert loaded["name"] == "smollm2:135m" and loaded["size_bytes"] > 50 * 1024**2
        assert loaded["backend"] == f"autotune serve :{port}"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert f"http://127.0.0.1:{port}/v1" in out and "curl" in out


# ---------------------------------------------------------------- checked before anything starts


@pytest.mark.parametrize(
    ("args", "env"),
    [(["serve", "--port", "99999"], {}), (["serve"], {"AUTOTUNE_PORT": "0"})],
)
def test_a_port_outside_1_to_65535_is_refused(args: list[str], env: dict[str, str]) -> None:
    """Issue 12.5 — before: ``--port 99999`` printed "serving on …:99999" and listened on
    another port."""
    _, err = refused(*args, **env)
    assert "1-65535" in err


def test_a_port_in_use_is_one_line_and_no_banner() -> None:
    """Issue 12.5 — before: the banner, then uvicorn's raw ``[Errno 98]``, exit 3."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = refused("serve", "--port", str(port))
    assert code == 1
    assert f"Port {port} on 127.0.0.1 is already in use" in err and "--port" in err
    assert "Errno" not in err


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--backend", "bogus", "serve"], {}),
        (["serve"], {"AUTOTUNE_BACKEND": "bogus"}),
        (["--backend", "bogus", "ps"], {}),
    ],
)
def test_an_unknown_backend_lists_the_valid_ones(args: list[str], env: dict[str, str]) -> None:
    """Issue 12.5 — before: ``--backend bogus ps`` said "No URL set for the bogus engine"."""
    _, err = refused(*args, **env)
    assert "bogus" in err and "embedded" in err and "ollama" in err and "router" in err


def test_a_bad_router_config_is_its_own_message_alone(tmp_path: Path) -> None:
    """Issue 12.5 — before: the banner, then a 54-line lifespan traceback, exit 3."""
    config = tmp_path / "router.yaml"
    config.write_text("upstreams:\n  - url: http://127.0.0.1:9/\n    kind: llamacpp\n    x: 1\n")
    code, err = refused("serve", AUTOTUNE_BACKEND="auto", AUTOTUNE_ROUTER_CONFIG=str(config))
    assert code == 2
    assert str(config) in err and "upstreams[0].x: unknown key" in err


@pytest.mark.parametrize(
    ("budget", "says"),
    [
        ("10TiB", "is more than this machine's"),
        ("0", "leaves no room for any model"),
        ("1MiB", "is less than the smallest model needs"),
    ],
)
def test_a_memory_budget_this_machine_cannot_hold_is_refused(budget: str, says: str) -> None:
    """Issue 12.5 — before: ``AUTOTUNE_MEMORY_BUDGET=10TiB`` on a 24 GiB machine (and ``0``)
    were accepted without a word."""
    _, err = refused("serve", AUTOTUNE_MEMORY_BUDGET=budget)
    assert "AUTOTUNE_MEMORY_BUDGET" in err and says in err
    if budget == "10TiB":
        assert " RAM + " in err and " swap" in err and "GiB" in err


@pytest.mark.parametrize(
    "content", [b"", b"not a database at all\n" * 40], ids=["zero-length", "not-sqlite"]
)
def test_a_damaged_database_stops_serve_before_the_banner(content: bytes) -> None:
    """Issue 13.9 — before: a traceback after the banner, and a zero-length file silently
    replaced by an empty database."""
    db = Path(os.environ["AUTOTUNE_HOME"]) / "autotune.db"
    db.write_bytes(content)
    code, err = refused("serve", "--port", str(free_port()))
    assert code == 1
    assert str(db) in err and "mv " in err
    assert db.read_bytes() == content  # never replaced
