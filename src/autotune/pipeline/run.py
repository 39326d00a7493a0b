"""A started request: streams the chunks, stores the turn before the last byte, finishes itself.

:class:`ChatRun` is what :meth:`autotune.pipeline.Pipeline.start` returns once the engine's
first chunk is in. Iterating it yields the chunks; after the last one it stores the turn
(so a client that saw the end of a reply can count on it being on disk), and whatever way
it ends — done, failed, cancelled, closed early — it releases its admission place and
writes one telemetry record, exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import anyio

from autotune.ground.decision import Decision
from autotune.ground.errors import BackendError, error_summary
from autotune.ground.records import RunRecord
from autotune.ground.types import ChatRequest, Chunk, EngineStats
from autotune.hardware.os_tune import gc_paused
from autotune.hardware.sampler import Sampler
from autotune.pipeline.admission import Place
from autotune.pipeline.kv import Ticket
from autotune.pipeline.reply import Reply
from autotune.pipeline.runaway import RepetitionGuard
from autotune.tuning.planner import Plan

__all__ = ["ChatRun", "RunOwner", "Turn"]


@dataclass
class Turn:
    """What this request adds to its conversation, and whether to store it."""

    conversation_id: str | None
    #: The client's new messages (the reply is added when it is complete).
    new_messages: list[dict[str, Any]] = field(default_factory=list)
    persist: bool = False
    #: Conversation defaults for a conversation that does not exist yet.
    model: str = ""
    profile: str = ""


class RunOwner(Protocol):
    """What a run needs from the pipeline that started it."""

    sampler: Sampler

    def release(self, seconds: float, place: Place | None = None) -> None:
        """Give the admission place back."""

    async def commit(self, turn: Turn, reply: dict[str, Any]) -> None:
        """Store the turn; raises StorageError when it cannot."""

    def finished(self, run: ChatRun) -> None:
        """Telemetry and calibration, once the run's record is complete."""


