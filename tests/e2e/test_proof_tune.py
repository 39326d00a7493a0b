"""``autotune proof`` and ``autotune tune`` end to end on the real embedded engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from autotune.ground.config import Settings
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer

pytestmark = pytest.mark.engine


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AUTOTUNE_BACKEND": "embedded", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "autotune", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_proof_json_holds_raw_and_autotune_figures_for_every_scenario(tmp_path) -> None:
    done = cli("proof", "--runs", "2", "--json", "--report", str(tmp_path / "report"))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    names = [s["name"] for s in result["scenarios"]]
    assert names == ["short", "multiturn", "longdoc", "sustained"]
    assert result["raw_settings"]["source"] == "/props" and result["raw_settings"]["n_ctx"]
    for scenario in result["scenarios"]:
        for side in ("raw", "autotune"):
            figures = scenario[side]
            assert figures["errors"] == 0, (scenario["name"], side)
            assert figures["ttft_ms"]["median"] > 0 and figures["ttft_ms"]["p90"] > 0
            assert figures["prefill_ms"]["median"] > 0  # from the engine's own timings
            assert figures["decode_tps"]["median"] > 0
            assert figures["n_ctx"] and figures["kv_bytes"] and figures["rss_bytes"]
        assert scenario["verdict"].endswith(".")
        assert {s["side"] for s in scenario["samples"]} == {"raw", "autotune"}
    multiturn = next(s for s in result["scenarios"] if s["name"] == "multiturn")
    assert multiturn["autotune"]["cached_share"] > 0.5  # later turns reuse the prompt cache
    report = tmp_path / "report"
    assert (report / "proof.json").is_file() and "| scenario |" in (report / "proof.md").read_text()
    for chart in ("ttft.png", "memory.png"):
        assert (report / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tune_stays_in_budget_and_the_next_plan_uses_its_choice(tmp_path) -> None:
    started = time.monotonic()
    done = cli("tune", "smollm2:135m", "--budget", "25", "--json")
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["elapsed"] <= result["budget"] + 2  # the sweep itself (+ stopping a worker)
    assert elapsed < 25 + 30  # plus process start-up and engine discovery
    assert set(result["chosen"]) == {"fast", "balanced", "quality"}
    shown = json.loads(cli("tune", "--show", "--json").stdout)["results"]
    assert {r["profile"] for r in shown} == {"fast", "balanced", "quality"}
    balanced = next(r for r in shown if r["profile"] == "balanced")
    assert balanced["settings"]["n_batch"] and balanced["settings"]["n_ubatch"]

    settings = Settings(backend="embedded", memory_budget=4 * 1024**3)  # same AUTOTUNE_HOME
    with BackgroundServer(create_app(settings)) as server:
        reply = httpx.post(
            server.url + "/v1/chat/completions",
            timeout=120,
            json={
                "model": "smollm2:135m",
                "max_tokens": 4,
                "messages": [{"role": "user", "content": "Hi"}],
            },
        )
        assert reply.status_code == 200
        (run,) = httpx.get(server.url + "/api/requests").json()["requests"]
    measured = [d for d in run["decisions"] if d["reason"].startswith("measured")]
    assert measured and any(d["key"] == "batch" for d in measured)
    s = balanced["settings"]
    assert f"{s['n_batch']}/{s['n_ubatch']}" in [
        d["value"] for d in measured if d["key"] == "batch"
    ]
