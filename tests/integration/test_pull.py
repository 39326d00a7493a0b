"""Pulling models for the embedded engine from a **fake Hugging Face hub** on 127.0.0.1.

No network is reachable here, so the hub is ``tests/fakes/hf_hub.py``: a fake built from the
documented hub API that ``huggingface_hub`` calls (repo info with LFS sha256s, file HEAD
with ``X-Repo-Commit``/``ETag``/``X-Linked-Size``, downloads with ``Range``). It serves a
copy of the bundled SmolLM2 GGUF — also under the repo the ``smollm2:360m`` name maps to, so
that name pulls (the 135M file, in truth) — and the pulled model really runs on the real
embedded engine: through ``autotune pull``, the official ``ollama`` client's ``pull`` against
``autotune serve``, and ``/pull`` in the chat.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from autotune.chat.repl import Chat, ChatOptions
from autotune.ground.config import Settings, get_settings
from autotune.models.discovery import discover
from autotune.runtime import open_runtime
from fakes.hf_hub import COMMIT, FakeHub, HubFile
from fakes.server import serve

pytestmark = pytest.mark.engine

REPO = "test-org/SmolLM2-135M-Instruct-GGUF"
FILE = "SmolLM2-135M-Instruct-Q4_1.gguf"
PULLED = f"hf.co/{REPO}:Q4_1"
TABLE_REPO = "bartowski/SmolLM2-360M-Instruct-GGUF"  # what "smollm2:360m" maps to
TABLE_FILE = "SmolLM2-360M-Instruct-Q4_K_M.gguf"
TOKEN = "hf_test_token"


@pytest.fixture(scope="module")
def hub_file(bundled_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> HubFile:
    copy = tmp_path_factory.mktemp("hub-files") / FILE
    shutil.copy(bundled_gguf, copy)
    return HubFile(copy)


@pytest.fixture
def hub(hub_file: HubFile, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    fake = FakeHub({REPO: {FILE: hub_file}, TABLE_REPO: {TABLE_FILE: hub_file}})
    with serve(fake.app()) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        get_settings.cache_clear()
        yield fake


def cli(*args: str, budget: str = "4GiB") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AUTOTUNE_MEMORY_BUDGET": budget, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "autotune", "pull", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_ollama_client_pulls_and_the_model_runs(
    hub: FakeHub, hub_file: HubFile, start_server: object
) -> None:
    server = start_server()  # type: ignore[operator]
    client = ollama.Client(host=server.url, timeout=120)
    steps = list(client.pull(PULLED, stream=True))
    statuses = [s.status for s in steps]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "verifying sha256 digest" in statuses
    downloads = [s for s in steps if s.total]
    assert downloads and {s.digest for s in downloads} == {f"sha256:{hub_file.sha256}"}
    assert downloads[-1].completed == downloads[-1].total == hub_file.size
    assert all(r["authorization"] == f"Bearer {TOKEN}" for r in hub.requests)  # HF_TOKEN
    assert [r["method"] for r in hub.requests][:2] == ["GET", "HEAD"]
    assert hub.requests[0]["query"] == {"blobs": "true"}

    names = {m.model for m in client.list().models}
    assert f"{REPO}:SmolLM2-135M-Instruct-Q4_1" in names
    reply = client.chat(
        model=PULLED,
        messages=[{"role": "user", "content": "Say hello."}],
        options={"num_predict": 6, "temperature": 0},
    )
    assert reply.message.content and reply.done
    assert (client.show(PULLED).modelinfo or {})["general.architecture"] == "llama"


def test_pull_by_an_ollama_name_resumes_a_dropped_download_and_verifies_it(
    hub: FakeHub, hub_file: HubFile
) -> None:
    hub.cut_after = 25_000_000  # the connection drops once, a quarter of the way in
    done = cli("smollm2:360m", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["repo"] == TABLE_REPO and result["revision"] == COMMIT
    assert result["quantization"] == "Q4_K_M" and result["verified"] is True
    (file,) = result["files"]
    local = Path(file["local_path"])
    assert file["sha256"] == hub_file.sha256 == sha256(local)
    ranges = [r["range"] for r in hub.requests if r["range"]]
    assert ranges and int(ranges[0].split("=")[1].rstrip("-")) > 0  # resumed, not restarted
    assert "fits comfortably" in done.stderr  # the verdict is shown before the download
    found = discover().find("smollm2:360m")  # by the name it was pulled by
    assert found.path.resolve() == local.resolve()


def test_a_damaged_download_is_removed_and_the_pull_fails(hub: FakeHub) -> None:
    hub.corrupt = True
    failed = cli(PULLED)
    assert failed.returncode == 1
    assert "arrived damaged" in failed.stderr and "Traceback" not in failed.stderr
    with pytest.raises(Exception, match="Unknown model"):
        discover().find(PULLED)


def test_a_model_that_will_not_fit_is_not_downloaded(hub: FakeHub) -> None:
    refused = cli(PULLED, budget="64MiB")
    assert refused.returncode == 1
    assert "will not fit" in refused.stderr and "--force" in refused.stderr
    assert all("/resolve/" not in r["path"] for r in hub.requests)  # not a byte fetched


def test_pull_errors_are_readable_4xx(hub: FakeHub, start_server: object) -> None:
    server = start_server(memory_budget=64 * 1024**2)  # type: ignore[operator]
    client = ollama.Client(host=server.url, timeout=60)
    cases = [
        ("hf.co/nobody/nothing-GGUF", 404, "is not on the Hugging Face hub"),
        (f"hf.co/{REPO}:Q8_0", 404, "has no Q8_0 file; it has: Q4_1"),
        (PULLED, 400, "will not fit"),
    ]
    for name, status, words in cases:
        with pytest.raises(ollama.ResponseError) as caught:
            list(client.pull(name, stream=True))
        assert caught.value.status_code == status and words in caught.value.error, name
    unknown = cli("not-a-model:1b")
    assert unknown.returncode == 1 and "autotune does not know" in unknown.stderr


async def test_pull_in_the_chat_uses_the_hub_when_no_ollama_runs(
    hub: FakeHub, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path / "home", backend="embedded", memory_budget=1024**3)
    runtime = await open_runtime(settings, start_sampler=False)
    err = io.StringIO()
    chat = Chat(runtime, ChatOptions(), interactive=False, out=io.StringIO(), err=err)  # type: ignore[arg-type]
    try:
        assert await chat.open() == 0
        await chat.handle_line(f"/pull {PULLED}")
        text = err.getvalue()
        assert "On this machine: fits comfortably" in text and "verifying sha256 digest" in text
        assert f"Pulled {PULLED} from the Hugging Face hub" in text
        await chat.handle_line(f"/model {PULLED}")
        assert f"model {REPO}:SmolLM2-135M-Instruct-Q4_1" in err.getvalue()
    finally:
        await chat.close()
        await runtime.aclose()
