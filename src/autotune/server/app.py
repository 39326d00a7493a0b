"""The FastAPI application factory: wires settings, engines, store, pipeline and routes together."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from autotune import __version__
from autotune.backends.registry import BackendSet
from autotune.ground.config import Settings, get_settings
from autotune.runtime import open_runtime
from autotune.server import admin, conversations_api, dashboard, ollama_api, openai
from autotune.server.errors import install_error_handlers
from autotune.server.metrics import Metrics
from autotune.server.middleware import ApiKeyMiddleware, BodyLimitMiddleware

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
        runtime = await open_runtime(settings, backends=backends)
        pipeline = runtime.pipeline
        metrics = Metrics(pipeline.queue, lambda: pipeline.sampler.latest.ram_used_fraction)
        pipeline.observers.append(metrics.observe)
        app.state.runtime = runtime
        app.state.settings = settings
        app.state.pipeline = pipeline
        app.state.store = runtime.store
        app.state.db = runtime.db
        app.state.telemetry = runtime.telemetry
        app.state.metrics = metrics
        app.state.hardware = runtime.hardware
        try:
            yield
        finally:
            await runtime.aclose()

    app = FastAPI(
        title="autotune",
        version=__version__,
        description="OpenAI-compatible API in front of local LLM engines, tuned for them.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(openai.router)
    app.include_router(ollama_api.router)
    app.include_router(admin.router)
    app.include_router(conversations_api.router)
    app.include_router(dashboard.router)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    if settings.cors_origins:  # outermost: a preflight is answered before the key check
        origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["X-Autotune-Plan", "X-Conversation-Id"],
        )
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
