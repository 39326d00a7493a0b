"""OpenAI-style error bodies and the exception handlers that produce them."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from autotune.ground.errors import BackendError

__all__ = ["error_body", "error_response", "install_error_handlers"]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(
    message: str,
    *,
    status: int,
    type: str | None = None,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` as the OpenAI API returns it."""
    return {
        "error": {
            "message": message,
            "type": type or _TYPES.get(status, "api_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(
    message: str,
    *,
    status: int,
    type: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        error_body(message, status=status, type=type, param=param, code=code),
        status_code=status,
        headers=headers,
    )


def backend_error_response(exc: BackendError) -> JSONResponse:
    headers = {}
    retry_after = getattr(exc, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return error_response(
        str(exc),
        status=exc.status,
        type=exc.error_type,
        code=exc.code,
        param=getattr(exc, "param", None),
        headers=headers or None,
    )


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ())]
    if loc[:1] == ["header"] and len(loc) > 1:
        param: str | None = "-".join(w.capitalize() for w in loc[1].split("-"))
    else:
        param = ".".join(p for p in loc if p not in ("body", "query", "path")) or None
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    if first.get("type") == "missing":
        return f"Missing required parameter: {param!r}.", param
    given = first.get("input")
    shown = f" {given!r}" if isinstance(given, (str, int, float)) and len(str(given)) <= 80 else ""
    return f"Invalid value{shown} for {param!r}: {first.get('msg', 'invalid')}.", param


def install_error_handlers(app: FastAPI) -> None:
    """Every error the API returns is an OpenAI-style body with a real status."""

    @app.exception_handler(BackendError)
    async def _backend(_: Request, exc: BackendError) -> JSONResponse:
        return backend_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(message, status=400, param=param, code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        return error_response(message, status=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        return error_response(
            f"Internal error: {type(exc).__name__}: {exc}", status=500, code="internal_error"
        )
