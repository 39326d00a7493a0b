"""Speculative decoding on this machine: each llama.cpp mode against none, on two kinds of work.

What ``autotune tune`` measures, with more rounds and repeats: an engine without speculation
stays loaded while each mode gets a fresh engine of the same model and settings; both are
asked the same prompts in turn (order alternating) — input-copying edits (a code file with a
small change, answered with the whole file) and free chat — with the prompt computed in full
each time. Decode speed is the engine's own ``predicted_per_second``; drafted and accepted
tokens come from its ``timings``. Results: bench/results/speculation.*

    .venv/bin/python bench/speculation.py --model smollm2:135m --rounds 3 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

from autotune.bench.report import write_results
from autotune.bench.sweep import SPEC_ORDER, sweep_speculation
from autotune.ground.tuned import SpecCandidate, SpecTrial
from autotune.models.discovery import discover
from autotune.models.gguf import read_gguf_meta
from autotune.tuning.calibrate import CHAT_MAX_LOSS, COPY_MIN_GAIN, choose_speculation

HERE = Path(__file__).parent
RESULTS = HERE / "results"


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def _fmt(s: dict[str, float] | None, pct: bool = False) -> str:
    if not s:
        return "—"
    if pct:
        return f"{s['median']:+.0%} ({s['min']:+.0%} … {s['max']:+.0%})"
    return f"{s['median']:.1f} ({s['min']:.1f} … {s['max']:.1f})"


def _summary(label: str, trials: list[SpecTrial]) -> dict[str, Any]:
    ok = [t for t in trials if t.error is None]
    drafted = sum(t.drafted for t in ok)
    return {
        "mode": label,
        "repeats": len(ok),
        "errors": [t.error for t in trials if t.error],
        "copy_tps": _spread([t.copy_tps for t in ok if t.copy_tps]),
        "base_copy_tps": _spread([t.base_copy_tps for t in ok if t.base_copy_tps]),
        "copy_gain": _spread([t.copy_gain for t in ok if t.copy_gain is not None]),
        "chat_tps": _spread([t.chat_tps for t in ok if t.chat_tps]),
        "base_chat_tps": _spread([t.base_chat_tps for t in ok if t.base_chat_tps]),
        "chat_gain": _spread([t.chat_gain for t in ok if t.chat_gain is not None]),
        "first_token_ms": _spread([t.first_token_ms for t in ok if t.first_token_ms]),
        "base_first_token_ms": _spread(
            [t.base_first_token_ms for t in ok if t.base_first_token_ms]
        ),
        "acceptance": sum(t.accepted for t in ok) / drafted if drafted else None,
        "same_answers": sum(t.same_answers for t in ok),
        "disturbed_pairs": sum(t.disturbed for t in ok),
        "answers": sum(t.answers for t in ok),
        "rss_bytes": max((t.rss_bytes or 0 for t in ok), default=None),
        "base_rss_bytes": max((t.base_rss_bytes or 0 for t in ok), default=None),
    }


def _merged(candidate: SpecCandidate, trials: list[SpecTrial]) -> SpecTrial:
    """One trial per mode with the median gains over its repeats, for autotune's rule."""
    ok = [t for t in trials if t.candidate == candidate and t.error is None]
    merged = SpecTrial(candidate, error=None if ok else "no repeat ran to the end")
    copy = [t.copy_gain for t in ok if t.copy_gain is not None]
    chat = [t.chat_gain for t in ok if t.chat_gain is not None]
    merged.copy_gain = statistics.median(copy) if copy else None
    merged.chat_gain = statistics.median(chat) if chat else None
    merged.drafted = sum(t.drafted for t in ok)
    merged.accepted = sum(t.accepted for t in ok)
    return merged


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--rounds", type=int, default=3, help="prompts of each kind per trial")
    parser.add_argument("--repeats", type=int, default=3, help="times the whole set is measured")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--modes", default=",".join(SPEC_ORDER))
    parser.add_argument("--draft", default=None, help="a draft model's name, also measured")
    parser.add_argument("--name", default="speculation", help="results file name")
    args = parser.parse_args()

    found = discover()
    local = found.find(args.model)
    meta = read_gguf_meta(local.path, local.name)
    candidates = [SpecCandidate(m) for m in args.modes.split(",") if m]
    if args.draft:
        draft = found.find(args.draft)
        candidates.append(SpecCandidate("draft", draft.name, str(draft.path)))
    settings: dict[str, object] = {"n_ctx": 4096}
    if args.threads:
        settings["n_threads"] = args.threads
    load_before = os.getloadavg()
    started = time.monotonic()
    trials: list[SpecTrial] = []
    for r in range(args.repeats):
        # The order of modes rotates per repeat, so no mode always runs first or last.
        order = candidates[r % len(candidates) :] + candidates[: r % len(candidates)]
        done = await sweep_speculation(
            meta, settings, order, budget=10**6, rounds=args.rounds, progress=None
        )
        trials += done.trials
        print(f"repeat {r + 1}/{args.repeats}: {done.choice.mode} ({done.choice.reason})")
    elapsed = time.monotonic() - started
    load_after = os.getloadavg()

    summaries = [_summary(c.label(), [t for t in trials if t.candidate == c]) for c in candidates]
    choice = choose_speculation([_merged(c, trials) for c in candidates])
    conditions = (
        f"{meta.name}, n_ctx 4096, {os.cpu_count()} logical cores, "
        f"threads {args.threads or 'llama.cpp default'}; {args.repeats} repeats × "
        f"{args.rounds} edit + {args.rounds} chat prompts per mode, greedy; load average "
        f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (a shared machine); "
        f"{elapsed:.0f}s in all"
    )
    rows = [
        [
            s["mode"],
            _fmt(s["copy_tps"]),
            _fmt(s["base_copy_tps"]),
            _fmt(s["copy_gain"], pct=True),
            _fmt(s["chat_tps"]),
            _fmt(s["base_chat_tps"]),
            _fmt(s["chat_gain"], pct=True),
            "—" if s["acceptance"] is None else f"{s['acceptance']:.0%}",
            _fmt(s["first_token_ms"]),
            _fmt(s["base_first_token_ms"]),
            f"{s['same_answers']}/{s['answers']}",
        ]
        for s in summaries
    ]
    header = [
        "mode",
        "edit tok/s",
        "edit tok/s, none",
        "edit gain",
        "chat tok/s",
        "chat tok/s, none",
        "chat gain",
        "drafts accepted",
        "first token ms",
        "first token ms, none",
        "same greedy text",
    ]
    notes = [
        "Medians with (min … max) over the repeats; gains are each trial's median over "
        "prompts of the speed ratio against the engine without speculation, the two answers "
        "to a prompt run back to back.",
        "Same greedy text: answers identical to the engine without speculation (both compute "
        "the prompt in full; llama.cpp's numerics depend on how tokens are batched, and "
        "verifying drafts batches them differently).",
        f"Conditions: {conditions}.",
        f"Choice by autotune's rule (edits at least +{COPY_MIN_GAIN:.0%}, chat no worse than "
        f"-{CHAT_MAX_LOSS:.0%}) on each mode's median gains: {choice.mode} — {choice.reason}.",
        "A pair of requests during which other processes used more than 0.25 CPU-seconds per "
        "second was measured again (up to 3 tries); pairs kept although disturbed: "
        + ", ".join(f"{s['mode']} {s['disturbed_pairs']}" for s in summaries)
        + ".",
    ]
    data = {
        "model": meta.name,
        "conditions": conditions,
        "summaries": summaries,
        "choice": choice.__dict__,
        "trials": [
            {**t.__dict__, "candidate": t.candidate.__dict__, "copy_gain": t.copy_gain}
            for t in trials
        ],
    }
    json_path, md_path = write_results(RESULTS, args.name, data, header, rows, notes)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")


if __name__ == "__main__":
    asyncio.run(main())
