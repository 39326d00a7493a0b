"""Parsing and printing of byte sizes and durations the way people write them."""

from __future__ import annotations

import re

__all__ = ["GiB", "MiB", "format_bytes", "parse_duration", "parse_size"]

MiB = 1024**2
GiB = 1024**3

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """``"8GiB"`` → 8589934592; ``"512MB"`` → 512000000; a bare number is bytes."""
    match = _SIZE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (try 8GiB, 512MiB or a number of bytes)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(n: float | None) -> str:
    """1536 MiB → ``"1.5 GiB"``; ``None`` → ``"—"``."""
    if n is None:
        return "—"
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", 1024)):
        if n >= size:
            return f"{sign}{n / size:.1f} {unit}"
    return f"{sign}{int(n)} B"


_DURATION = re.compile(r"^\s*(-?[0-9]*\.?[0-9]+)\s*(ms|s|m|h)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}


def parse_duration(text: str | float | int) -> float:
    """``"5m"`` → 300.0, ``"-1"`` → -1.0 (forever), a bare number is seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (try 30s, 5m, 1h or -1 for forever)")
    return float(match.group(1)) * _SECONDS[match.group(2)]