class ChatRun:
    """A started request: iterate it for the engine's chunks (the first is already here)."""

    def __init__(
        self,
        owner: RunOwner,
        *,
        model: str,
        plan: Plan,
        request: ChatRequest,
        stream: AsyncIterator[Chunk],
        first: list[Chunk],
        record: RunRecord,
        started: float,
        turn: Turn,
    ) -> None:
        self.owner = owner
        self.model = model
        self.plan = plan
        self.request = request
        self.record = record
        self.turn = turn
        self.reply = Reply(started)
        self._stream = stream
        self._first = first
        self._started = started
        self._done = False
        self._last_text = ""
        #: The slot reserved for this run (engines with slots), released when it finishes.
        self.kv_ticket: Ticket | None = None
        #: Watches a reply with no token limit for the same text over and over.
        self._guard: RepetitionGuard | None = None
        #: The admission place this run holds (a background one may be asked to yield).
        self.place: Place | None = None
        #: Chunks streamed so far (one token each on llama.cpp).
        self.chunks = 0
        #: Called once the run has finished, whatever way it ended.
        self.on_finish: list[Callable[[], None]] = []
        #: Why the run must stop now (its time limit, the operator, a shutdown).
        self._stopping: BackendError | None = None
        #: The task waiting for the engine's next chunk, while it waits.
        self._reader: asyncio.Task[Any] | None = None

    # -- what the reply said so far

    @property
    def conversation_id(self) -> str | None:
        return self.turn.conversation_id

    @property
    def text(self) -> str:
        return self.reply.text

    @property
    def stats(self) -> EngineStats | None:
        return self.reply.stats

    @property
    def usage(self) -> dict[str, Any] | None:
        return self.reply.usage

    @property
    def finish_reason(self) -> str | None:
        return self.reply.finish_reason

    # -- streaming

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Chunk]:
        status, error = "ok", None
        try:
            with gc_paused():
                first, self._first = self._first, []
                for early in first:
                    self._add(early)
                    yield early
                while (chunk := await self._next()) is not None:
                    self._add(chunk)
                    yield chunk
                    stop = self._stop_reason()
                    if stop is not None:
                        yield self._stop(stop)
                        break
            await self._commit()  # before the caller sends its last byte
        except (asyncio.CancelledError, GeneratorExit):
            status = "cancelled"
            raise
        except Exception as exc:
            status, error = "error", error_summary(exc)
            raise
        finally:
            await self._finish(status, error)

    async def _next(self) -> Chunk | None:
        """The engine's next chunk (None: the stream ended); a stop asked meanwhile
        (:meth:`stop`) cancels the wait and is raised instead, the engine's generation
        cancelled with it."""
        if self._stopping is not None:
            raise self._stopping
        reader = self._reader = asyncio.current_task()
        try:
            return await anext(self._stream)
        except StopAsyncIteration:
            return None
        except (asyncio.CancelledError, Exception):
            if self._stopping is None or reader is None:
                raise  # the engine failed, the client went away, the task is cancelled
            # This run's own stop cancelled the wait (an engine stream may have turned the
            # cancel into an error of its own): the stop's error instead.
            if reader.cancelling():
                reader.uncancel()
            raise self._stopping from None
        finally:
            self._reader = None

    def stop(self, error: BackendError) -> None:
        """Stop the run with ``error``: raised into its stream (the face's error event) at
        once if it waits for the engine, else before its next chunk; nothing is stored."""
        if self._done or self._stopping is not None:
            return
        self._stopping = error
        if self._reader is not None:
            self._reader.cancel()

    async def aclose(self) -> None:
        """Stop the run early (the engine's generation is cancelled with the connection)."""
        if not self._done:
            await self._finish("cancelled", None)

    async def stop_early(self, keep_chars: int) -> None:
        """End the run where a face found a stop sequence: the reply keeps its first
        ``keep_chars`` characters, the engine's generation is stopped, the turn is stored and
        the run finishes as done (the engine's closing counters never arrive)."""
        if self._done:
            return
        self.reply.cut(keep_chars)
        status, error = "ok", None
        try:
            await self._commit()
        except Exception as exc:
            status, error = "error", error_summary(exc)
            raise
        finally:
            await self._finish(status, error)

    async def text_deltas(self) -> AsyncIterator[str]:
        """The reply's content as it streams, piece by piece (what a terminal renders)."""
        async for _ in self:
            if self._last_text:
                yield self._last_text

    def watch_runaway(self, min_span: int) -> None:
        """Stop the reply once ``min_span`` characters of it are one text repeated."""
        self._guard = RepetitionGuard(min_span)

    def _stop_reason(self) -> Decision | None:
        """Why the reply must end now: it repeats itself, or a person's turn waits for the
        place this background run holds. None: go on."""
        loop = self._guard.feed(self._last_text) if self._guard else None
        if loop is not None:
            return Decision("runaway", "stopped", f"{loop.describe()}: stopped")
        if self.place is not None and self.place.yield_now.is_set():
            return Decision("priority", "yielded", "a person's turn was waiting: stopped here")
        return None

    def _stop(self, decision: Decision) -> Chunk:
        """End the reply here, cut as by a token limit (``length``), the plan saying why. The
        engine's generation stops when its stream closes."""
        self.plan.decisions.append(decision)
        self.record.decisions.append(asdict(decision))
        self.record.plan = self.plan.summary()
        first = self.reply.first_chunk
        head: dict[str, Any] = {
            k: first[k] for k in ("id", "object", "created", "model") if k in first
        }
        final = Chunk({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]})
        self._add(final)
        return final

    def _add(self, chunk: Chunk) -> None:
        self.chunks += 1
        self._last_text = self.reply.add(chunk)
        if self.record.ttft_ms is None and self.reply.ttft_ms is not None:
            self.record.ttft_ms = self.reply.ttft_ms

    async def _commit(self) -> None:
        turn = self.turn
        if turn.persist and turn.conversation_id:
            await self.owner.commit(turn, self.reply.turn())

    async def _finish(self, status: str, error: str | None) -> None:
        if self._done:
            return
        self._done = True
        # Shielded: a client that went away cancels the task, but the slot, the engine
        # connection and the bookkeeping must still be released and written.
        with anyio.CancelScope(shield=True):
            try:
                await _close(self._stream)
            finally:  # even if a second cancel lands while the stream closes
                self.owner.release(time.monotonic() - self._started, self.place)
                self._complete_record(status, error)
                self.owner.finished(self)
                for hook in self.on_finish:
                    hook()

    def _complete_record(self, status: str, error: str | None) -> None:
        record = self.record
        record.status, record.error = status, error
        record.total_ms = (time.monotonic() - self._started) * 1000
        _engine_figures(record, self.reply.stats)
        _memory_figures(record, self.owner.sampler)


async def _close(stream: AsyncIterator[Chunk]) -> None:
    aclose: Callable[[], Awaitable[None]] | None = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


def _engine_figures(record: RunRecord, stats: EngineStats | None) -> None:
    if stats is None:
        return
    record.prompt_tokens = stats.prompt_tokens
    record.cached_tokens = stats.cached_tokens
    record.completion_tokens = stats.completion_tokens
    record.prompt_ms, record.decode_ms = stats.prompt_ms, stats.decode_ms
    if stats.load_ms is not None:  # else a load the pipeline ran ahead may have set it
        record.load_ms = stats.load_ms
    record.tokens_per_s = stats.decode_tps
    record.reloaded = True if record.reloaded else stats.reloaded  # a load ahead counts too
    record.engine_timings = dict(stats.raw)
    timings = stats.raw.get("timings") or {}  # llama.cpp counts speculative drafts here
    record.draft_tokens = timings.get("draft_n")
    record.draft_accepted = timings.get("draft_n_accepted")


def _memory_figures(record: RunRecord, sampler: Sampler) -> None:
    if not sampler.history:
        return
    window = sampler.since(record.started_at) or [sampler.latest]
    last = window[-1]
    record.ram_after = last.ram_total - last.ram_available
    record.ram_peak_fraction = max(s.ram_used_fraction for s in window)
    record.swap_delta = last.swap_used - window[0].swap_used
    gpu = [s.gpu_memory_used for s in window if s.gpu_memory_used is not None]
    record.gpu_memory_peak = max(gpu) if gpu else None
