"""The router backend: one Backend in front of several engines, sending each request to one of them.

The choice itself is :func:`autotune.backends.routing.choose_upstream` (pure); this module does
the I/O around it: it counts autotune's requests in flight per upstream and holds each to its
limit (a request waits in the router while every upstream of its model is full), reads each
engine's load through :mod:`autotune.backends.metrics_adapters` (and a llama-server's slots
from ``/props``), keeps recent readings so rates cover a recent window, discovers the models
an upstream serves when the config does not list them, fails a request over to another
upstream when the chosen one refuses the connection or answers 5xx before its first token, and
cools a failed upstream down until a background prober (started lazily inside the running
event loop) finds it healthy again. A failure after the first token cannot be retried unseen
and is passed on. Chats, text completions and embeddings all take this path.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import itertools
import logging
import os
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from autotune.backends.base import Backend
from autotune.backends.metrics_adapters import LOAD_PATHS, EngineLoad, parse_load, window_rates
from autotune.backends.openai_compat import transport_detail
from autotune.backends.router_config import RouterConfig, UpstreamConfig, load_router_config
from autotune.backends.routing import (
    Choice,
    UpstreamView,
    affinity_key,
    all_full,
    choose_upstream,
    external_load,
    model_name_on,
    servers_of,
    upstream_limit,
)
from autotune.ground.config import Settings
from autotune.ground.engines import EngineSpec
from autotune.ground.errors import (
    BackendError,
    EngineUnavailable,
    ModelNotFound,
    NotSupported,
    UpstreamError,
    error_summary,
)
from autotune.ground.types import (
    Capabilities,
    ChatRequest,
    Chunk,
    CompletionRequest,
    ModelEntry,
    ModelMeta,
    RunningModel,
)

__all__ = ["RouterBackend", "Upstream", "from_settings", "make_upstream_backend"]

log = logging.getLogger(__name__)

#: Conversations remembered for affinity; the least recently used are forgotten first.
_MAX_PINS = 10_000

#: Flags where one upstream's limit binds the whole router (any True makes it True).
_ANY_FLAGS = ("context_change_reloads", "env_load_settings", "remote")

T = TypeVar("T")


def _ollama_parallel(config: UpstreamConfig) -> int | None:
    """``OLLAMA_NUM_PARALLEL`` from autotune's own environment, for an Ollama on this machine
    (the one place autotune can know what that Ollama was started with)."""
    if config.kind != "ollama":
        return None
    host = urlsplit(config.url).hostname or ""
    try:
        local = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        local = False
    value = os.environ.get("OLLAMA_NUM_PARALLEL", "").strip()
    return int(value) if local and value.isdigit() and int(value) > 0 else None


def make_upstream_backend(config: UpstreamConfig, timeout: httpx.Timeout | None = None) -> Backend:
    """The backend object for one upstream (no I/O)."""
    api_key = config.resolved_api_key()
    if config.kind == "ollama":
        from autotune.backends.ollama import OllamaBackend

        # An API key: e.g. an Ollama behind an authenticating proxy.
        backend: Backend = OllamaBackend(config.url, api_key=api_key)
        backend.name = config.display_name
        return backend
    from autotune.backends.openai_compat import DEFAULT_TIMEOUT, OpenAICompatBackend

    return OpenAICompatBackend(
        config.url,
        name=config.display_name,
        api_key=api_key,
        kind=config.kind,
        timeout=timeout or DEFAULT_TIMEOUT,
    )


@dataclasses.dataclass
class Upstream:
    """One engine behind the router and everything the router knows about it right now."""

    config: UpstreamConfig
    backend: Backend
    #: Models discovered from the engine (when the config lists none); None until known.
    discovered: frozenset[str] | None = None
    discovered_at: float = 0.0
    load: EngineLoad = dataclasses.field(default_factory=EngineLoad)
    load_at: float = 0.0
    in_flight: int = 0
    in_flight_at_scrape: int = 0
    down: bool = False
    down_since: float | None = None  # unix seconds, for display
    down_at: float = 0.0  # monotonic, of the latest failure
    retry_at: float = 0.0
    last_error: str | None = None
    last_pick: int = 0
    served: int = 0
    failed: int = 0
    failovers_from: int = 0
    #: A llama-server's slots, from ``/props`` (``None`` until read).
    slots: int | None = None
    #: Its running-model listing as last read (``None``: nobody asked yet), and when.
    running: list[RunningModel] | None = None
    running_at: float = 0.0
    #: ``(monotonic seconds, load)`` readings of the recent window, oldest first.
    readings: deque[tuple[float, EngineLoad]] = dataclasses.field(default_factory=deque)
    _discovery: asyncio.Task[None] | None = None
    _listing: asyncio.Future[None] | None = None

    @property
    def name(self) -> str:
        return self.config.display_name

    @property
    def models(self) -> frozenset[str] | None:
        if self.config.models is not None:
            return frozenset(self.config.models)
        return self.discovered

    @property
    def limit_and_reason(self) -> tuple[int, str]:
        return upstream_limit(
            self.config.kind,
            configured=self.config.max_concurrent,
            slots=self.slots,
            ollama_parallel=_ollama_parallel(self.config),
        )

    @property
    def limit(self) -> int:
        return self.limit_and_reason[0]

    def view(self) -> UpstreamView:
        return UpstreamView(
            name=self.name,
            models=self.models,
            weight=self.config.weight,
            in_flight=self.in_flight,
            external=external_load(self.load, self.in_flight_at_scrape),
            available=not self.down,
            last_pick=self.last_pick,
            limit=self.limit,
        )

    def record(self, at: float, load: EngineLoad, window: float) -> None:
        """Keep ``load`` and the readings the window still needs (one from before its start)."""
        self.readings.append((at, load))
        while len(self.readings) > 2 and self.readings[1][0] <= at - window:
            self.readings.popleft()

    def state(self, window: float = 60.0) -> dict[str, Any]:
        """A plain dict for ``/health``, ``autotune ps`` and the dashboard (counts as ints;
        rates over the last ``window`` seconds of readings)."""
        rates = window_rates(list(self.readings), window)
        limit, why = self.limit_and_reason
        hit_rate = rates.prefix_hit_rate
        if hit_rate is None:
            hit_rate = self.load.prefix_hit_rate  # the engine's own recent figure (SGLang)
        return {
            "name": self.name,
            "url": self.config.url,
            "kind": self.config.kind,
            "state": "down" if self.down else "up",
            "weight": self.config.weight,
            "models": sorted(self.models) if self.models is not None else None,
            "in_flight": self.in_flight,
            "limit": limit,
            "limit_reason": why,
            "waiting": _count(self.load.waiting),
            "running": _count(self.load.running),
            "kv_usage": self.load.kv_usage,
            "prefix_hit_rate": hit_rate,
            "tokens_per_second": rates.tokens_per_second,
            "rate_seconds": round(rates.seconds, 1),
            "load_source": self.load.source or None,
            "served": self.served,
            "failed": self.failed,
            "last_error": self.last_error,
            "down_since": self.down_since,
        }


def _count(value: float | None) -> int | None:
    """A request count as the engine's gauge gave it (a float), as the integer it is."""
    return None if value is None else round(value)


