"""The FastAPI application factory: wires settings, engines, store, pipeline and routes together."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from autotune import __version__
from autotune.backends.registry import BackendSet, open_backends
from autotune.config import Settings, get_settings
from autotune.pipeline import Pipeline
from autotune.server import admin, conversations_api, openai
from autotune.server.errors import install_error_handlers
from autotune.server.metrics import Metrics
from autotune.server.middleware import ApiKeyMiddleware, BodyLimitMiddleware
from autotune.store.conversations import ConversationStore
from autotune.store.db import Database

__all__ = ["create_app", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_app(settings: Settings | None = None, *, backends: BackendSet | None = None) -> FastAPI:
    """Build the app; engines are probed and opened when it starts (in its lifespan), not here."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from autotune.hardware.profile import detect_hardware

        engines = backends or await open_backends(settings)
        hardware = await asyncio.to_thread(detect_hardware)
        db = await asyncio.to_thread(Database, settings.db_path)
        store = ConversationStore(db)
        pipeline = Pipeline(
            engines, settings, store=store, threads=settings.threads or hardware.physical_cores
        )
        metrics = Metrics(pipeline.queue, lambda: pipeline.sampler.latest.ram_used_fraction)
        pipeline.observers.append(metrics.observe)
        for extra in app.state.extra_observers:
            pipeline.observers.append(extra(db))
        pipeline.sampler.start()
        app.state.settings = settings
        app.state.pipeline = pipeline
        app.state.store = store
        app.state.db = db
        app.state.metrics = metrics
        app.state.hardware = hardware
        try:
            yield
        finally:
            await pipeline.sampler.stop()
            await pipeline.close()
            await engines.aclose()
            db.close()

    app = FastAPI(
        title="autotune",
        version=__version__,
        description="OpenAI-compatible API in front of local LLM engines, tuned for them.",
        lifespan=lifespan,
    )
    app.state.extra_observers = []
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(admin.router)
    app.include_router(conversations_api.router)
    if settings.cors_origins:
        origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Autotune-Plan", "X-Conversation-Id"],
        )
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    return app


def server_config(settings: Settings) -> dict[str, Any]:
    """uvicorn options for ``autotune serve``."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": "warning",
        "access_log": False,  # request lines could be logged, prompt text never is
        "timeout_graceful_shutdown": 5,
    }
