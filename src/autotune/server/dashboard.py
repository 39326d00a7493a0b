"""The live dashboard: ``GET /dashboard`` and its static assets (plain HTML, JS and CSS, no CDN)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from starlette.types import Scope

__all__ = [
    "ASSETS",
    "PUBLIC_PATHS",
    "is_dashboard_asset_request",
    "is_public_dashboard_request",
    "router",
]

router = APIRouter(include_in_schema=False)

#: Files the dashboard serves, by name, with their content types (nothing else is reachable).
ASSETS: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

#: The page shell: static files with no data in them. Every data endpoint stays behind the key.
PUBLIC_PATHS: frozenset[str] = frozenset(
    {"/dashboard", *(f"/dashboard/static/{name}" for name in ASSETS if name != "index.html")}
)

_HEADERS = {
    # Only this origin's own scripts, styles and JSON: no inline script, no CDN, no framing.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    # A ``?key=`` in the address never leaves in a Referer header.
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def is_public_dashboard_request(scope: Scope) -> bool:
    """True for a GET/HEAD of the dashboard's static shell, which an API-key check may let pass.

    The shell holds no data and no secret; the page sends ``Authorization: Bearer`` on every
    fetch of the JSON endpoints, so the key still guards everything the dashboard shows.
    """
    return (
        scope.get("type") == "http"
        and scope.get("method") in ("GET", "HEAD")
        and scope.get("path") in PUBLIC_PATHS
    )


def is_dashboard_asset_request(scope: Scope) -> bool:
    """True for a GET/HEAD of the page or anything under its static folder (a file or a 404):
    static content only, so a Host check may let it pass; data endpoints are not under it."""
    path = scope.get("path") or ""
    return (
        scope.get("type") == "http"
        and scope.get("method") in ("GET", "HEAD")
        and (path == "/dashboard" or path.startswith("/dashboard/static/"))
    )


def _asset(name: str) -> bytes:
    return resources.files("autotune.server").joinpath("dashboard").joinpath(name).read_bytes()


def _serve(name: str) -> Response:
    return Response(_asset(name), media_type=ASSETS[name], headers=_HEADERS)


@router.get("/dashboard")
async def dashboard() -> Response:
    """The dashboard page; it polls /health, /api/requests, /api/running_models, /api/events."""
    return _serve("index.html")


@router.get("/dashboard/static/{name}")
async def dashboard_asset(name: str) -> Response:
    """The page's script and stylesheet."""
    if name not in ASSETS or name == "index.html":
        raise HTTPException(status_code=404, detail="Not Found")
    return _serve(name)
