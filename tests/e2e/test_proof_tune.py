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
    # Recall (its ~5 s model load) is not what these test: test_chat_memory.py does.
    env = {
        **os.environ,
        "AUTOTUNE_BACKEND": "embedded",
        "AUTOTUNE_RECALL": "false",
        "NO_COLOR": "1",
    }
    return subprocess.run(
        [sys.executable, "-m", "autotune", *args],
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_proof_json_holds_raw_and_autotune_figures_for_every_scenario(tmp_path) -> None:
    done = cli("proof", "--runs", "1", "--json", "--report", str(tmp_path / "report"))
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
    done = cli("tune", "smollm2:135m", "--budget", "10", "--spec-budget", "12", "--json")
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["elapsed"] <= result["budget"] + 2  # the sweep itself (+ stopping a worker)
    spec = result["speculation"]
    assert spec["elapsed"] <= spec["budget"] + 10  # + stopping the engines
    assert elapsed < 10 + 12 + 40  # plus process start-up and engine discovery
    assert set(result["chosen"]) == {"fast", "balanced", "quality"}
    assert spec["choice"]["mode"] in {
        "none",
        "ngram_mod",
        "ngram_simple",
        "ngram_map_k",
        "ngram_map_k4v",
        "ngram_cache",
    }
    assert any("draft model" in n for n in spec["notes"])  # none with this vocabulary on disk
    for trial in spec["trials"]:
        assert trial["error"] or (trial["copy_tps"] and trial["base_copy_tps"])
    shown = json.loads(cli("tune", "--show", "--json").stdout)["results"]
    assert {r["profile"] for r in shown} == {"fast", "balanced", "quality"}
    balanced = next(r for r in shown if r["profile"] == "balanced")
    assert balanced["settings"]["n_batch"] and balanced["settings"]["n_ubatch"]
    assert balanced["speculation"]["mode"] == spec["choice"]["mode"]

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


def test_a_draft_model_with_another_vocabulary_is_refused_before_measuring() -> None:
    done = cli("tune", "smollm2:135m", "--draft", "gemma3:270m", timeout=300)
    assert done.returncode != 0
    assert "gemma3:270m cannot draft for smollm2:135m" in done.stderr
    assert "vocabulary differs" in done.stderr and "Traceback" not in done.stderr
    shown = json.loads(cli("tune", "--show", "--json").stdout)["results"]
    assert shown == []  # nothing was measured or stored


def test_proof_edit_scenario_reports_decoding_and_drafts_with_a_tuned_mode() -> None:
    """With a measured n-gram mode stored (as `autotune tune` would), the autotune side of the
    `edit` scenario speculates and the raw engine does not; both are reported."""
    from autotune.ground.config import get_settings
    from autotune.ground.tuned import Candidate, SpecChoice, Trial
    from autotune.store.db import Database
    from autotune.store.tuning import TuningStore

    store = TuningStore(Database(get_settings().db_path))
    trial = Trial(candidate=Candidate())
    choice = SpecChoice("ngram_simple", "measured", copy_gain=0.5, chat_gain=0.0)
    store.save(
        "embedded",
        "smollm2:135m",
        "balanced",
        trial,
        trial,
        defaults_best=True,
        trials=1,
        speculation=choice,
    )
    store.db.close()
    done = cli("proof", "--scenarios", "edit", "--runs", "1", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    (edit,) = result["scenarios"]
    assert edit["name"] == "edit" and result["autotune_settings"]["speculative"] == "ngram_simple"
    assert edit["raw"]["acceptance"] is None  # the raw engine: llama.cpp defaults, no drafts
    assert 0 < edit["autotune"]["acceptance"] <= 1
    assert edit["raw"]["decode_tps"]["median"] > 0 and edit["autotune"]["decode_tps"]["median"] > 0
    assert "tok/s" in edit["verdict"] and "drafts accepted" in edit["verdict"]
