"""Acceptance: the bundled model's KV-cache estimate is within 10 % of what the real engine uses.

Each context size is measured in a fresh subprocess, so its RSS is clean: it loads the bundled
model in the embedded llama.cpp engine (xllamacpp) with an f16 KV cache, sends one short chat
over HTTP so the buffers are live, and prints its RSS. llama.cpp clears the whole KV buffer at
load, so every KV page is resident: the RSS difference between two context sizes is the KV
difference (compute-buffer pages a short prompt does not touch stay out of RSS).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autotune.models.estimate import kv_cache_bytes
from autotune.models.gguf import read_gguf_meta

pytestmark = pytest.mark.engine

SMALL, LARGE = 2048, 16384

_MEASURE = r"""
import json, sys, urllib.request
import psutil
import xllamacpp as x

path, n_ctx = sys.argv[1], int(sys.argv[2])
process = psutil.Process()
before = process.memory_info().rss
p = x.CommonParams()
p.model.path = path
p.n_ctx = n_ctx
p.n_parallel = 1
p.cpuparams.n_threads = 2
p.verbosity = 1
p.ui = False
p.cache_type_k = x.ggml_type.GGML_TYPE_F16
p.cache_type_v = x.ggml_type.GGML_TYPE_F16
server = x.Server(p)
body = json.dumps({"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4})
request = urllib.request.Request(
    server.listening_address + "/v1/chat/completions",
    data=body.encode(),
    headers={"Content-Type": "application/json"},
)
with urllib.request.urlopen(request, timeout=60) as response:
    reply = json.load(response)
after = process.memory_info().rss
print(json.dumps({"before": before, "after": after, "choices": len(reply["choices"])}))
"""


def _rss_after_one_chat(model: Path, n_ctx: int) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(model), str(n_ctx)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"engine run at n_ctx {n_ctx} failed:\n{done.stderr[-2000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["choices"] == 1
    return int(result["after"])


def test_kv_estimate_within_ten_percent_of_the_engine(bundled_gguf: Path) -> None:
    meta = read_gguf_meta(bundled_gguf, "smollm2:135m")
    estimated = kv_cache_bytes(meta, LARGE) - kv_cache_bytes(meta, SMALL)
    assert estimated == (LARGE - SMALL) * 23_040  # 30 layers × 3 KV heads × 128 × 2 bytes

    measured = _rss_after_one_chat(bundled_gguf, LARGE) - _rss_after_one_chat(bundled_gguf, SMALL)

    assert measured == pytest.approx(estimated, rel=0.10), (
        f"RSS grew by {measured / 2**20:.1f} MiB from n_ctx {SMALL} to {LARGE}; "
        f"the KV estimate says {estimated / 2**20:.1f} MiB"
    )
