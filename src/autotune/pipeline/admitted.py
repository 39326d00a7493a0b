"""Admission and telemetry for requests that are not a chat: embeddings, token counts, and the
operations (pull, unload) that touch an engine.

``async with admitted(pipeline, "count", model, engine) as record:`` waits for a place in the
admission FIFO like a chat turn (a 429 beyond the wait), holds it for the block, and leaves
one telemetry record (its status, queue and total time; an error's summary, never its text).
``admit="turn"`` takes its turn in the line and lets the place go at once: for work that
waits on something other than an engine's compute (a download), which must not stall every
chat. ``admit="none"``: telemetry only, for work that does not touch an engine at all.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from autotune.ground.errors import error_summary
from autotune.ground.records import RunRecord
from autotune.pipeline.pipeline import Pipeline

__all__ = ["admitted"]


@asynccontextmanager
async def admitted(
    pipeline: Pipeline,
    source: str,
    model: str,
    engine: str,
    *,
    admit: Literal["hold", "turn", "none"] = "hold",
) -> AsyncIterator[RunRecord]:
    """A place in the admission line for the block, and its telemetry record."""
    record = RunRecord(
        id="run_" + uuid.uuid4().hex[:12], model=model, backend=engine, profile="", source=source
    )
    queued = time.monotonic()
    if admit != "none":
        await pipeline.queue.acquire()
    started = time.monotonic()
    record.queue_ms = (started - queued) * 1000
    hold = admit == "hold"
    if admit == "turn":
        pipeline.queue.release()
    try:
        yield record
    except BaseException as exc:
        record.status = "error" if isinstance(exc, Exception) else "cancelled"
        record.error = error_summary(exc) if isinstance(exc, Exception) else None
        raise
    finally:
        if hold:
            pipeline.queue.release(time.monotonic() - started)
        record.total_ms = (time.monotonic() - started) * 1000
        pipeline.record(record)
