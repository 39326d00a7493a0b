"""How long a person's next turn waits behind an app's background tasks, per admission option.

    .venv/bin/python bench/background.py [--runs N] [--model smollm2:135m]

Open WebUI sends its background tasks (title, tags, follow-up questions) right after each
answer, on Ollama's ``/api/chat``, not streamed and with no token limit; the person's next turn
(streamed) arrives a moment later. Measured here on the real embedded engine, for each option:

- ``fifo``: one place, first come first served (autotune before issue 21: the tasks are sent
  streamed here, which autotune treats as people's turns);
- ``cap``: the same, the tasks capped at ``--cap`` tokens (what a cap for requests that set
  no limit would do);
- ``two-slots``: two places, first come first served (``AUTOTUNE_MAX_CONCURRENT=2``: two
  llama.cpp slots);
- ``yield``: one place; the tasks as Open WebUI sends them are background work: the turn goes
  first and a running task yields its place (autotune's default now, pipeline/admission.py);
- ``lane``: two places, background work holding at most one (``AUTOTUNE_MAX_CONCURRENT=2``).

Each run: ``--tasks`` background requests at once, then the person's turn ``--delay`` seconds
later. Figures: the turn's time to first token (TTFT) and to its end, and how long the tasks
took, medians over ``--runs`` (options interleaved run by run). Written to
``bench/results/background.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from autotune.ground.config import Settings
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer

RESULTS = Path(__file__).resolve().parent / "results"
HISTORY = [
    {"role": "user", "content": "Tell me about the sea."},
    {"role": "assistant", "content": "The sea covers most of the Earth and shapes its weather."},
]
#: Open WebUI's task prompts, shortened (the tasks ask for JSON; the model may ramble on).
TASKS = [
    "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat history.",
    "### Task:\nGenerate 1-3 broad tags categorizing the main themes of the chat history.",
    "### Task:\nSuggest 3-5 relevant follow-up questions the user might ask next.",
]
LONG = "Write a long, detailed essay about the history of the sea, in many paragraphs."


def _task(url: str, n: int, option: str, cap: int, out: dict[str, Any]) -> None:
    prompt = TASKS[n % len(TASKS)] if n else LONG  # the first one runs long, as seen in the issue
    background = option in ("yield", "lane")  # else sent streamed: a turn to autotune
    options: dict[str, Any] = {"temperature": 0}
    if option == "cap":
        options["num_predict"] = cap
    body: dict[str, Any] = {
        "model": out["model"],
        "stream": not background,
        "messages": [*HISTORY, {"role": "user", "content": prompt}],
        "options": options,
    }
    began = time.monotonic()
    last: dict[str, Any] = {}
    with httpx.stream("POST", url + "/api/chat", json=body, timeout=1800) as reply:
        for line in reply.iter_lines():
            if line:
                last = json.loads(line)
    out.setdefault("tasks", []).append(
        {
            "seconds": time.monotonic() - began,
            "tokens": last.get("eval_count"),
            "done_reason": last.get("done_reason"),
        }
    )


def _turn(url: str, model: str) -> dict[str, float]:
    body = {
        "model": model,
        "stream": True,
        "messages": [*HISTORY, {"role": "user", "content": "And the ocean floor?"}],
        "options": {"temperature": 0, "num_predict": 32},
    }
    began = time.monotonic()
    first = None
    with httpx.stream("POST", url + "/api/chat", json=body, timeout=1800) as reply:
        for line in reply.iter_lines():
            if first is None and line and json.loads(line).get("message", {}).get("content"):
                first = time.monotonic() - began
    return {"ttft": first if first is not None else float("nan"), "total": time.monotonic() - began}


def _run_once(option: str, args: argparse.Namespace, home: Path) -> dict[str, Any]:
    settings = Settings(
        home=home,
        backend="embedded",
        recall=False,
        max_concurrent=2 if option in ("two-slots", "lane") else 1,
        max_queued=16,
        wait_timeout=1800,
    )
    with BackgroundServer(create_app(settings)) as server:
        warm = {"model": args.model, "messages": [{"role": "user", "content": "Hi"}]}
        httpx.post(server.url + "/api/chat", json={**warm, "stream": False}, timeout=600)
        out: dict[str, Any] = {"model": args.model}
        threads = [
            threading.Thread(target=_task, args=(server.url, n, option, args.cap, out))
            for n in range(args.tasks)
        ]
        for t in threads:
            t.start()
            time.sleep(0.05)
        time.sleep(args.delay)
        out["turn"] = _turn(server.url, args.model)
        for t in threads:
            t.join()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--delay", type=float, default=1.0)
    parser.add_argument("--cap", type=int, default=256)
    parser.add_argument("--options", default="fifo,cap,two-slots,yield,lane")
    args = parser.parse_args()
    options = args.options.split(",")
    runs: dict[str, list[dict[str, Any]]] = {o: [] for o in options}
    with tempfile.TemporaryDirectory(prefix="bg-bench-") as tmp:
        for n in range(args.runs):
            for option in options:
                result = _run_once(option, args, Path(tmp) / f"{option}-{n}")
                runs[option].append(result)
                print(option, json.dumps(result), file=sys.stderr, flush=True)
    rows = {o: _summary(r) for o, r in runs.items()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "background.json").write_text(
        json.dumps({"args": vars(args), "runs": runs}, indent=1)
    )
    table = _markdown(rows, args)
    (RESULTS / "background.md").write_text(table)
    print(table)
    return 0


def _summary(results: list[dict[str, Any]]) -> dict[str, float]:
    def med(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    return {
        "ttft": med([r["turn"]["ttft"] for r in results]),
        "turn": med([r["turn"]["total"] for r in results]),
        "tasks": med([max(t["seconds"] for t in r["tasks"]) for r in results]),
        "cut": med([sum(t["done_reason"] == "length" for t in r["tasks"]) for r in results]),
    }


def _markdown(rows: dict[str, dict[str, float]], args: argparse.Namespace) -> str:
    lines = [
        "# The person's turn behind background tasks",
        "",
        f"`bench/background.py --runs {args.runs} --tasks {args.tasks} --delay {args.delay} "
        f"--cap {args.cap}` on {args.model} (medians; seconds).",
        "",
        "| option | turn's first token | turn's end | tasks' end | tasks cut short |",
        "|---|---|---|---|---|",
    ]
    for option, r in rows.items():
        lines.append(
            f"| {option} | {r['ttft']:.2f} | {r['turn']:.2f} | {r['tasks']:.1f} "
            f"| {r['cut']:.0f} of {args.tasks} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
