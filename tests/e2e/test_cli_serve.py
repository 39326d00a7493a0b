"""``autotune serve`` as a real process: starts, answers, shows in ``ps``, stops on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from openai import OpenAI

from autotune.server.runner import free_port


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
