"""Errors in the shape of the API a request was sent to, wherever they are raised.

Each API face declares its :class:`ErrorShape` (the body its clients expect and the paths it
serves); :class:`ErrorShapes` picks one by path. The app's exception handlers (a body that
does not validate, autotune's own errors, HTTP errors such as an unknown route) and the
middleware that answers before any route (the key, the Host guard, the body limit, the
last-resort 500) all answer through it, so an Anthropic or Ollama client never meets an
OpenAI-shaped error. OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``,
is the default.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from autotune.ground.errors import BackendError, InvalidRequest, storage_failure

__all__ = [
    "OPENAI",
    "ErrorShape",
    "ErrorShapes",
    "Refusal",
    "error_body",
    "error_response",
    "install_error_handlers",
    "loc_path",
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


class Refusal(BackendError):
    """An error autotune answers that is not about an engine: an HTTP error (unknown route,
    wrong method), or a refusal before any route (key, host, body size, internal error)."""

    def __init__(
        self,
        message: str,
        status: int,
        *,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code  # type: ignore[assignment]
        self.error_type = _TYPES.get(status, "api_error")
        self.headers = dict(headers or {})


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


def _status(exc: BackendError) -> int:
    return exc.status if exc.status >= 400 else 502


def _openai_body(exc: BackendError) -> dict[str, Any]:
    return error_body(
        str(exc),
        status=_status(exc),
        type=exc.error_type,
        param=getattr(exc, "param", None),
        code=exc.code,
    )


def loc_path(loc: Sequence[Any], body: Any, *, brackets: bool = False) -> str | None:
    """The field a validation error points at, as the client wrote it: ``loc`` walked
    through the body itself, leaving out the names pydantic gives union members (``a list``,
    ``list[str]``; the schemas tag unions with names that hold a space, never a key's).
    ``brackets``: ``messages[0].content``, else ``messages.0.content``."""
    steps = list(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    parts: list[str] = []
    value = body
    for i, step in enumerate(steps):
        if isinstance(step, str) and (" " in step or "[" in step):
            continue  # a union member's name ("a list", "user message"), not a key
        if isinstance(value, list) and isinstance(step, int) and 0 <= step < len(value):
            parts.append(f"[{step}]" if brackets else f".{step}")
            value = value[step]
        elif isinstance(value, dict) and (step in value or i == len(steps) - 1):
            parts.append(f".{step}")  # a key, or the missing one the error is about
            value = value.get(step)
        else:
            break  # a scalar: what follows names its union members or checks
    return "".join(parts).lstrip(".") or None


def _header_name(loc: Sequence[Any]) -> str:
    return "-".join(w.capitalize() for w in str(loc[1]).split("-"))


def validation_message(
    exc: RequestValidationError, *, api: str = "OpenAI", brackets: bool = False
) -> tuple[str, str | None]:
    """One sentence for the first problem in a request, and the field it names."""
    errors = exc.errors()
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    loc = list(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    if loc[:1] == ["header"] and len(loc) > 1:
        param: str | None = _header_name(loc)
    else:
        param = loc_path(loc, getattr(exc, "body", None), brackets=brackets)
    kind = first.get("type")
    if kind == "missing":
        return f"Missing required parameter: {param!r}.", param
    if kind == "extra_forbidden":
        return f"Unknown field {param!r}: it is not part of {api}'s API.", param
    given = first.get("input")
    shown = f" {given!r}" if isinstance(given, (str, int, float)) and len(str(given)) <= 80 else ""
    return f"Invalid value{shown} for {param!r}: {first.get('msg', 'invalid')}.", param


def _invalid(exc: RequestValidationError, api: str, brackets: bool) -> InvalidRequest:
    message, param = validation_message(exc, api=api, brackets=brackets)
    unknown = any(e.get("type") == "extra_forbidden" for e in exc.errors()[:1])
    return InvalidRequest(message, param=param, code="unknown_parameter" if unknown else None)


@dataclass(frozen=True)
class ErrorShape:
    """How one API answers errors: its body, and the paths it serves."""

    name: str
    #: The error body for an error (its status is ``exc.status``, 502 for a non-error one).
    body: Callable[[BackendError], Any] = _openai_body
    #: Paths of this API: exact, or a prefix of ``path/…``.
    paths: tuple[str, ...] = ()
    #: Paths under those that are not this API's (exact, or a prefix of ``path/…``).
    except_paths: tuple[str, ...] = ()
    #: ``messages[0].content`` in field names, else ``messages.0.content``.
    brackets: bool = False
    #: A body that does not validate, as this API words it (default: OpenAI's wording).
    describe: Callable[[RequestValidationError], InvalidRequest] | None = None

    def serves(self, path: str) -> bool:
        return _under(path, self.paths) and not _under(path, self.except_paths)

    def invalid(self, exc: RequestValidationError) -> InvalidRequest:
        if self.describe is not None:
            return self.describe(exc)
        return _invalid(exc, self.name, self.brackets)

    def response(self, exc: BackendError, headers: Mapping[str, str] | None = None) -> JSONResponse:
        """``exc`` in this API's shape, with its Retry-After (and any headers it carries)."""
        out = dict(getattr(exc, "headers", None) or {})
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            out["Retry-After"] = str(retry_after)
        out.update(headers or {})
        return JSONResponse(self.body(exc), status_code=_status(exc), headers=out or None)


def _under(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


#: OpenAI's shape: the default for every path no other API claims.
OPENAI = ErrorShape("OpenAI")


@dataclass(frozen=True)
class ErrorShapes:
    """The error shape of every API face, chosen by path (OpenAI's where none claims it)."""

    shapes: tuple[ErrorShape, ...] = ()
    default: ErrorShape = field(default=OPENAI)

    def for_path(self, path: str) -> ErrorShape:
        for shape in self.shapes:
            if shape.serves(path):
                return shape
        return self.default


def install_error_handlers(app: FastAPI, shapes: ErrorShapes) -> None:
    """Every error a route raises is answered in the shape of the API it belongs to."""

    @app.exception_handler(BackendError)
    async def _backend(request: Request, exc: BackendError) -> JSONResponse:
        return shapes.for_path(request.url.path).response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        shape = shapes.for_path(request.url.path)
        return shape.response(shape.invalid(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "Request failed."
        refusal = Refusal(message, exc.status_code, headers=exc.headers)
        return shapes.for_path(request.url.path).response(refusal)

    @app.exception_handler(sqlite3.Error)
    async def _store(request: Request, exc: sqlite3.Error) -> JSONResponse:
        # A full disk or a read-only data folder: the API's storage error (507), not a 500.
        failure = storage_failure(exc, "What this request changes")
        if failure is None:
            raise exc
        return shapes.for_path(request.url.path).response(failure)

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
