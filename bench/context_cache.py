"""Prefill cost of a 100-turn conversation: no trimming vs a naive last-N window vs autotune.

Every strategy talks to its own llama.cpp worker of the bundled model, and the three are
interleaved turn by turn so drift hits all of them. The conversation is scripted (canned
assistant turns), so all three send the same content; only how the history is fitted
differs. Cost is what the engine itself reports per request: tokens prefilled
(``timings.prompt_n``, i.e. not served from its prompt cache) and ``timings.prompt_ms``.

* no trimming — the whole history every turn, on a worker with a context big enough for it;
* last-N — system prompt + the last 8 turns (the common sliding window), 2,048-token worker;
* autotune — autotune's pipeline with the fast profile (2,048-token context): it compacts
  rarely and otherwise only appends, so the engine reuses the prefix.

    .venv/bin/python bench/context_cache.py --turns 100
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from autotune.backends.openai_compat import post_chat
from autotune.backends.worker_process import start_worker, stop_worker
from autotune.bench.report import write_results
from autotune.ground.config import Settings
from autotune.models.bundled import BUNDLED_NAME, bundled_model_path
from autotune.pipeline import ChatInput
from autotune.runtime import open_runtime

RESULTS = Path(__file__).parent / "results"
TOPICS = [
    "the Rhine",
    "Saturn's rings",
    "sourdough",
    "the Linux scheduler",
    "tidal power",
    "Roman roads",
    "octopus camouflage",
    "jazz harmony",
    "glacier retreat",
    "TCP slow start",
    "bee navigation",
    "the printing press",
]
SYSTEM = "You are a concise assistant. Answer in one sentence."


def script(turns: int) -> list[tuple[str, str]]:
    out = []
    for t in range(turns):
        topic = TOPICS[t % len(TOPICS)]
        out.append(
            (
                f"Turn {t}: tell me one fact about {topic}, and why it matters.",
                f"Here is a fact about {topic}: it has shaped how people think about it for "
                f"a long time, which matters because turn {t} builds on what came before.",
            )
        )
    return out


async def ask_raw(http: httpx.AsyncClient, messages: list[dict[str, Any]]) -> dict[str, Any]:
    body = {"model": BUNDLED_NAME, "messages": messages, "max_tokens": 1, "temperature": 0}
    reply = await post_chat(http, "/v1/chat/completions", body)
    reply.raise_for_status()
    return dict(reply.json()["timings"])


async def main_async(turns: int, window: int) -> dict[str, Any]:
    path = str(bundled_model_path())
    full_proc, full_url = await asyncio.to_thread(
        start_worker, {"path": path, "alias": BUNDLED_NAME, "n_ctx": 16384}
    )
    lastn_proc, lastn_url = await asyncio.to_thread(
        start_worker, {"path": path, "alias": BUNDLED_NAME, "n_ctx": 2048}
    )
    runtime = await open_runtime(
        Settings(home=Path(tempfile.mkdtemp(prefix="autotune-ctx-")), backend="embedded")
    )
    totals = {
        k: {"prefilled_tokens": 0, "prompt_ms": 0.0, "sent_tokens": 0, "errors": 0}
        for k in ("no trimming", f"last-{window} window", "autotune")
    }
    per_turn: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    system = {"role": "system", "content": SYSTEM}
    try:
        async with (
            httpx.AsyncClient(base_url=full_url, timeout=300) as full,
            httpx.AsyncClient(base_url=lastn_url, timeout=300) as lastn,
        ):
            with Progress(console=Console(stderr=True), transient=True) as bar:
                task = bar.add_task("turns", total=turns)
                for user, canned in script(turns):
                    history.append({"role": "user", "content": user})
                    row: dict[str, Any] = {}
                    strategies = {
                        "no trimming": lambda: ask_raw(full, [system, *history]),
                        f"last-{window} window": lambda: ask_raw(
                            lastn, [system, *history[-(2 * window - 1) :]]
                        ),
                        "autotune": lambda: _ask_tuned(runtime, [system, *history]),
                    }
                    for name, call in strategies.items():
                        try:
                            timings = await call()
                        except Exception as exc:  # a failure is counted, not hidden
                            totals[name]["errors"] += 1
                            row[name] = {"error": str(exc)[:120]}
                            continue
                        totals[name]["prefilled_tokens"] += timings.get("prompt_n") or 0
                        totals[name]["prompt_ms"] += timings.get("prompt_ms") or 0.0
                        totals[name]["sent_tokens"] += (timings.get("prompt_n") or 0) + (
                            timings.get("cache_n") or 0
                        )
                        row[name] = {
                            k: timings.get(k) for k in ("prompt_n", "cache_n", "prompt_ms")
                        }
                    per_turn.append(row)
                    history.append({"role": "assistant", "content": canned})
                    bar.advance(task)
    finally:
        await runtime.aclose()
        await asyncio.to_thread(stop_worker, full_proc)
        await asyncio.to_thread(stop_worker, lastn_proc)
    return {"turns": turns, "window": window, "totals": totals, "per_turn": per_turn}


async def _ask_tuned(runtime: Any, messages: list[dict[str, Any]]) -> dict[str, Any]:
    run = await runtime.pipeline.start(
        ChatInput(
            messages=messages,
            model=BUNDLED_NAME,
            profile="fast",
            source="bench",
            params={"max_tokens": 1, "temperature": 0},
        )
    )
    async for _ in run:
        pass
    if run.stats is None:
        raise RuntimeError("no engine timings")
    return dict(run.stats.raw.get("timings") or {})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--window", type=int, default=8, help="turns the naive window keeps")
    args = parser.parse_args()
    data = asyncio.run(main_async(args.turns, args.window))
    totals = data["totals"]
    header = ["strategy", "prefilled tokens", "prefill time (s)", "tokens sent", "errors"]
    rows = [
        [
            name,
            t["prefilled_tokens"],
            round(t["prompt_ms"] / 1000, 2),
            t["sent_tokens"],
            t["errors"],
        ]
        for name, t in totals.items()
    ]
    notes = [
        f"{args.turns}-turn scripted conversation, 3 strategies interleaved turn by turn, "
        "each on its own llama.cpp worker of the bundled model; figures are the engine's "
        "own timings (prompt_n = tokens not served from its prompt cache).",
        f"Command: .venv/bin/python bench/context_cache.py --turns {args.turns}",
    ]
    write_results(RESULTS, "context_cache", data, header, rows, notes)
    table = Table(title=f"Prefill over a {args.turns}-turn conversation")
    for col in header:
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for row in rows:
        table.add_row(*(str(c) for c in row))
    console = Console()
    console.print(table)
    for n in notes:
        console.print("• " + n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
