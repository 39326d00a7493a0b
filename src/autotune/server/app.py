"""The FastAPI application factory: wires settings, engines, store, pipeline and routes together."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import psutil
from fastapi import Depends, FastAPI

from autotune import __version__
from autotune.ground.config import Settings, get_settings
from autotune.runtime import BackendSet, open_runtime
from autotune.server import (
    admin,
    anthropic_api,
    completions,
    conversations_api,
    dashboard,
    embeddings,
    ollama_api,
    openai,
    responses_api,
)
from autotune.server.errors import ErrorShapes, install_error_handlers, reject_lone_surrogates
from autotune.server.metrics import Metrics
from autotune.server.middleware import (
    ApiKeyMiddleware,
    BodyLimitMiddleware,
    HostGuardMiddleware,
    InternalErrorMiddleware,
    SiteCorsMiddleware,
    is_loopback,
)

__all__ = ["allowed_hosts", "create_app", "is_loopback"]

_WILDCARD_BINDS = ("", "0.0.0.0", "::", "[::]")


def allowed_hosts(settings: Settings) -> list[str]:
    """Host names the server answers to besides loopback ones: the address it listens on,
    ``AUTOTUNE_ALLOWED_HOSTS``, and, when it listens on every interface, this machine's own
    addresses and host name (what clients on the network will use)."""
    names = [settings.host, *settings.allowed_host_names]
    if settings.host.strip() in _WILDCARD_BINDS:
        names.append(socket.gethostname())
        for addresses in psutil.net_if_addrs().values():
            names.extend(
                a.address.split("%", 1)[0]  # fe80::1%eth0: the zone is not in a Host header
                for a in addresses
                if a.family in (socket.AF_INET, socket.AF_INET6)
            )
    return [n for n in names if n.strip() and n.strip() not in _WILDCARD_BINDS]


def create_app(settings: Settings | None = None, *, backends: BackendSet | None = None) -> FastAPI:
    """Build the app; engines are probed and opened when it starts (in its lifespan), not here."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await open_runtime(settings, backends=backends, serving=True)
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
        if settings.warm_start:
            runtime.start_warm()
        try:
            yield
        finally:
            await runtime.aclose()

    app = FastAPI(
        title="autotune",
        version=__version__,
        description="OpenAI-compatible API in front of local LLM engines, tuned for them.",
        lifespan=lifespan,
        dependencies=[Depends(reject_lone_surrogates)],
    )
    # Errors answer in the shape of the API whose path was called (OpenAI's elsewhere).
    shapes = ErrorShapes((anthropic_api.ERRORS, ollama_api.ERRORS, responses_api.ERRORS))
    app.state.error_shapes = shapes
    install_error_handlers(app, shapes)
    app.include_router(openai.router)
    app.include_router(anthropic_api.router)
    app.include_router(responses_api.router)
    app.include_router(completions.router)
    app.include_router(embeddings.router)
    app.include_router(embeddings.ollama_router)  # POST /api/embed
    app.include_router(ollama_api.router)
    app.include_router(admin.router)
    app.include_router(conversations_api.router)
    app.include_router(dashboard.router)
    # Outermost last: CORS for the pages that may call (a preflight is answered before the
    # key check; a foreign page's goes on to be refused), the key, the Host/Origin guard
    # (403), the body limit, then the 500 guard right around the routes.
    origins = [o.strip() for o in (settings.cors_origins or "").split(",") if o.strip()]
    sites = {"hosts": allowed_hosts(settings), "cors_origins": origins}
    app.add_middleware(InternalErrorMiddleware, shapes=shapes)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes, shapes=shapes)
    app.add_middleware(HostGuardMiddleware, **sites, shapes=shapes)
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key, shapes=shapes)
    app.add_middleware(SiteCorsMiddleware, **sites)
    return app
