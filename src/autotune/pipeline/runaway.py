"""Finds a reply that runs away: the same stretch of text, back to back, over and over.

A request that sets no token limit can make a small model loop until its context is full (seen:
an Open WebUI title request generated 7,945 tokens for 311 s and held the next turn behind
it). :class:`RepetitionGuard` watches such a reply's text and reports a :class:`Loop` when its
last :data:`MIN_SPAN` characters (``AUTOTUNE_RUNAWAY_CHARS``) or more are one block repeated
exactly, at least :data:`MIN_REPEATS` times. Prose, code and lists never repeat 2,000
characters verbatim (numbered or varied lines differ somewhere), so it cannot fire on them;
only a reply stuck in a cycle does. It checks the last twice-the-span characters every eighth
of a span of new text, with a Z-array (linear time), so it costs microseconds a token.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MIN_REPEATS", "MIN_SPAN", "Loop", "RepetitionGuard", "find_loop"]

#: Characters of exact repetition before a reply counts as a loop (about 500 tokens), unless
#: AUTOTUNE_RUNAWAY_CHARS says otherwise.
MIN_SPAN = 2048
#: The repeated block must come back at least this many times within the span.
MIN_REPEATS = 4


def window(min_span: int) -> int:
    """The tail of the reply that is examined (the longest block is this / MIN_REPEATS)."""
    return 2 * min_span


def check_every(min_span: int) -> int:
    """Characters of new text between two checks."""
    return max(16, min_span // 8)


@dataclass(frozen=True)
class Loop:
    """A reply's tail: a block of ``period`` characters repeated over ``span`` characters."""

    period: int
    span: int
    block: str

    @property
    def repeats(self) -> int:
        return self.span // self.period

    def describe(self) -> str:
        return (
            f"the same {self.period}-character text repeated {self.repeats} times "
            f"({self.span:,} characters)"
        )


def _z_array(s: str) -> list[int]:
    """``z[i]``: the length of the longest common prefix of ``s`` and ``s[i:]``."""
    n = len(s)
    z = [0] * n
    left = right = 0
    for i in range(1, n):
        if i < right:
            z[i] = min(right - i, z[i - left])
        while i + z[i] < n and s[z[i]] == s[i + z[i]]:
            z[i] += 1
        if i + z[i] > right:
            left, right = i, i + z[i]
    return z


def find_loop(text: str, min_span: int = MIN_SPAN, min_repeats: int = MIN_REPEATS) -> Loop | None:
    """The shortest block whose repetition makes up the end of ``text``, if it is a loop."""
    tail = text[-window(min_span) :]
    if len(tail) < min_span:
        return None
    reversed_tail = tail[::-1]  # a run at the end of text is a run at the start of this
    z = _z_array(reversed_tail)
    for period in range(1, len(tail) // min_repeats + 1):
        span = z[period] + period  # the end of text has this period for this long
        if span >= min_span and span >= period * min_repeats:
            return Loop(period, span, tail[-period:])
    return None


class RepetitionGuard:
    """Feed it a reply's text as it streams; :meth:`feed` returns the loop once there is one."""

    def __init__(self, min_span: int = MIN_SPAN, min_repeats: int = MIN_REPEATS) -> None:
        self.min_span = min_span
        self.min_repeats = min_repeats
        self._text = ""
        self._unchecked = 0

    def feed(self, piece: str) -> Loop | None:
        if not piece:
            return None
        self._text = (self._text + piece)[-window(self.min_span) :]
        self._unchecked += len(piece)
        if self._unchecked < check_every(self.min_span):
            return None
        self._unchecked = 0
        return find_loop(self._text, self.min_span, self.min_repeats)
