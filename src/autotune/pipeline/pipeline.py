"""The request pipeline: admission, then gather → decide → act, for every face alike.

The server's faces, the terminal chat, the proof and the benchmarks all call
:meth:`Pipeline.start`; nothing about a request is decided anywhere else. In order:

1. **validate and resolve**: the profile, the model's engine, the stored conversation;
2. **admission**: a FIFO with a bounded wait (429 beyond it), owned here;
3. **gather**: one immutable :class:`~autotune.pipeline.gather.Snapshot` of engine and
   machine state (:mod:`.gather`), the only I/O before deciding;
4. **decide**: :func:`~autotune.pipeline.decide.decide`, pure — load settings, sampling
   defaults, context fit, overflow — each choice with its reason;
5. **act**: remember the load settings, open the engine stream, wait for its first chunk.

``start`` returns at the first chunk, so an error (unknown model, full queue, engine down,
no memory, a message that cannot fit) surfaces with a real status before any byte is sent.
The returned :class:`~autotune.pipeline.run.ChatRun` streams the rest, stores the turn before
the last byte and records telemetry. Planning happens after admission, so a queued request
is planned against the engine state it will meet.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import re
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from autotune.backends.base import Backend
from autotune.backends.registry import BackendSet
from autotune.context.tokens import TokenEstimator
from autotune.context.window import ContextWindow
from autotune.ground.config import Settings
from autotune.ground.errors import (
    BackendError,
    ModelNotFound,
    StorageError,
    UpstreamError,
    error_summary,
    storage_failure,
)
from autotune.ground.records import RunRecord
from autotune.ground.types import ChatRequest, LoadSettings
from autotune.hardware.sampler import Sampler
from autotune.pipeline.admission import AdmissionQueue, Place, is_background
from autotune.pipeline.conversation import CompactionMemory, ConversationView, read_conversation
from autotune.pipeline.decide import Decided, RequestFacts, decide
from autotune.pipeline.gather import Gatherer, TunedLookup
from autotune.pipeline.inputs import ChatInput, Opener, validate
from autotune.pipeline.kv import KvManager, Prompt, preview_of
from autotune.pipeline.run import ChatRun, Turn
from autotune.pipeline.running import RunningRequests
from autotune.pipeline.state import EngineState
from autotune.store.conversations import ConversationStore
from autotune.tuning.kv import engine_reuse
from autotune.tuning.planner import Plan

__all__ = ["ChatInput", "ChatRun", "Observer", "Opener", "Pipeline", "TunedLookup"]

Observer = Callable[[RunRecord], Awaitable[None] | None]
#: Above this many messages a context fit (0.1-0.4 s) runs off the event loop.
_FIT_IN_THREAD = 40
#: llama.cpp's answer to a prompt over its context (HTTP 400 exceed_context_size_error).
_ENGINE_CONTEXT_FULL = re.compile(r"exceeds the available context size", re.IGNORECASE)


class Pipeline:
    """Runs chat requests through every step, for the server and the terminal chat alike."""

    def __init__(
        self,
        backends: BackendSet,
        settings: Settings,
        *,
        store: ConversationStore | None = None,
        queue: AdmissionQueue | None = None,
        sampler: Sampler | None = None,
        observers: list[Observer] | None = None,
        threads: int | None = None,
        vram_total: int = 0,
        tuned: TunedLookup | None = None,
        window: ContextWindow | None = None,
        kv: KvManager | None = None,
    ) -> None:
        self.backends = backends
        #: Keeps conversations' KV caches in slots and on disk (engines with slots).
        self.kv = kv
        self.store = store
        self.queue = queue or AdmissionQueue(
            settings.max_concurrent, settings.max_queued, settings.wait_timeout
        )
        self.sampler = sampler or Sampler()
        self.observers: list[Observer] = list(observers or [])
        #: Called with a conversation id after its turn is stored (memory indexing hooks here).
        self.after_store: list[Callable[[str], None]] = []
        #: Fits long conversations into the context, keeping the prompt prefix cache-stable.
        self.window = window if window is not None else ContextWindow()
        self.compactions = CompactionMemory()
        self.tokens = TokenEstimator()
        #: What autotune knows about each engine's models (sticky settings included).
        self.state = EngineState()
        self.gatherer = Gatherer(
            settings,
            self.state,
            self.tokens,
            self.sampler,
            threads=threads,
            vram_total=vram_total,
            tuned=tuned,
            concurrency=lambda: self.queue.max_concurrent,
        )
        self.recent: list[RunRecord] = []
        #: The requests running now, each stopped at AUTOTUNE_MAX_REQUEST_SECONDS.
        self.running = RunningRequests(settings.max_request_seconds)
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def settings(self) -> Settings:
        return self.gatherer.settings

    @settings.setter
    def settings(self, value: Settings) -> None:
        self.gatherer.settings = value

    # ------------------------------------------------------------------ public

    async def start(self, inp: ChatInput) -> ChatRun:
        """Everything up to the engine's first chunk; raises BackendError with a real status."""
        profile, overflow = validate(inp, self.settings.profile)
        asked = inp.model or self.settings.default_model
        backend, name = await self.backends.resolve(asked)
        view = await read_conversation(self.store, inp.conversation_id, inp.messages)
        record = RunRecord(
            id="run_" + uuid.uuid4().hex[:12],
            model=name,
            backend=backend.name,
            profile=profile.name,
            source=inp.source,
            conversation_id=view.conversation_id,
        )
        if self.sampler.history:
            record.ram_before = self.sampler.latest.ram_total - self.sampler.latest.ram_available
        queued_at = time.monotonic()
        background = is_background(inp.streamed, inp.params)
        place = await self.queue.acquire(background)
        record.queue_ms = (time.monotonic() - queued_at) * 1000
        started = time.monotonic()
        try:
            facts = RequestFacts(
                profile,
                view.messages,
                inp.params,
                overflow,
                min_context=inp.min_context,
                keep_alive=inp.keep_alive,
                background=background,
                runaway_chars=self.settings.runaway_chars,
                cap_max_tokens=inp.cap_max_tokens,
                max_reply_tokens=self.settings.max_reply_tokens,
            )
            for attempt in (1, 2):
                decided = await self._decide(backend, name, facts, view.conversation_id, record)
                decided.plan.decisions.extend(inp.notes)
                try:
                    run = await self._act(backend, name, inp, view, decided, record, started)
                    run.place = place
                    if run.plan.last("runaway") is not None:
                        run.watch_runaway(facts.runaway_chars)
                    return run
                except UpstreamError as exc:
                    # The engine counted more tokens than the estimate that sized its
                    # context; it is loaded now, so the next gather counts exactly.
                    if attempt == 2 or not _ENGINE_CONTEXT_FULL.search(exc.message):
                        raise
            raise AssertionError("unreachable")
        except BaseException as exc:
            self.queue.release(time.monotonic() - started, place)
            self._failed(record, exc, asked)
            raise

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ steps

    async def _decide(
        self,
        backend: Backend,
        model: str,
        facts: RequestFacts,
        conversation_id: str | None,
        record: RunRecord,
    ) -> Decided:
        """Gather the snapshot and decide; once more after loading if counts were estimates."""
        key = self.compactions.key(backend.name, model, conversation_id, facts.messages)
        for _ in range(2):
            snap = await self.gatherer.gather(
                backend, model, facts.profile, facts.messages, self.compactions.get(key)
            )
            if len(facts.messages) > _FIT_IN_THREAD:
                decided = await asyncio.to_thread(decide, facts, snap, self.window)
            else:
                decided = decide(facts, snap, self.window)
            if not decided.recount or decided.plan.load is None:
                break
            # The estimate said "too long"; the engine can count exactly once the model is
            # loaded: load it (as the plan would), then count and decide again.
            await self._load(backend, model, decided.plan.load, record)
        self.compactions.put(key, decided.compaction)
        return decided

    async def _act(
        self,
        backend: Backend,
        model: str,
        inp: ChatInput,
        view: ConversationView,
        decided: Decided,
        record: RunRecord,
        started: float,
    ) -> ChatRun:
        plan = decided.plan
        request = ChatRequest(
            model,
            decided.messages,
            {**plan.params, **inp.params, **decided.capped},  # the client's values win
            plan.load,
            plan.keep_alive,
            conversation_id=view.conversation_id,
        )
        ticket = None
        if self.kv is not None and backend.capabilities.slots:
            if plan.load is not None:  # first, so the slots pinned are the ones it will meet
                await self._load(backend, model, plan.load, record)
            ticket = await self.kv.pin(backend, model, plan, self._prompt(model, inp, request))
            if ticket is not None and ticket.plan.slot is not None:
                request.params["id_slot"] = ticket.plan.slot  # llama.cpp: run on this slot
        try:
            run = await self._open(backend, model, inp, view, plan, request, record, started)
        except BaseException:
            if ticket is not None and self.kv is not None:
                self.kv.release(ticket, None, ok=False)
            raise
        run.kv_ticket = ticket
        return run

    def _prompt(self, model: str, inp: ChatInput, request: ChatRequest) -> Prompt:
        """What the KV manager looks up: the prompt, and an estimate of its tokens (so
        short prompts cost no engine round trip)."""
        estimate = self.tokens.count(model, request.messages) if inp.kv_lookup else 0
        return Prompt(
            request,
            estimate,
            raw=inp.raw_prompt,
            conversation=request.conversation_id,
            preview=preview_of(request.messages, inp.raw_prompt),
        )

    async def _open(
        self,
        backend: Backend,
        model: str,
        inp: ChatInput,
        view: ConversationView,
        plan: Plan,
        request: ChatRequest,
        record: RunRecord,
        started: float,
    ) -> ChatRun:
        """Open the engine stream and wait for its first chunk."""
        record.plan = plan.summary()
        record.decisions = [asdict(d) for d in plan.decisions]
        record.n_ctx = plan.context_limit
        if plan.load is not None:
            # Sticky from the moment the engine is asked to load: a request that then fails
            # must not make the next one reload back (issue: 3 failures gave 6 reloads).
            self.state.remember_load(backend, model, plan.load)
        stream = inp.opener(backend, request) if inp.opener else backend.stream_chat(request)
        try:
            first = [await stream.__anext__()]
        except StopAsyncIteration:
            raise UpstreamError(
                502, "the engine closed the stream without a reply", backend.name
            ) from None
        await self._set_priority(backend, model, plan.nice, plan.reload_expected)
        persist = inp.persist if inp.persist is not None else view.conversation_id is not None
        turn = Turn(
            view.conversation_id,
            view.new_messages,
            persist=persist and not view.retry,
            model=model,
            profile=plan.profile,
        )
        return ChatRun(
            self,
            model=model,
            plan=plan,
            request=request,
            stream=stream,
            first=first,
            record=record,
            started=started,
            turn=turn,
        )

    async def _load(
        self, backend: Backend, model: str, settings: LoadSettings, record: RunRecord
    ) -> None:
        """Load ahead of the engine stream; the record keeps that this request paid for it."""
        self.state.remember_load(backend, model, settings)
        began = time.monotonic()
        if await backend.load(model, settings):
            record.reloaded, record.load_ms = True, (time.monotonic() - began) * 1000

    async def _set_priority(self, backend: Backend, model: str, nice: int, reloaded: bool) -> None:
        """The engine process's OS priority, once per load rather than on every request."""
        if not nice or (not reloaded and self.state.priority(backend, model) == nice):
            return
        with contextlib.suppress(BackendError):
            if await backend.set_priority(model, nice) is not None:
                self.state.remember_priority(backend, model, nice)

    def _failed(self, record: RunRecord, exc: BaseException, asked: str) -> None:
        if isinstance(exc, ModelNotFound):
            self.backends.forget(asked)  # the engine no longer has it: resolve afresh
        if isinstance(exc, Exception):
            record.status, record.error = "error", error_summary(exc)
            self._notify(record)
        elif isinstance(exc, asyncio.CancelledError):
            record.status = "cancelled"  # the client left during the load or the prefill
            self._notify(record)

    # ------------------------------------------------------------------ what runs call

    def release(self, seconds: float, place: Place | None = None) -> None:
        self.queue.release(seconds, place)

    async def commit(self, turn: Turn, reply: dict[str, Any]) -> None:
        """Store a finished turn (creating its conversation on the first one)."""
        assert turn.conversation_id is not None
        if self.store is None:
            return
        store, conv_id = self.store, turn.conversation_id

        def write() -> None:
            store.ensure(conv_id, model=turn.model, profile=turn.profile)
            store.append(conv_id, [*turn.new_messages, reply])

        try:
            await asyncio.to_thread(write)
        except (sqlite3.Error, OSError) as exc:
            raise storage_failure(exc, "The reply") or StorageError(
                f"The reply could not be stored ({type(exc).__name__})."
            ) from None
        for hook in self.after_store:
            hook(conv_id)

    def finished(self, run: ChatRun) -> None:
        stats = run.stats
        if stats is not None and stats.prompt_tokens:
            self.tokens.observe(run.model, run.request.messages, stats.prompt_tokens)
        if run.kv_ticket is not None and self.kv is not None:
            run.record.kv = self.kv.release(run.kv_ticket, stats, run.record.status == "ok")
            run.record.kv_bytes = run.kv_ticket.saved_bytes or None
        if stats is not None:  # the plan ends with what the engine reused, by its own count
            run.plan.decisions.extend(
                engine_reuse(run.record.kv, stats.cached_tokens, stats.prompt_tokens)
            )
        self._notify(run.record)

    def record(self, record: RunRecord) -> None:
        """Report a finished request that is not a chat run (embeddings) to the observers."""
        self._notify(record)

    def _notify(self, record: RunRecord) -> None:
        self.recent.append(record)
        del self.recent[:-200]
        for observer in self.observers:
            try:
                result = observer(record)
            except Exception:  # an observer must never break a request
                continue
            if inspect.isawaitable(result):
                self._spawn(result)

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
