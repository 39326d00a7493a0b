"""Benchmark results: summary statistics, and writing them as JSON plus a Markdown table."""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["percentile", "summarize", "write_results"]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0–100) with linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, median, p90, mean, min, max and standard deviation."""
    vals = list(values)
    return {
        "n": len(vals),
        "median": percentile(vals, 50),
        "p90": percentile(vals, 90),
        "mean": statistics.fmean(vals) if vals else math.nan,
        "min": min(vals) if vals else math.nan,
        "max": max(vals) if vals else math.nan,
        "stdev": statistics.stdev(vals) if len(vals) > 1 else 0.0,
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def write_results(
    directory: Path,
    name: str,
    data: dict[str, Any],
    header: Sequence[str],
    rows: Sequence[Sequence[Any]],
    notes: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Write ``<name>.json`` (data + machine + time) and ``<name>.md`` (table + notes)."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = {
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "system": platform.platform(),
    }
    json_path = directory / f"{name}.json"
    json_path.write_text(json.dumps({**data, "meta": meta}, indent=2, default=str) + "\n")
    lines = [
        f"# {name}",
        "",
        f"Recorded {meta['recorded_at']} on {meta['system']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    md_path = directory / f"{name}.md"
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path
