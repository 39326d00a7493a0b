"""The request pipeline: conversation → admission → plan → context fit → engine → telemetry → store.

The server and the terminal chat both call :meth:`Pipeline.start`; nothing about a request
is decided anywhere else. ``start`` does everything up to the engine's first chunk, so an
error (unknown model, full queue, engine down, no memory) surfaces as an exception with a
real status before any byte is sent. The returned :class:`ChatRun` streams the rest and,
when it ends, records telemetry and stores the turn.

Planning happens after admission, so a queued request is planned against the engine state
it will actually meet (a request ahead of it may have grown the context).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio

from autotune.backends.base import Backend
from autotune.backends.registry import BackendSet
from autotune.context.tokens import TokenEstimator
from autotune.context.window import CompactionState, ContextOverflow, ContextWindow
from autotune.ground.config import Settings
from autotune.ground.decision import Decision
from autotune.ground.errors import (
    BackendError,
    InsufficientMemory,
    InvalidRequest,
    ModelNotFound,
    NotSupported,
    UpstreamError,
    error_summary,
)
from autotune.ground.profiles import Profile, get_profile
from autotune.ground.records import RunRecord
from autotune.ground.tuned import TunedSettings
from autotune.ground.types import ChatRequest, Chunk, EngineStats, LoadSettings, ModelMeta
from autotune.hardware.os_tune import gc_paused
from autotune.hardware.profile import safety_reserve, vram_reserve
from autotune.hardware.sampler import Sampler
from autotune.models.estimate import load_estimate
from autotune.pipeline.admission import AdmissionQueue
from autotune.store.conversations import ConversationStore, content_text
from autotune.tuning.planner import (
    CONTEXT_MARGIN,
    DEFAULT_OUTPUT_RESERVE,
    MemoryState,
    Plan,
    PlanInput,
    context_need,
    plan,
)

__all__ = ["ChatInput", "ChatRun", "Pipeline"]

Observer = Callable[["RunRecord"], Awaitable[None] | None]
#: Returns measured load-time settings for (backend, model, profile), or None.
TunedLookup = Callable[[str, str, str], TunedSettings | None]


@dataclass
class ChatInput:
    """One chat request as a client put it."""

    messages: list[dict[str, Any]]
    model: str | None = None
    #: OpenAI fields other than model/messages/stream (never None values).
    params: dict[str, Any] = field(default_factory=dict)
    profile: str | None = None
    conversation_id: str | None = None
    #: Store this turn in the conversation (defaults to: a conversation id was given).
    persist: bool | None = None
    source: str = "api"


class ChatRun:
    """A started request: iterate it for the engine's chunks (the first is already here)."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        backend: Backend,
        model: str,
        plan: Plan,
        request: ChatRequest,
        stream: AsyncIterator[Chunk],
        first: list[Chunk],
        record: RunRecord,
        started: float,
        new_messages: list[dict[str, Any]],
        persist: bool,
    ) -> None:
        self.pipeline = pipeline
        self.backend = backend
        self.model = model
        self.plan = plan
        self.request = request
        self.record = record
        self.conversation_id = record.conversation_id
        self.stats: EngineStats | None = None
        self.usage: dict[str, Any] | None = None
        self.text = ""
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self._stream = stream
        self._first: list[Chunk] = first
        self._started = started
        self._new_messages = new_messages
        self._persist = persist
        self._done = False

    def __aiter__(self) -> AsyncIterator[Chunk]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Chunk]:
        status, error = "ok", None
        try:
            with gc_paused():
                first, self._first = self._first, []
                for chunk in first:
                    self._see(chunk)
                    yield chunk
                async for chunk in self._stream:
                    self._see(chunk)
                    yield chunk
        except BackendError as exc:
            status, error = "error", error_summary(exc)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            status = "cancelled"
            raise
        except Exception as exc:
            status, error = "error", error_summary(exc)
            raise
        finally:
            await self._finish(status, error)

    async def aclose(self) -> None:
        """Stop the run early (the engine's generation is cancelled with the connection)."""
        if not self._done:
            await self._finish("cancelled", None)

    def _see(self, chunk: Chunk) -> None:
        data = chunk.data
        for choice in data.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("content"):
                if not self.text and self.record.ttft_ms is None:
                    self.record.ttft_ms = (time.monotonic() - self._started) * 1000
                self.text += delta["content"]
            for call in delta.get("tool_calls") or ():
                slot = self.tool_calls.setdefault(
                    call.get("index", 0),
                    {
                        "id": None,
                        "type": "function",
                        "function": {"name": "", "arguments": ""},
                    },
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                fn = call.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
                if self.record.ttft_ms is None:
                    self.record.ttft_ms = (time.monotonic() - self._started) * 1000
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if data.get("usage"):
            self.usage = data["usage"]
        if chunk.stats is not None:
            self.stats = chunk.stats

    async def _finish(self, status: str, error: str | None) -> None:
        if self._done:
            return
        self._done = True
        # Shielded: a client that went away cancels the task, but the slot, the engine
        # connection and the bookkeeping must still be released and written.
        with anyio.CancelScope(shield=True):
            try:
                aclose = getattr(self._stream, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
            finally:  # even if a second cancel lands while the stream closes
                self.pipeline.queue.release(time.monotonic() - self._started)
                self.pipeline._complete(self, status, error)


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
    ) -> None:
        self.backends = backends
        self.settings = settings
        self.store = store
        self.queue = queue or AdmissionQueue(
            settings.max_concurrent, settings.max_queued, settings.wait_timeout
        )
        self.sampler = sampler or Sampler()
        self.observers: list[Observer] = list(observers or [])
        #: Called with a conversation id after its turn is stored (memory indexing hooks here).
        self.after_store: list[Callable[[str], None]] = []
        self.threads = threads
        #: Total memory of discrete GPUs (unified memory is already in RAM).
        self.vram_total = vram_total
        self.tuned = tuned
        #: Fits long conversations into the context, keeping the prompt prefix cache-stable.
        self.window = window if window is not None else ContextWindow()
        #: The last compaction per conversation: between compactions only appends happen.
        self._compaction: OrderedDict[str, CompactionState] = OrderedDict()
        self.tokens = TokenEstimator()
        #: The sticky load settings per (engine, model): the context never shrinks while loaded.
        self.sticky: dict[tuple[str, str], LoadSettings] = {}
        self._meta: dict[tuple[str, str], ModelMeta | None] = {}
        self._engine_ctx: dict[tuple[str, str], tuple[float, int | None]] = {}
        self._priority: dict[tuple[str, str], int] = {}
        self._running: dict[tuple[str, str], tuple[float, bool]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.recent: list[RunRecord] = []

    # ------------------------------------------------------------------ public

    async def start(self, inp: ChatInput) -> ChatRun:
        """Everything up to the engine's first chunk; raises BackendError with a real status."""
        if not inp.messages:
            raise InvalidRequest("messages must hold at least one message.", param="messages")
        try:
            profile = get_profile(inp.profile or self.settings.profile)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="X-Autotune-Profile") from None
        model = inp.model or self.settings.default_model
        backend, name = await self.backends.resolve(model)
        history, new_messages, conv_id, retry = await self._conversation(inp, name, profile)
        messages = history + new_messages
        persist = inp.persist if inp.persist is not None else conv_id is not None
        persist = persist and not retry
        record = RunRecord(
            id="run_" + uuid.uuid4().hex[:12],
            model=name,
            backend=backend.name,
            profile=profile.name,
            source=inp.source,
            conversation_id=conv_id,
        )
        if self.sampler.history:
            record.ram_before = self.sampler.latest.ram_total - self.sampler.latest.ram_available
        queued_at = time.monotonic()
        await self.queue.acquire()
        record.queue_ms = (time.monotonic() - queued_at) * 1000
        started = time.monotonic()
        try:
            the_plan, messages = await self._plan(
                backend, name, profile, inp.params, messages, conv_id
            )
            record.plan = the_plan.summary()
            record.decisions = [asdict(d) for d in the_plan.decisions]
            record.n_ctx = the_plan.context_limit
            params = {**the_plan.params, **inp.params}  # the client's own values win
            request = ChatRequest(
                name, messages, params, the_plan.load, the_plan.keep_alive, conversation_id=conv_id
            )
            stream = backend.stream_chat(request)
            try:
                first = [await stream.__anext__()]
            except StopAsyncIteration:
                raise UpstreamError(
                    502, "the engine closed the stream without a reply", backend.name
                ) from None
        except BaseException as exc:
            self.queue.release(time.monotonic() - started)
            if isinstance(exc, ModelNotFound):
                self.backends.forget(model)  # the engine no longer has it: resolve afresh
            if isinstance(exc, Exception):
                record.status, record.error = "error", error_summary(exc)
                self._notify(record)
            elif isinstance(exc, asyncio.CancelledError):
                record.status = "cancelled"  # the client left during the load or the prefill
                self._notify(record)
            raise
        if the_plan.load is not None:
            self.sticky[(backend.name, name)] = the_plan.load
        key = (backend.name, name)
        if the_plan.nice and (the_plan.reload_expected or self._priority.get(key) != the_plan.nice):
            with contextlib.suppress(BackendError):  # once per load, not on every request
                if await backend.set_priority(name, the_plan.nice) is not None:
                    self._priority[key] = the_plan.nice
        return ChatRun(
            self,
            backend=backend,
            model=name,
            plan=the_plan,
            request=request,
            stream=stream,
            first=first,
            record=record,
            started=started,
            new_messages=new_messages,
            persist=persist,
        )

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ------------------------------------------------------------------ steps

    async def _conversation(
        self, inp: ChatInput, model: str, profile: Profile
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str | None, bool]:
        """(stored history, the new messages, conversation id, a retry of a stored turn).

        With a conversation id the stored turns come first. A client that resends the whole
        history (as most OpenAI clients do) is recognised: messages matching the stored
        prefix are not stored twice.
        """
        if not inp.conversation_id or self.store is None:
            return [], list(inp.messages), inp.conversation_id if self.store else None, False
        store = self.store
        conv = await asyncio.to_thread(
            store.ensure, inp.conversation_id, model=model, profile=profile.name
        )
        stored = [m.as_openai() for m in await asyncio.to_thread(store.messages, conv.id)]
        system = [{"role": "system", "content": conv.system}] if conv.system else []
        incoming = list(inp.messages)
        if incoming and incoming[0].get("role") == "system" and system:
            system = [incoming.pop(0)]  # the client's system prompt replaces the stored one
        n, k = len(stored), len(incoming)
        if n and k > n and _same_turns(incoming[:n], stored):
            incoming = incoming[n:]
        elif 1 < k <= n and incoming[-1].get("role") == "user" and _same_turns(incoming, stored):
            # A retry of a turn already stored (the client gave up waiting): answer it again
            # from the history before it, and store nothing twice.
            return system + stored[: k - 1], incoming[-1:], conv.id, True
        return system + stored, incoming, conv.id, False

    async def _plan(
        self,
        backend: Backend,
        model: str,
        profile: Profile,
        params: Mapping[str, Any],
        messages: list[dict[str, Any]],
        conversation_id: str | None = None,
    ) -> tuple[Plan, list[dict[str, Any]]]:
        meta = await self._model_meta(backend, model)
        key = (backend.name, model)
        current = self.sticky.get(key)
        loaded = await self._is_loaded(backend, model, current)
        max_tokens = params.get("max_completion_tokens") or params.get("max_tokens")
        need = context_need(self.tokens.count(model, messages), max_tokens)
        the_plan = plan(
            PlanInput(
                profile=profile,
                capabilities=backend.capabilities,
                meta=meta,
                need_tokens=need,
                current=current,
                loaded=loaded,
                memory=self._memory(backend, model),
                client_params=params,
                keep_alive=self.settings.keep_alive,
                threads=self.threads,
                tuned=self.tuned(backend.name, model, profile.name) if self.tuned else None,
                estimator=load_estimate if meta and meta.block_count else None,
            )
        )
        if the_plan.refused:
            raise InsufficientMemory(the_plan.refused)
        limit = the_plan.context_limit
        if limit is None:  # an engine that sizes its own context (vLLM, llama-server, mlx …)
            limit = await self._engine_context(backend, model, meta)
        if self.window is not None and limit is not None:
            messages = await self._fit(
                backend, model, messages, limit, max_tokens, conversation_id, the_plan
            )
        return the_plan, messages

    async def _fit(
        self,
        backend: Backend,
        model: str,
        messages: list[dict[str, Any]],
        limit: int,
        max_tokens: Any,
        conversation_id: str | None,
        the_plan: Plan,
    ) -> list[dict[str, Any]]:
        """Fit the conversation into the context with the cache-stable window."""
        assert self.window is not None
        reserve = int(max_tokens) if max_tokens else DEFAULT_OUTPUT_RESERVE
        budget = max(256, limit - reserve - CONTEXT_MARGIN)
        if self.tokens.count(model, messages) > budget // 2:
            await self._learn_counts(backend, model, messages)  # exact counts matter from here
        key = conversation_id or _conversation_key(backend.name, model, messages)
        state = self._compaction.get(key)

        def count(ms: list[dict[str, Any]]) -> int:
            return self.tokens.count(model, ms)

        try:
            if len(messages) > 40:  # a compaction can take 0.1-0.4 s: not on the event loop
                result = await asyncio.to_thread(self.window.fit, messages, budget, count, state)
            else:
                result = self.window.fit(messages, budget, count, state)
        except ContextOverflow as exc:
            raise InvalidRequest(
                f"The newest message needs about {exc.needed} tokens, but only {exc.budget} "
                f"fit in the {limit}-token context after the reply's {reserve}.",
                param="messages",
            ) from None
        if result.state is not None:
            self._compaction[key] = result.state
            self._compaction.move_to_end(key)
            while len(self._compaction) > 1000:
                self._compaction.popitem(last=False)
        else:
            self._compaction.pop(key, None)
        how = "compacted now" if result.compacted else "append-only"
        the_plan.decisions.append(
            Decision("context", result.tier, f"{how}: {result.tokens} of {budget} prompt tokens")
        )
        return result.messages

    async def _learn_counts(
        self, backend: Backend, model: str, messages: list[dict[str, Any]]
    ) -> None:
        """Exact per-message token counts from the engine's tokenizer, when it has one loaded."""
        if not backend.capabilities.tokenize:
            return
        texts = self.tokens.unknown(model, messages)
        if len(texts) > 64:
            return  # a long history seen for the first time: the estimate will do this once
        for text in texts:
            try:
                tokens = await backend.tokenize(model, text)
            except BackendError:
                return  # not loaded yet: estimate this time
            self.tokens.learn(model, text, len(tokens))

    async def _engine_context(
        self, backend: Backend, model: str, meta: ModelMeta | None
    ) -> int | None:
        """The context the engine holds for ``model`` (it reports it), else its trained length."""
        key = (backend.name, model)
        cached = self._engine_ctx.get(key)
        if cached is not None and time.monotonic() - cached[0] < 60:
            return cached[1]
        n_ctx: int | None = None
        if backend.capabilities.running_models:
            with contextlib.suppress(BackendError):
                for running in await backend.running_models():
                    if running.name == model and running.context_length:
                        n_ctx = running.context_length
        if n_ctx is None and meta is not None:
            n_ctx = meta.context_length
        self._engine_ctx[key] = (time.monotonic(), n_ctx)
        return n_ctx

    async def _model_meta(self, backend: Backend, model: str) -> ModelMeta | None:
        key = (backend.name, model)
        if key not in self._meta:
            try:
                self._meta[key] = await backend.model_meta(model)
            except NotSupported:
                self._meta[key] = None
        return self._meta[key]

    async def _is_loaded(self, backend: Backend, model: str, current: LoadSettings | None) -> bool:
        if current is None:
            return False
        try:
            return backend.loaded_settings(model) == current  # the engine autotune loads
        except NotSupported:
            pass
        if not backend.capabilities.running_models:
            return True  # cannot tell: assume it is, so the plan never forces a change
        key = (backend.name, model)
        cached = self._running.get(key)
        if cached is not None and time.monotonic() - cached[0] < 2.0:
            return cached[1]  # an engine round trip per request is not worth it
        try:
            running = await backend.running_models()
        except BackendError:
            return True
        loaded = any(r.name == model for r in running)
        self._running[key] = (time.monotonic(), loaded)
        return loaded

    def _memory(self, backend: Backend, model: str) -> MemoryState | None:
        """Memory a new load may use: free RAM (less the reserve) and free VRAM (less its
        reserve, as the budget counts it), plus what the engine would free by unloading idle
        models — it does that before a load, so the guard must not refuse on their account."""
        if backend.capabilities.remote:
            return None
        sample = self.sampler.latest
        available = sample.ram_available - safety_reserve(sample.ram_total)
        if self.vram_total:
            used = sample.gpu_memory_used if sample.gpu_memory_used is not None else 0
            available += max(0, self.vram_total - used - vram_reserve(self.vram_total))
        budget = self.settings.memory_budget
        if budget is not None:
            available = min(available, budget)
        available += backend.reclaimable_bytes(model)
        return MemoryState(available=max(0, available), used_fraction=sample.ram_used_fraction)

    # ------------------------------------------------------------------ completion

    def _complete(self, run: ChatRun, status: str, error: str | None) -> None:
        record = run.record
        record.status, record.error = status, error
        record.total_ms = (time.monotonic() - run._started) * 1000
        stats = run.stats
        if stats is not None:
            record.prompt_tokens = stats.prompt_tokens
            record.cached_tokens = stats.cached_tokens
            record.completion_tokens = stats.completion_tokens
            record.prompt_ms, record.decode_ms, record.load_ms = (
                stats.prompt_ms,
                stats.decode_ms,
                stats.load_ms,
            )
            record.tokens_per_s = stats.decode_tps
            record.reloaded = stats.reloaded
            record.engine_timings = dict(stats.raw)
            if stats.prompt_tokens:
                self.tokens.observe(run.model, run.request.messages, stats.prompt_tokens)
        if self.sampler.history:
            window = self.sampler.since(record.started_at) or [self.sampler.latest]
            last = window[-1]
            record.ram_after = last.ram_total - last.ram_available
            record.ram_peak_fraction = max(s.ram_used_fraction for s in window)
            record.swap_delta = last.swap_used - window[0].swap_used
            gpu = [s.gpu_memory_used for s in window if s.gpu_memory_used is not None]
            record.gpu_memory_peak = max(gpu) if gpu else None
        if status == "ok" and run._persist and run.conversation_id and self.store is not None:
            reply: dict[str, Any] = {"role": "assistant", "content": run.text}
            if run.tool_calls:
                reply["tool_calls"] = [run.tool_calls[i] for i in sorted(run.tool_calls)]
            if record.completion_tokens:
                reply["tokens"] = record.completion_tokens
            self._spawn(self._store_turn(run.conversation_id, [*run._new_messages, reply]))
        self._notify(record)

    async def _store_turn(self, conversation_id: str, messages: list[dict[str, Any]]) -> None:
        assert self.store is not None
        await asyncio.to_thread(self.store.append, conversation_id, messages)
        for hook in self.after_store:
            hook(conversation_id)

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


def _conversation_key(engine: str, model: str, messages: list[dict[str, Any]]) -> str:
    """A key for a client that resends its whole history: its system prompt and first turn."""
    head = [m for m in messages if m.get("role") in ("system", "developer")][:1]
    head += [m for m in messages if m.get("role") == "user"][:1]
    digest = hashlib.sha1(json.dumps(head, sort_keys=True, default=str).encode()).hexdigest()
    return f"{engine}:{model}:{digest[:16]}"


def _same_turns(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """``a`` matches the start of ``b`` turn by turn (role and text; parts flattened)."""

    def norm(m: Mapping[str, Any]) -> tuple[str, str]:
        return str(m.get("role")), content_text(m.get("content")).strip()

    return len(a) <= len(b) and all(norm(x) == norm(y) for x, y in zip(a, b, strict=False))