@dataclasses.dataclass
class _Attempt:
    """One request's way through the upstreams: who was tried and what each said."""

    model: str
    key: str | None = None
    tried: set[str] = dataclasses.field(default_factory=set)
    errors: list[str] = dataclasses.field(default_factory=list)
    #: An upstream that cannot do this at all (no embeddings endpoint, say): not a failure.
    unsupported: BackendError | None = None


def _unsupported(exc: BaseException) -> bool:
    """The engine cannot do this at all (no embeddings or completions endpoint; HTTP 501):
    it is not down, and another upstream may be able to."""
    return isinstance(exc, NotSupported) or (isinstance(exc, UpstreamError) and exc.status == 501)


def _retryable(exc: BackendError) -> bool:
    """Before the first token, these failures leave the request unanswered: try elsewhere."""
    return isinstance(exc, EngineUnavailable) or (exc.status >= 500 and not _unsupported(exc))


def _combined_capabilities(backends: list[Backend]) -> Capabilities:
    """What autotune may do through the router: a feature only when every upstream has it, a
    constraint (reloads, remote) when any upstream has it."""
    fields = [f.name for f in dataclasses.fields(Capabilities)]
    values: dict[str, Any] = {}
    for name in fields:
        if name == "concurrency":
            values[name] = sum(b.capabilities.concurrency for b in backends)
            continue
        if name == "max_choices":  # the strictest upstream's limit, if any has one
            limits = [b.capabilities.max_choices for b in backends]
            known = [n for n in limits if n is not None]
            values[name] = min(known) if known else None
            continue
        flags = [bool(getattr(b.capabilities, name)) for b in backends]
        values[name] = any(flags) if name in _ANY_FLAGS else all(flags)
    return Capabilities(**values)


