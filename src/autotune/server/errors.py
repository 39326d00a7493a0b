"""OpenAI-style error bodies and the exception handlers that produce them."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from autotune.ground.errors import BackendError, InvalidRequest

__all__ = [
    "error_body",
    "error_response",
    "install_error_handlers",
    "reject_lone_surrogates",
    "validation_message",
]

#: A JSON escape of a UTF-16 surrogate: the only way a JSON text can carry one.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_SURROGATE = re.compile("[\ud800-\udfff]")

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


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
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
        message, param = validation_message(exc)
        return error_response(message, status=400, param=param, code="invalid_request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        headers = dict(exc.headers) if exc.headers else None
        return error_response(message, status=exc.status_code, headers=headers)

    # Anything else is answered by InternalErrorMiddleware: "Internal error" and a request id.


def _surrogate_path(value: Any, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """Where in parsed JSON a string holds a lone surrogate (a pair decodes to one character)."""
    if isinstance(value, str):
        return path if _SURROGATE.search(value) else None
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        key_text = str(key)
        if _SURROGATE.search(key_text):
            return (*path, key_text.encode("utf-8", "backslashreplace").decode())
        found = _surrogate_path(item, (*path, key_text))
        if found is not None:
            return found
    return None


async def reject_lone_surrogates(request: Request) -> None:
    """A FastAPI dependency: a JSON body with a lone UTF-16 surrogate (``"a\\ud800b"``) is a
    400 naming the field. Such text is not Unicode: it cannot be stored or sent to an engine.

    FastAPI has parsed the body before dependencies run, so this reads its cached copy, and
    only when the raw bytes hold a surrogate escape at all (the hot path costs one search).
    """
    body = await request.body()
    if not body or not _SURROGATE_ESCAPE.search(body):
        return
    try:
        parsed = await request.json()
    except ValueError:
        return  # not JSON: the route's own validation answers
    where = _surrogate_path(parsed)
    if where is None:
        return
    param = ".".join(where) or None
    raise InvalidRequest(
        f"Invalid value for {param or 'the request body'!r}: the text holds a lone UTF-16 "
        "surrogate (such as \\ud800), which is not valid Unicode; send the character itself "
        "or a complete surrogate pair.",
        param=param,
    )
