"""Builds a running autotune (engines, database, stores, pipeline, telemetry) in one place.

``autotune serve``, ``chat``, ``run``, ``pull``, ``tune`` and ``proof`` all start from
:func:`open_runtime`, so they share one wiring and one pipeline; commands that only list
what engines have open just the engines (:func:`open_backends`). Nothing here runs at import.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from autotune.backends.registry import BackendSet, open_backends, serving_addresses
from autotune.ground.config import Settings, get_settings
from autotune.ground.errors import BackendError
from autotune.ground.records import RunRecord
from autotune.ground.types import EngineEvent, LoadSettings
from autotune.hardware.profile import HardwareProfile, detect_hardware
from autotune.pipeline import Pipeline
from autotune.pipeline.kv import KvManager
from autotune.recall.embed import default_embedder
from autotune.recall.manager import RecallManager
from autotune.store.conversations import ConversationStore
from autotune.store.db import Database
from autotune.store.kv import KvStore
from autotune.store.loads import LoadedModels
from autotune.store.telemetry import TelemetryStore, derive_events
from autotune.store.tuning import TuningStore

__all__ = ["BackendSet", "Runtime", "open_backends", "open_runtime"]

log = logging.getLogger("autotune.store")

#: Engine events that change which models are loaded.
_LOAD_EVENTS = ("load", "reload", "unload", "unexpected_unload")


@dataclass
class Runtime:
    """Everything one autotune process uses; close it with :meth:`aclose`."""

    settings: Settings
    backends: BackendSet
    db: Database
    store: ConversationStore
    telemetry: TelemetryStore
    tuning: TuningStore
    pipeline: Pipeline
    hardware: HardwareProfile
    #: Searchable memory of past conversations (semantic when an embedder is installed).
    recall: RecallManager | None = None
    #: The models each engine holds, kept for the next start's warm start.
    loads: LoadedModels | None = None
    #: Models a warm start is loading now (``/health`` shows them).
    warming: set[str] = field(default_factory=set)
    _tasks: set[asyncio.Future[Any]] = field(default_factory=set)
    #: One thread for the background writes, so they land in the order they were made (a
    #: model's load before its unload; with a thread each, the unload could land first).
    _writer: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="autotune-writes")
    )
    _indexing: bool = False
    #: A background write failed (logged once) and none has succeeded since.
    _write_failing: bool = False

    @property
    def writes_failing(self) -> bool:
        """A background write (telemetry, events) failed and none has succeeded since."""
        return self._write_failing

    async def aclose(self) -> None:
        await self.pipeline.sampler.stop()
        await self.pipeline.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.backends.aclose()  # saves the slots of every worker first (KV manager)
        if self.pipeline.kv is not None:
            await self.pipeline.kv.aclose()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._writer.shutdown(wait=True)
        self.db.close()

    # -- telemetry wiring: writes go to a thread so the event loop never waits on SQLite

    def _write(self, fn: Any, *args: Any) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            with contextlib.suppress(Exception):
                fn(*args)
            return
        task = asyncio.ensure_future(loop.run_in_executor(self._writer, self._guarded, fn, *args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _guarded(self, fn: Any, *args: Any) -> None:
        """A background write (telemetry, events, loaded models): one that fails on a full
        disk or a read-only folder is dropped with one log line, until writes succeed again,
        never a request's error or an exception no one retrieves."""
        try:
            fn(*args)
        except (sqlite3.Error, OSError) as exc:
            if not self._write_failing:
                self._write_failing = True
                log.warning(
                    "telemetry not written (%s: %s); records are dropped until the data "
                    "folder can be written again (`autotune doctor` checks it)",
                    type(exc).__name__,
                    str(exc)[:120],
                )
        else:
            self._write_failing = False

    def on_run(self, record: RunRecord) -> None:
        self._write(self._store_run, record)

    def _store_run(self, record: RunRecord) -> None:
        self.telemetry.record_run(record)
        backend = self.backends.get(record.backend)
        engine_reports = backend is not None and backend.capabilities.engine_events
        for event in derive_events(record, self.telemetry.rules, engine_reports=engine_reports):
            self.telemetry.record_event(event, run_id=record.id)

    def index_new_turns(self, conversation_id: str) -> None:
        """Embed freshly stored turns in the background (one indexing pass at a time)."""
        if self.recall is None or self._indexing:
            return
        self._indexing = True

        async def index() -> None:
            try:
                assert self.recall is not None
                await self.recall.aindex_pending()
            except Exception:  # memory indexing must never break a chat
                pass
            finally:
                self._indexing = False

        self._spawn(index())

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_engine_event(self, engine: str, event: EngineEvent) -> None:
        self._write(self.telemetry.record_event, event)
        if self.loads is not None and event.kind in _LOAD_EVENTS:
            self._write(self._track_load, engine, event)

    def _track_load(self, engine: str, event: EngineEvent) -> None:
        assert self.loads is not None
        settings = event.detail.get("settings")
        if event.kind in ("load", "reload") and isinstance(settings, dict):
            self.loads.loaded(engine, event.model, LoadSettings(**settings))
        elif event.kind in ("unload", "unexpected_unload"):
            self.loads.unloaded(engine, event.model)

    def start_warm(self) -> None:
        """Load, in the background, the models loaded when autotune last stopped."""
        self._spawn(self.warm_start())

    async def warm_start(self) -> list[str]:
        """Load each model that was loaded at the last stop, most recent first, as long as it
        fits beside the others (nothing is unloaded for it); the models loaded. Its settings
        become the sticky ones first, so a request arriving meanwhile plans the same load
        and waits for it rather than starting another."""
        assert self.loads is not None
        done = []
        for engine, model, settings in await asyncio.to_thread(self.loads.last):
            backend = self.backends.get(engine)
            if backend is None or not backend.capabilities.load_control:
                continue
            self.pipeline.state.remember_load(backend, model, settings)
            self.warming.add(model)
            try:
                if await backend.preload(model, settings):
                    done.append(model)
            except BackendError:
                pass  # the file is gone or no longer loads: the first request will say why
            finally:
                self.warming.discard(model)
        return done