class RouterBackend(Backend):
    """Routes each chat to one of several upstream engines (see the module docstring)."""

    name = "router"
    start_hint = "Start the engines listed in the router config, or fix their URLs."

    def __init__(
        self,
        config: RouterConfig,
        *,
        source: str | None = None,
    ) -> None:
        self.config = config
        self.source = source
        timeout = httpx.Timeout(600.0, connect=config.connect_timeout)
        self.upstreams: list[Upstream] = [
            Upstream(u, make_upstream_backend(u, timeout)) for u in config.upstreams
        ]
        self._by_name = {u.name: u for u in self.upstreams}
        self.capabilities = _combined_capabilities([u.backend for u in self.upstreams])
        self.capabilities = dataclasses.replace(
            self.capabilities, concurrency=sum(u.limit for u in self.upstreams)
        )
        #: Requests waiting for room on a full upstream, first come first served.
        self._room_waiters: deque[asyncio.Future[None]] = deque()
        self.base_url = ", ".join(u.config.url for u in self.upstreams)
        self._pins: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._picks = itertools.count(1)
        self._http: httpx.AsyncClient | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._monitor_loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        #: Requests that moved to another upstream after a failure before their first token.
        self.failovers = 0

    @classmethod
    def from_file(cls, path: str | Path) -> RouterBackend:
        """A router for the upstreams in a YAML/TOML file (validated; no I/O beyond reading)."""
        return cls(load_router_config(path), source=str(path))

    # ------------------------------------------------------------------ state

    def upstream_states(self) -> list[dict[str, Any]]:
        """Each upstream's state as a dict (name, url, kind, up/down, load, counters)."""
        return [u.state(self.config.rate_window) for u in self.upstreams]

    def describe(self) -> dict[str, Any]:
        """What ``/backends`` shows for the router."""
        return {
            "name": self.name,
            "engine": "router",
            "config": self.source,
            "remote": self.capabilities.remote,
            "upstreams": self.upstream_states(),
        }

    async def health(self) -> bool:
        """True when at least one upstream answers (each is checked now)."""
        self._ensure_monitor()
        results = await asyncio.gather(
            *(self._refresh_load(u) for u in self.upstreams), return_exceptions=True
        )
        return any(r is True for r in results)

    # ------------------------------------------------------------------ models

    async def list_models(self) -> list[ModelEntry]:
        self._ensure_monitor()
        await self._discover_all(force=False)
        names: dict[str, None] = {}
        for upstream in self.upstreams:
            for model in sorted(upstream.models or ()):
                names.setdefault(model, None)
        unknown = [u.name for u in self.upstreams if u.models is None]
        if not names and unknown:
            # Nothing to list because the engines did not answer: that is a 503, not "no
            # such model" (a vLLM still starting refuses connections).
            raise EngineUnavailable(
                f"The router's upstreams have not listed their models yet: {', '.join(unknown)} "
                "not reachable.",
                hint=self.start_hint,
            )
        return [ModelEntry(name=n, backend=self.name) for n in names]

    async def running_models(self) -> list[RunningModel]:
        """What each upstream holds, as its last listing said. A listing older than
        ``metrics_interval`` is read again in the background while the old one is returned,
        so a request's plan (the pipeline asks every couple of seconds, concurrent requests
        all at once) waits for no listing but the very first."""

        async def one(upstream: Upstream) -> list[RunningModel]:
            if upstream.down or not upstream.backend.capabilities.running_models:
                return []
            if upstream.running is None:
                await self._read_running(upstream)
            elif time.monotonic() - upstream.running_at > self.config.metrics_interval:
                self._refresh_running_soon(upstream)
            return list(upstream.running or ())

        lists = await asyncio.gather(*(one(u) for u in self.upstreams))
        return [r for rs in lists for r in rs]

    def _refresh_running_soon(self, upstream: Upstream) -> None:
        task = upstream._listing
        if task is None or task.done():
            upstream._listing = asyncio.ensure_future(self._read_running(upstream))

    async def _read_running(self, upstream: Upstream) -> None:
        try:
            running = await upstream.backend.running_models()
        except BackendError:
            running = []
        for entry in running:
            entry.backend = self.name
            entry.settings = {**entry.settings, "upstream": upstream.name}
        upstream.running, upstream.running_at = running, time.monotonic()

    async def model_meta(self, model: str) -> ModelMeta:
        await self._discover_all(force=False)
        for view in servers_of(model, [u.view() for u in self.upstreams]):
            upstream = self._by_name[view.name]
            try:
                meta = await upstream.backend.model_meta(model_name_on(view.models, model) or model)
            except BackendError:  # not supported there, or that engine is away: ask the next
                continue
            return dataclasses.replace(meta, name=model)
        raise NotSupported("No upstream of the router can describe this model.")

    async def tokenize(self, model: str, text: str) -> list[int]:
        await self._discover_all(force=False)
        # Counting tokens takes no place in an engine's batch: any upstream of the model will do.
        choice = choose_upstream(model, [u.view() for u in self.upstreams], limits=False)
        if choice is None:
            raise self._no_upstream(model, [])
        return await self._by_name[choice.upstream].backend.tokenize(choice.model, text)

    async def embed(self, model: str, texts: list[str]) -> list[list[float]]:
        """Embeddings from an upstream of ``model``, under its limit, failed over like a chat."""

        async def call(upstream: Upstream, name: str) -> list[list[float]]:
            return await upstream.backend.embed(name, texts)

        return await self._route_call(_Attempt(model), call)

    def _needs_discovery(self, upstream: Upstream) -> bool:
        if upstream.config.models is not None or upstream.down:
            return False  # a down upstream is listed again when the prober finds it back
        if upstream.discovered is None:
            return True
        return time.monotonic() - upstream.discovered_at >= self.config.models_refresh

    async def _discover_all(self, *, force: bool) -> None:
        pending = [u for u in self.upstreams if force or self._needs_discovery(u)]
        if pending:
            await asyncio.gather(*(self._discover(u, force=force) for u in pending))

    async def _discover(self, upstream: Upstream, *, force: bool) -> None:
        """List the models of an upstream whose config names none (one listing at a time)."""
        if upstream.config.models is not None:
            return
        if not force and not self._needs_discovery(upstream):
            return
        task = upstream._discovery
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            task = upstream._discovery = asyncio.ensure_future(self._list(upstream))
        await asyncio.shield(task)

    async def _list(self, upstream: Upstream) -> None:
        try:
            entries = await upstream.backend.list_models()
        except EngineUnavailable as exc:
            self._mark_down(upstream, str(exc.message))
            return
        except BackendError as exc:
            upstream.last_error = error_summary(exc)
            return
        upstream.discovered = frozenset(e.name for e in entries if e.name)
        upstream.discovered_at = time.monotonic()

    # ------------------------------------------------------------------ chat

    def _pin_for(self, key: str | None) -> str | None:
        if key is None:
            return None
        pinned = self._pins.get(key)
        if pinned is None:
            return None
        name, at = pinned
        if time.monotonic() - at > self.config.affinity_ttl:
            self._pins.pop(key, None)
            return None
        return name

    def _pin(self, key: str | None, upstream: Upstream) -> None:
        if key is None:
            return
        self._pins[key] = (upstream.name, time.monotonic())
        self._pins.move_to_end(key)
        while len(self._pins) > _MAX_PINS:
            self._pins.popitem(last=False)

    def _choose(self, model: str, key: str | None, tried: set[str]) -> Choice | None:
        views = [u.view() for u in self.upstreams]
        choice = choose_upstream(
            model,
            views,
            pinned=self._pin_for(key),
            exclude=tried,
            max_imbalance=self.config.affinity_max_imbalance,
        )
        if choice is not None:
            return choice
        # Every upstream for this model is down: one whose cool-down has run out gets a
        # chance now rather than at the prober's next round.
        now = time.monotonic()
        due = [
            dataclasses.replace(v, available=True)
            for v, u in zip(views, self.upstreams, strict=True)
            if u.down and now >= u.retry_at and u.name not in tried
        ]
        return choose_upstream(model, due) if due else None

    def _no_upstream(self, model: str, errors: list[str]) -> BackendError:
        views = [u.view() for u in self.upstreams]
        serving = servers_of(model, views)
        if not serving:
            if any(u.models is None for u in self.upstreams):
                unknown = [u.name for u in self.upstreams if u.models is None]
                return EngineUnavailable(
                    f"No upstream of the router is known to serve {model!r}; the models of "
                    f"{', '.join(unknown)} are not known yet (not reachable).",
                    hint=self.start_hint,
                )
            import difflib

            known = sorted({m for v in views for m in (v.models or ())})
            return ModelNotFound(model, difflib.get_close_matches(model, known, n=3, cutoff=0.4))
        detail = "; ".join(errors) or ", ".join(
            f"{v.name} ({self._by_name[v.name].last_error or 'down'})" for v in serving
        )
        return EngineUnavailable(
            f"Every upstream that serves {model!r} is down: {detail}.",
            hint=f"They are probed every {self.config.probe_interval:g} s and used again once "
            "they answer.",
        )

    def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        key = self._affinity_key(request) if self.config.affinity else None
        return self._route_stream(
            _Attempt(request.model, key),
            lambda upstream, name: upstream.backend.stream_chat(
                dataclasses.replace(request, model=name)
            ),
        )

    def stream_completion(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        # A prompt that starts the same way goes where its prefix was computed, as a chat does.
        key = affinity_key([{"role": "user", "content": request.prompt}])
        return self._route_stream(
            _Attempt(request.model, key if self.config.affinity else None),
            lambda upstream, name: upstream.backend.stream_completion(
                dataclasses.replace(request, model=name)
            ),
        )

    # ------------------------------------------------------------------ one request's route

    async def _acquire(self, attempt: _Attempt) -> tuple[Upstream, Choice]:
        """An upstream with room for this request (its in-flight count taken); waits in the
        router while every upstream of the model is at its limit."""
        self._ensure_monitor()
        # Only a list never read is waited for; the monitor reads stale ones again.
        unread = [
            u
            for u in self.upstreams
            if u.config.models is None and u.discovered is None and not u.down
        ]
        if unread:
            await asyncio.gather(*(self._discover(u, force=False) for u in unread))
        while True:
            choice = self._choose(attempt.model, attempt.key, attempt.tried)
            if choice is not None:
                upstream = self._by_name[choice.upstream]
                attempt.tried.add(upstream.name)
                upstream.last_pick = next(self._picks)
                upstream.in_flight += 1
                return upstream, choice
            views = [u.view() for u in self.upstreams]
            if not all_full(attempt.model, views, exclude=attempt.tried):
                if attempt.unsupported is not None and not attempt.errors:
                    raise attempt.unsupported
                raise self._no_upstream(attempt.model, attempt.errors)
            await self._wait_for_room()

    async def _wait_for_room(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._room_waiters.append(waiter)
        try:
            await waiter
        finally:
            with contextlib.suppress(ValueError):
                self._room_waiters.remove(waiter)

    def _wake(self) -> None:
        """Room may have come free (a request ended, an upstream came back, a limit grew):
        every waiter looks again, in the order they came."""
        for waiter in self._room_waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _release(self, upstream: Upstream) -> None:
        upstream.in_flight -= 1
        self._wake()

    def _failed_before_answer(
        self, upstream: Upstream, model: str, exc: BaseException, attempt: _Attempt
    ) -> None:
        """Note a failure that left the request unanswered, so another upstream can take it;
        re-raise what another upstream would answer the same way (a client error)."""
        if isinstance(exc, StopAsyncIteration):
            error = UpstreamError(502, "closed the stream without a reply", upstream.name)
            self._mark_down(upstream, str(error))
            attempt.errors.append(f"{upstream.name} ({error})")
        elif isinstance(exc, ModelNotFound):
            # Its model list was stale: forget it and let another upstream answer.
            upstream.discovered_at = 0.0
            if upstream.discovered is not None:
                upstream.discovered = upstream.discovered - {model}
            attempt.errors.append(f"{upstream.name} (does not have {model})")
        elif isinstance(exc, BackendError) and _unsupported(exc):
            attempt.unsupported = exc  # that engine cannot do it; it is not down
        elif isinstance(exc, BackendError) and _retryable(exc):
            self._mark_down(upstream, error_summary(exc))
            attempt.errors.append(f"{upstream.name} ({error_summary(exc)})")
            self.failovers += 1
            upstream.failovers_from += 1
            log.warning(
                "router: %s failed before answering: %s",
                upstream.name,
                error_summary(exc),  # never the engine's words: they can quote prompts
            )
        else:
            raise exc

    async def _route_call(
        self, attempt: _Attempt, call: Callable[[Upstream, str], Awaitable[T]]
    ) -> T:
        """One request and one answer (embeddings) through the router."""
        while True:
            upstream, choice = await self._acquire(attempt)
            try:
                result = await call(upstream, choice.model)
            except (BackendError, StopAsyncIteration) as exc:
                self._failed_before_answer(upstream, choice.model, exc, attempt)
                continue
            finally:
                self._release(upstream)
            upstream.served += 1
            return result

    async def _route_stream(
        self, attempt: _Attempt, open_stream: Callable[[Upstream, str], AsyncIterator[Chunk]]
    ) -> AsyncIterator[Chunk]:
        """A streamed answer through the router: failed over until its first chunk, then
        relayed as it comes (a failure after that is passed on)."""
        while True:
            upstream, choice = await self._acquire(attempt)
            started = False
            stream = open_stream(upstream, choice.model)
            try:
                try:
                    first = await stream.__anext__()
                except (BackendError, StopAsyncIteration) as exc:
                    self._failed_before_answer(upstream, choice.model, exc, attempt)
                    continue
                started = True
                self._pin(attempt.key, upstream)
                yield self._tagged(first, upstream, choice)
                async for chunk in stream:
                    yield self._tagged(chunk, upstream, choice)
                upstream.served += 1
                return
            except EngineUnavailable as exc:
                if started:  # the engine went away mid-answer: cannot be retried unseen
                    self._mark_down(upstream, error_summary(exc))
                raise
            finally:
                self._release(upstream)
                with contextlib.suppress(Exception):
                    await stream.aclose()  # type: ignore[attr-defined]

    @staticmethod
    def _affinity_key(request: ChatRequest) -> str | None:
        # A conversation id when the pipeline passes one (ChatRequest.conversation_id), else
        # OpenAI's `prompt_cache_key` ("requests that share a prefix"), else a content hash.
        conversation = getattr(request, "conversation_id", None) or request.params.get(
            "prompt_cache_key"
        )
        return affinity_key(
            request.messages, conversation if isinstance(conversation, str) else None
        )

    @staticmethod
    def _tagged(chunk: Chunk, upstream: Upstream, choice: Choice) -> Chunk:
        if chunk.stats is not None:
            chunk.stats.raw["upstream"] = upstream.name
            chunk.stats.raw["route"] = choice.reason
        return chunk

    # ------------------------------------------------------------------ health and load

    def _mark_down(self, upstream: Upstream, reason: str) -> None:
        now = time.monotonic()
        if not upstream.down:
            upstream.down_since = time.time()
            log.warning("router: upstream %s is down: %s", upstream.name, reason)
        upstream.down = True
        upstream.down_at = now
        upstream.failed += 1
        upstream.last_error = reason
        upstream.retry_at = now + self.config.cooldown
        upstream.load = dataclasses.replace(upstream.load, healthy=False)
        upstream.slots = None  # a restarted llama-server may run another number of slots
        self._ensure_monitor()
        self._wake()  # a request waiting only for this upstream must hear it is down

    def _mark_up(self, upstream: Upstream) -> None:
        if upstream.down:
            log.info("router: upstream %s is back", upstream.name)
        upstream.down = False
        upstream.down_since = None
        upstream.last_error = None
        self._wake()

    def _capacity_changed(self) -> None:
        """The upstreams' limits changed (slots read): tell the admission queue, wake waiters."""
        total = sum(u.limit for u in self.upstreams)
        if total != self.capabilities.concurrency:
            self.capabilities = dataclasses.replace(self.capabilities, concurrency=total)
            if self.on_capacity is not None:
                self.on_capacity(total)
        self._wake()

    async def _read_slots(self, upstream: Upstream) -> None:
        """A llama-server's slots from ``/props`` (``total_slots``), once per time it comes up."""
        if upstream.config.kind != "llamacpp" or upstream.slots is not None:
            return
        api_key = upstream.config.resolved_api_key()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        root = upstream.config.url.removesuffix("/v1")
        try:
            reply = await self._client().get(root + "/props", headers=headers)
            slots = reply.json().get("total_slots") if reply.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return
        if isinstance(slots, int) and slots > 0:
            upstream.slots = slots
            self._capacity_changed()

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            seconds = self.config.metrics_timeout
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(seconds, connect=seconds))
        return self._http

    async def _read_load(self, upstream: Upstream) -> EngineLoad:
        """The engine's load from its metrics paths, else a bare health verdict."""
        api_key = upstream.config.resolved_api_key()
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
        client = self._client()
        root = upstream.config.url.removesuffix("/v1")
        last = EngineLoad()
        for path, _ in LOAD_PATHS.get(upstream.config.kind, ()):
            try:
                response = await client.get(root + path, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError) as exc:
                return EngineLoad(healthy=False, source=f"{path}: {transport_detail(exc)}")
            except httpx.HTTPError as exc:  # slow under load is not down: load unknown
                return EngineLoad(healthy=None, source=f"{path}: {transport_detail(exc)}")
            last = parse_load(upstream.config.kind, path, response.status_code, response.text)
            if last.known or last.loaded is not None:
                return last
        healthy = await upstream.backend.health()
        return dataclasses.replace(last, healthy=healthy)

    async def _refresh_load(self, upstream: Upstream) -> bool | None:
        in_flight = upstream.in_flight
        started = time.monotonic()
        load = await self._read_load(upstream)
        if upstream.down and upstream.down_at > started:
            return False  # it failed a request while being read: this reading is stale
        upstream.load = load
        upstream.load_at = time.monotonic()
        if load.healthy is True:
            upstream.record(upstream.load_at, load, self.config.rate_window)
        # The engine's counts include the requests autotune had there when it was read.
        upstream.in_flight_at_scrape = max(in_flight, upstream.in_flight)
        if load.healthy is True:
            if upstream.down:
                self._mark_up(upstream)
                if upstream.config.models is None:
                    await self._discover(upstream, force=True)
            await self._read_slots(upstream)
        elif upstream.down:
            upstream.retry_at = time.monotonic() + self.config.probe_interval
        elif load.healthy is False:
            self._mark_down(upstream, f"no answer ({load.source})")
        return load.healthy

    def _ensure_monitor(self) -> None:
        """Start the background prober in the running loop (once per loop; never at import)."""
        if self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self._monitor is not None and not self._monitor.done() and self._monitor_loop is loop:
            return
        if self._monitor_loop is not loop:
            self._http = None  # a client belongs to the loop it was made in
        self._monitor_loop = loop
        self._monitor = loop.create_task(self._monitor_loop_body(), name="autotune-router-monitor")

    async def _monitor_loop_body(self) -> None:
        """Reads every upstream's load each ``metrics_interval``; probes a down upstream once
        its cool-down has run out, then every ``probe_interval``, until it answers."""
        tick = min(self.config.probe_interval, self.config.metrics_interval)
        while not self._closed:
            now = time.monotonic()
            due = []
            for upstream in self.upstreams:
                if upstream.down:
                    if now >= upstream.retry_at:
                        due.append(self._refresh_load(upstream))
                elif now - upstream.load_at >= self.config.metrics_interval:
                    due.append(self._refresh_load(upstream))
                    if self._needs_discovery(upstream) and upstream.discovered is not None:
                        due.append(self._discover(upstream, force=True))
            if due:
                results = await asyncio.gather(*due, return_exceptions=True)
                for result in results:
                    if isinstance(result, Exception):
                        log.debug("router monitor: %r", result)
            await asyncio.sleep(tick)

    async def aclose(self) -> None:
        self._closed = True
        for upstream in self.upstreams:
            if upstream._listing is not None and not upstream._listing.done():
                upstream._listing.cancel()
        monitor, self._monitor = self._monitor, None
        if monitor is not None and not monitor.done():
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError, RuntimeError):
                await monitor
        if self._http is not None:
            with contextlib.suppress(RuntimeError):
                await self._http.aclose()
            self._http = None
        await asyncio.gather(*(u.backend.aclose() for u in self.upstreams), return_exceptions=True)


def from_settings(spec: EngineSpec, settings: Settings) -> RouterBackend:
    """The router over the upstreams of ``AUTOTUNE_ROUTER_CONFIG`` (the engine table's builder)."""
    if settings.router_config is None:
        raise BackendError(
            "The router needs a config file listing its upstream engines.",
            hint="Set AUTOTUNE_ROUTER_CONFIG to a YAML or TOML file "
            "(every key is explained in examples/router.yaml).",
        )
    return RouterBackend.from_file(settings.router_config)
