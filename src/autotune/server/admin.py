"""autotune's operational endpoints: health, hardware, profiles, running models and metrics."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse

from autotune.ground.errors import BackendError, RequestStopped
from autotune.ground.profiles import PROFILES
from autotune.ground.serialize import to_jsonable
from autotune.hardware.pressure import pressure_tier
from autotune.operations.storage import check_data_folder
from autotune.server.errors import error_response

__all__ = ["router"]

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Status, queue depth, memory pressure and which engines answer."""
    state = request.app.state
    pipeline = state.pipeline
    names = list(pipeline.backends.order)
    answers = await asyncio.gather(
        *(pipeline.backends.backends[n].health() for n in names), return_exceptions=True
    )
    reachable = {n: (a is True) for n, a in zip(names, answers, strict=False)}
    sample = pipeline.sampler.latest
    primary_ok = reachable.get(names[0], False)
    storage = check_data_folder(state.settings.home, writes_failing=state.runtime.writes_failing)
    return {
        "status": "ok" if primary_ok and storage.ok else "degraded",
        "queue": {
            "running": pipeline.queue.running,
            "queued": pipeline.queue.queued,
            "max_concurrent": pipeline.queue.max_concurrent,
            "max_queued": pipeline.queue.max_queued,
        },
        "memory": {
            "used_fraction": round(sample.ram_used_fraction, 4),
            "pressure": pressure_tier(sample.ram_used_fraction).label,
            "available_bytes": sample.ram_available,
            "swap_used_bytes": sample.swap_used,
        },
        "backends": reachable,
        # The data folder: a full disk or a read-only folder stores nothing (turns get 507).
        "storage": storage.as_dict(),
        "primary_backend": names[0],
        # Models a warm start is loading (those loaded when autotune last stopped).
        "warming": sorted(state.runtime.warming),
        "upstreams": {
            n: ups
            for n in names
            if (ups := pipeline.backends.backends[n].upstream_states()) is not None
        },
    }


@router.get("/api/hardware")
async def hardware(request: Request) -> dict[str, Any]:
    """The hardware profile (read once at start-up) with live memory."""
    profile = request.app.state.hardware
    sample = request.app.state.pipeline.sampler.latest
    return {**to_jsonable(profile), "live": to_jsonable(sample)}


@router.get("/api/profiles")
async def profiles() -> dict[str, Any]:
    """The tuning profiles and what each one sets."""
    return {"profiles": [asdict(p) for p in PROFILES.values()]}


@router.get("/api/running_models")
async def running_models(request: Request) -> dict[str, Any]:
    """Models resident in each engine's memory (the embedded engine's included).

    An embedded worker's own address is shown only when the server has an API key (so the
    caller holds it): without one, anyone who can reach this server would learn it. The
    worker has a key of its own that never leaves autotune either way.
    """
    backends = request.app.state.pipeline.backends
    show_urls = bool(request.app.state.settings.api_key)
    out: list[dict[str, Any]] = []
    errors: dict[str, str] = {}
    for name in backends.order:
        backend = backends.backends[name]
        if not backend.capabilities.running_models:
            continue
        try:
            out.extend(_shown(to_jsonable(r), show_urls) for r in await backend.running_models())
        except BackendError as exc:
            errors[name] = str(exc)
    return {"models": out, "errors": errors}


def _shown(model: dict[str, Any], show_urls: bool) -> dict[str, Any]:
    settings = model.get("settings")
    if not show_urls and isinstance(settings, dict):
        model["settings"] = {k: v for k, v in settings.items() if k != "url"}
    return model


@router.get("/api/kv")
async def kv_files(request: Request) -> dict[str, Any]:
    """Saved KV caches (what each prompt starts with, model, tokens, bytes, restores, the
    conversation it was saved from) and what each loaded model's slots hold now."""
    kv = request.app.state.pipeline.kv
    if kv is None:
        return {"enabled": False, "files": [], "bytes": 0, "budget": 0, "slots": []}
    rows = await asyncio.to_thread(kv.store.rows)
    return {
        "enabled": True,
        "files": rows,
        "bytes": sum(r["bytes"] for r in rows),
        "budget": kv.disk_budget,
        "slots": kv.describe(),
    }


@router.get("/api/requests")
async def recent_requests(request: Request, limit: int = Query(50, ge=1, le=200)) -> dict[str, Any]:
    """The latest requests' telemetry (no prompt text), newest first, and the requests running
    now (``running``: id, model, face, start, tokens so far, state), oldest first."""
    pipeline = request.app.state.pipeline
    recent = pipeline.recent[-limit:]
    return {
        "requests": [r.as_dict() for r in reversed(recent)],
        "running": [entry.as_dict() for entry in pipeline.running],
    }


@router.delete("/api/requests/{request_id}", responses={404: {}})
async def cancel_request(request_id: str, request: Request) -> Response:
    """Cancel a running request (an id from ``running`` in ``GET /api/requests``): its client
    gets an error saying the operator cancelled it, its engine generation stops."""
    entry = request.app.state.pipeline.running.get(request_id)
    if entry is None:
        return error_response(
            f"No running request {request_id!r} (it may have finished).",
            status=404,
            param="request_id",
            code="not_found",
        )
    entry.stop(RequestStopped.cancelled(request_id))
    return JSONResponse({"id": request_id, "cancelled": True}, status_code=202)


@router.get("/api/events")
async def events(request: Request, limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
    """Notable engine events (loads, reloads, unexpected unloads, swap growth, slow tokens)."""
    rows = await asyncio.to_thread(request.app.state.telemetry.events, limit)
    return {"events": rows}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4")
