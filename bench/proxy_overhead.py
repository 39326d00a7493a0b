"""Proxy overhead: time to first token through autotune minus direct to the same engine.

Two scenarios, each a real ``autotune serve`` subprocess:

* ``engine`` — the embedded llama.cpp engine with the bundled model. autotune relays to the
  llama.cpp worker it started; the direct side calls that same worker.
* ``instant`` — ``bench/fake_llamacpp.py``, an upstream that answers instantly with
  llama.cpp's chunk shapes, to isolate autotune's own cost from CPU contention with an
  engine that keeps every core busy.
* ``faces`` — the same instant upstream through each API face (OpenAI chat, Anthropic
  Messages, Responses, Ollama's /api/chat, completions), each round timing the upstream
  directly and every face in a rotating order; a face's cost above the OpenAI face's is
  their paired difference.

Requests are interleaved (alternating which goes first) so drift hits both sides; TTFT is
measured client-side to the first content token. Results: bench/results/proxy_overhead.*

    .venv/bin/python bench/proxy_overhead.py --requests 100
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from autotune.bench.report import summarize, write_results
from autotune.server.runner import free_port

HERE = Path(__file__).parent
RESULTS = HERE / "results"
BODY = {
    "model": "smollm2:135m",
    "messages": [{"role": "user", "content": "Reply with one word: ready?"}],
    "max_tokens": 4,
    "temperature": 0,
    "seed": 7,
    "stream": True,
}


#: Each face: (path, streaming body, the text that marks its first content token).
FACES: dict[str, tuple[str, dict[str, object], str]] = {
    "openai": ("/v1/chat/completions", BODY, '"content":"'),
    "anthropic": (
        "/v1/messages",
        {
            "model": "smollm2:135m",
            "max_tokens": 4,
            "messages": BODY["messages"],
            "stream": True,
        },
        '"text_delta"',
    ),
    "responses": (
        "/v1/responses",
        # store false, as Codex sends it; a stored response adds the conversation write that
        # X-Conversation-Id adds on the OpenAI face.
        {
            "model": "smollm2:135m",
            "input": "Reply with one word: ready?",
            "max_output_tokens": 4,
            "stream": True,
            "store": False,
        },
        "response.output_text.delta",
    ),
    "ollama": (
        "/api/chat",
        {
            "model": "smollm2:135m",
            "messages": BODY["messages"],
            "options": {"num_predict": 4, "temperature": 0, "seed": 7},
            "stream": True,
        },
        '"content":"',
    ),
    "completions": (
        "/v1/completions",
        {"model": "smollm2:135m", "prompt": "Ready?", "max_tokens": 4, "stream": True},
        '"text":"Y',
    ),
}


def ttft_ms(
    client: httpx.Client, url: str, body: dict[str, object] = BODY, marker: str = '"content":"'
) -> float:
    """Milliseconds from sending the request to the first content token.

    A request that llama-server drops on a stale kept-alive connection (it closes them after
    streamed replies without notice) is sent again, as autotune's own client does; the
    failed attempt is not timed.
    """
    try:
        return _ttft_once(client, url, body, marker)
    except httpx.RemoteProtocolError:
        return _ttft_once(client, url, body, marker)


def _ttft_once(client: httpx.Client, url: str, body: dict[str, object], marker: str) -> float:
    start = time.perf_counter()
    first = None
    with client.stream("POST", url, json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            event = line.startswith("data: {") or line.startswith("{")  # SSE, or NDJSON
            if first is None and event and marker in line:
                first = time.perf_counter()
    if first is None:
        raise RuntimeError(f"no content token from {url}")
    return (first - start) * 1000


def _wait_healthy(client: httpx.Client, url: str) -> None:
    for _ in range(300):
        try:
            if client.get(url + "/health").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@contextmanager
def _serve(env: dict[str, str]) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "AUTOTUNE_HOME": tempfile.mkdtemp(prefix="autotune-bench-"),
        "AUTOTUNE_PORT": str(port),
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def measure(client: httpx.Client, via: str, direct: str, n: int) -> dict[str, list[float]]:
    for _ in range(5):  # warm both connection pools and the engine's prompt cache
        ttft_ms(client, via), ttft_ms(client, direct)
    through: list[float] = []
    straight: list[float] = []
    for i in range(n):
        if i % 2:
            a, b = ttft_ms(client, via), ttft_ms(client, direct)
        else:
            b, a = ttft_ms(client, direct), ttft_ms(client, via)
        through.append(a)
        straight.append(b)
    return {
        "autotune": through,
        "direct": straight,
        "paired_difference": [a - b for a, b in zip(through, straight, strict=True)],
    }


def engine_scenario(client: httpx.Client, n: int) -> dict[str, list[float]]:
    """autotune's own worker (its port takes a key only autotune holds) against a raw
    llama.cpp worker started with the same model and the settings autotune loaded."""
    from autotune.backends.worker_process import start_worker, stop_worker
    from autotune.models.bundled import bundled_model_path

    with _serve({"AUTOTUNE_BACKEND": "embedded"}) as base:
        _wait_healthy(client, base)
        ttft_ms(client, base + "/v1/chat/completions")  # loads the model
        (model,) = client.get(base + "/api/running_models").json()["models"]
        loaded = model["settings"]
        spec: dict[str, object] = {"path": str(bundled_model_path()), "alias": BODY["model"]}
        spec.update({k: loaded[k] for k in ("n_ctx", "n_threads", "n_batch") if loaded.get(k)})
        raw, engine = start_worker(spec)
        try:
            via, direct = base + "/v1/chat/completions", engine + "/v1/chat/completions"
            return measure(client, via, direct, n)
        finally:
            stop_worker(raw)


def instant_scenario(client: httpx.Client, n: int) -> dict[str, list[float]]:
    port = free_port()
    fake = subprocess.Popen([sys.executable, str(HERE / "fake_llamacpp.py"), str(port)])
    upstream = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(client, upstream)
        with _serve({"AUTOTUNE_BACKEND": "llamacpp", "AUTOTUNE_LLAMACPP_URL": upstream}) as base:
            _wait_healthy(client, base)
            return measure(
                client, base + "/v1/chat/completions", upstream + "/v1/chat/completions", n
            )
    finally:
        fake.terminate()
        fake.wait(timeout=10)


def faces_scenario(client: httpx.Client, n: int) -> dict[str, list[float]]:
    """Per round: the upstream directly, then every face, in an order that rotates."""
    port = free_port()
    fake = subprocess.Popen([sys.executable, str(HERE / "fake_llamacpp.py"), str(port)])
    upstream = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(client, upstream)
        with _serve({"AUTOTUNE_BACKEND": "llamacpp", "AUTOTUNE_LLAMACPP_URL": upstream}) as base:
            _wait_healthy(client, base)
            runs = {
                "direct": lambda: ttft_ms(client, upstream + "/v1/chat/completions"),
                **{
                    name: (lambda p=path, b=body, m=marker: ttft_ms(client, base + p, b, m))
                    for name, (path, body, marker) in FACES.items()
                },
            }
            for _ in range(5):  # warm every path
                for run in runs.values():
                    run()
            times: dict[str, list[float]] = {name: [] for name in runs}
            names = list(runs)
            for i in range(n):
                for name in names[i % len(names) :] + names[: i % len(names)]:
                    times[name].append(runs[name]())
    finally:
        fake.terminate()
        fake.wait(timeout=10)
    out = dict(times)
    for name in FACES:
        out[f"{name}_overhead"] = [a - b for a, b in zip(times[name], times["direct"], strict=True)]
        out[f"{name}_above_openai"] = [
            a - b for a, b in zip(times[name], times["openai"], strict=True)
        ]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100, help="pairs to time per scenario")
    args = parser.parse_args()
    if args.requests < 50:
        parser.error("use at least 50 requests for a stable median")
    console = Console()
    data: dict[str, object] = {"requests": args.requests, "body": BODY, "scenarios": {}}
    rows = []
    with httpx.Client(timeout=60) as client:
        for name, run, label in (
            ("engine", engine_scenario, "embedded llama.cpp, bundled model, 2 engine threads"),
            ("instant", instant_scenario, "instant upstream (autotune's own cost)"),
        ):
            with console.status(f"{name}: timing {args.requests} interleaved pairs…"):
                raw = run(client, args.requests)
            stats = {k: summarize(v) for k, v in raw.items()}
            data["scenarios"][name] = {"label": label, "ttft_ms": stats, "raw_ms": raw}  # type: ignore[index]
            d = stats["paired_difference"]
            rows.append(
                [
                    label,
                    stats["direct"]["median"],
                    stats["autotune"]["median"],
                    d["median"],
                    d["p90"],
                    d["stdev"],
                ]
            )
    with httpx.Client(timeout=60) as client, console.status("faces: timing each API face…"):
        raw = faces_scenario(client, args.requests)
    stats = {k: summarize(v) for k, v in raw.items()}
    data["scenarios"]["faces"] = {  # type: ignore[index]
        "label": "instant upstream through each API face",
        "ttft_ms": stats,
        "raw_ms": raw,
    }
    for name in FACES:
        d = stats[f"{name}_overhead"]
        rows.append(
            [
                f"face: {name} (above the OpenAI face: "
                f"{stats[f'{name}_above_openai']['median']:+.3f} ms median)",
                stats["direct"]["median"],
                stats[name]["median"],
                d["median"],
                d["p90"],
                d["stdev"],
            ]
        )
    header = [
        "scenario",
        "direct median",
        "autotune median",
        "overhead median",
        "overhead p90",
        "overhead stdev",
    ]
    notes = [
        f"{args.requests} interleaved pairs per scenario; TTFT in ms, client-side, to the "
        "first content token; overhead = paired difference (autotune − direct).",
        "Aim: under 1 ms median overhead; each face within 1 ms of the OpenAI face's own cost "
        "(faces rows: one round times the upstream and every face, in rotating order).",
        f"Command: .venv/bin/python bench/proxy_overhead.py --requests {args.requests}",
    ]
    write_results(RESULTS, "proxy_overhead", data, header, rows, notes)
    table = Table(title="Proxy overhead: time to first token (ms)")
    for col in header:
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for row in rows:
        table.add_row(row[0], *(f"{v:.3f}" for v in row[1:]))
    console.print(table)
    for note in notes:
        console.print("• " + note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
