"""OS-side tuning: pause Python's cyclic GC while tokens stream, and set an engine's priority."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

__all__ = ["gc_paused", "set_priority"]

_paused = 0


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic garbage collector while at least one stream is running.

    A GC pass over a large heap can stall the event loop for milliseconds between two tokens.
    Reference counting still frees almost everything; the collector resumes (without a forced
    ``gc.collect()``) when the last stream ends.
    """
    global _paused
    _paused += 1
    if _paused == 1 and gc.isenabled():
        gc.disable()
    try:
        yield
    finally:
        _paused -= 1
        if _paused == 0:
            gc.enable()


def set_priority(pid: int, nice: int) -> str:
    """Set a process's scheduling priority; returns what happened, in a few words.

    On Linux and macOS this is the nice value (raising priority, i.e. a negative value,
    needs privileges); on Windows, a negative value maps to ABOVE_NORMAL_PRIORITY_CLASS.
    """
    try:
        proc = psutil.Process(pid)
        if sys.platform == "win32":
            cls = psutil.ABOVE_NORMAL_PRIORITY_CLASS if nice < 0 else psutil.NORMAL_PRIORITY_CLASS
            proc.nice(cls)
            return "priority class set"
        if proc.nice() == nice:
            return f"nice {nice} already"
        proc.nice(nice)
        return f"nice {nice} applied"
    except psutil.AccessDenied:
        return f"nice {nice} not permitted (needs privileges)"
    except psutil.Error as exc:
        return f"priority unchanged ({type(exc).__name__})"