def kv_disk_budget(settings: Settings) -> int:
    """Bytes for saved KV caches: the setting, else a tenth of the free disk (≤ 64 GiB)."""
    if settings.kv_disk_budget is not None:
        return settings.kv_disk_budget
    settings.home.mkdir(parents=True, exist_ok=True)
    return min(shutil.disk_usage(settings.home).free // 10, 64 * 1024**3)


def _attach_kv(pipeline: Pipeline, engines: BackendSet, settings: Settings, db: Database) -> None:
    """The KV manager, for engines that can save and restore slots; each engine offers its
    slots to it before it drops them (unload, reload, shutdown)."""
    slotted = [e for e in engines.backends.values() if e.capabilities.slots]
    budget = kv_disk_budget(settings)
    if not slotted or budget <= 0:
        return
    store = KvStore(db, settings.kv_dir)
    store.prepare()  # the folder the user's alone; files the index does not know removed
    pipeline.kv = KvManager(store, budget)
    for engine in slotted:
        engine.before_unload = functools.partial(pipeline.kv.save_slots, engine)


def _follow_capacity(pipeline: Pipeline, engines: BackendSet, settings: Settings) -> None:
    """AUTOTUNE_MAX_CONCURRENT left at its default: let as many requests through as the engines
    can run at once (one for a single engine; a router's upstreams' limits added up), and follow
    a router that learns more (a llama-server's slots) after start-up."""

    def resize(_: int = 0) -> None:
        engines_can = max(e.capabilities.concurrency for e in engines.backends.values())
        pipeline.queue.resize(max(settings.max_concurrent, engines_can))

    resize()
    for engine in engines.backends.values():
        engine.on_capacity = resize


async def open_runtime(
    settings: Settings | None = None,
    *,
    backend: str | None = None,
    backends: BackendSet | None = None,
    start_sampler: bool = True,
    index_turns: bool = False,
    serving: bool = False,
) -> Runtime:
    """Probe the engines, open the database and build the pipeline with telemetry attached.

    ``index_turns`` embeds each stored turn for semantic recall right away (the terminal
    chat). The server leaves it off: full-text search is kept current by SQLite triggers,
    and loading an embedding model (~5 s, hundreds of MiB) has no place in its request path;
    ``autotune recall search`` embeds what is pending when it runs. ``serving``: this
    process is ``autotune serve``, whose own addresses are never taken for an engine.
    """
    settings = settings or get_settings()
    own = serving_addresses(settings) if serving else []
    engines = backends or await open_backends(settings, requested=backend, serving=own)
    hardware = await asyncio.to_thread(detect_hardware)
    db = await asyncio.to_thread(Database, settings.db_path)
    store = ConversationStore(db)
    telemetry = TelemetryStore(db)
    tuning = TuningStore(db)
    pipeline = Pipeline(
        engines,
        settings,
        store=store,
        threads=settings.threads or hardware.physical_cores,
        vram_total=sum(g.memory_total for g in hardware.gpus if not g.unified),
        tuned=tuning.lookup,  # measured settings from `autotune tune`, when stored
    )
    _attach_kv(pipeline, engines, settings, db)
    if "max_concurrent" not in settings.model_fields_set:
        _follow_capacity(pipeline, engines, settings)
    recall = RecallManager(db, default_embedder() if settings.recall else None)
    runtime = Runtime(
        settings,
        engines,
        db,
        store,
        telemetry,
        tuning,
        pipeline,
        hardware,
        recall,
        LoadedModels(db),
    )
    if index_turns:
        pipeline.after_store.append(runtime.index_new_turns)
    pipeline.observers.append(runtime.on_run)
    if pipeline.kv is not None:
        pipeline.kv.emit = functools.partial(runtime.on_engine_event, "")
    for name, engine in engines.backends.items():
        if engine.capabilities.engine_events and engine.on_event is None:
            engine.on_event = functools.partial(runtime.on_engine_event, name)
    if start_sampler:
        pipeline.sampler.start()
    runtime._write(telemetry.prune, 30)  # keep 30 days of runs and events
    return runtime
