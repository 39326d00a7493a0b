"""Errors a user can act on; each carries the HTTP status, code and type the API answers with."""

from __future__ import annotations

__all__ = [
    "BackendError",
    "ContextLengthExceeded",
    "EngineUnavailable",
    "InsufficientMemory",
    "InvalidRequest",
    "ModelLoadError",
    "ModelNotFound",
    "NotSupported",
    "QueueFull",
    "RequestStopped",
    "StorageError",
    "UnsupportedOption",
    "UpstreamError",
    "error_summary",
    "storage_failure",
]


class BackendError(Exception):
    """An engine problem a user can act on; ``status`` is the HTTP status the API answers with."""

    status: int = 502
    code: str = "upstream_error"
    error_type: str = "api_error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class EngineUnavailable(BackendError):
    """The engine does not answer; the message names it, its URL and how to start it."""

    status = 503
    code = "engine_unavailable"


class ModelNotFound(BackendError):
    """No backend knows this model; ``suggestions`` holds the closest known names."""

    status = 404
    code = "model_not_found"
    error_type = "invalid_request_error"

    def __init__(self, model: str, suggestions: list[str] | None = None) -> None:
        self.model = model
        self.suggestions = list(suggestions or [])
        hint = f"Did you mean: {', '.join(self.suggestions)}?" if self.suggestions else None
        super().__init__(f"Unknown model {model!r}.", hint=hint)


class UnsupportedOption(BackendError):
    """The request asks for something this engine cannot honour; named, never dropped silently."""

    status = 400
    code = "unsupported_parameter"
    error_type = "invalid_request_error"

    def __init__(self, param: str, engine: str, why: str = "") -> None:
        self.param = param
        super().__init__(f"{engine} cannot honour {param!r}{': ' + why if why else '.'}")


class InvalidRequest(BackendError):
    """The request itself is wrong (a bad field, an unknown profile); ``param`` names the field."""

    status = 400
    code = "invalid_request"
    error_type = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        if code is not None:
            self.code = code


class ContextLengthExceeded(InvalidRequest):
    """The newest message cannot fit any context this model may have here (OpenAI's shape:
    400 ``context_length_exceeded`` on ``messages``); the message gives the numbers."""

    code = "context_length_exceeded"

    def __init__(self, message: str, *, needed: int, possible: int) -> None:
        super().__init__(message, param="messages")
        self.needed = needed
        self.possible = possible


class StorageError(BackendError):
    """Something the request must store could not be written (a full disk, a read-only data
    folder), so the reply is not confirmed: 507 Insufficient Storage, in the API's shape."""

    status = 507
    code = "storage_error"
    error_type = "api_error"

    def __init__(self, message: str, *, disk_full: bool = False) -> None:
        super().__init__(message)
        self.disk_full = disk_full


#: SQLite's result codes for a store that cannot write (Python names them on the exception).
_STORE_CANNOT_WRITE = ("SQLITE_FULL", "SQLITE_READONLY", "SQLITE_IOERR", "SQLITE_CANTOPEN")
#: errno values of the same: ENOSPC, EDQUOT, EROFS, EACCES, EPERM, EIO.
_ERRNO_CANNOT_WRITE = {28, 122, 30, 13, 1, 5}


def storage_failure(exc: BaseException, what: str) -> StorageError | None:
    """``exc`` as the storage error a client gets when ``what`` (\"The reply\") could not be
    written because the disk is full or the data folder cannot be written; None for any
    other exception (a bug stays a bug)."""
    name = str(getattr(exc, "sqlite_errorname", ""))
    errno = getattr(exc, "errno", None)
    text = str(exc).lower()
    full = name == "SQLITE_FULL" or errno in (28, 122) or "disk is full" in text
    read_only = "readonly" in text or "read-only" in text
    cannot = name.startswith(_STORE_CANNOT_WRITE) or errno in _ERRNO_CANNOT_WRITE or read_only
    if not (full or cannot):
        return None
    why = "the disk is full" if full else "the data folder cannot be written"
    return StorageError(
        f"{what} could not be stored: {why}. Free space (or fix the folder's permissions) "
        "and send the request again; `autotune doctor` checks the data folder.",
        disk_full=full,
    )


class ModelLoadError(BackendError):
    """The engine could not load a model file (broken, truncated, or unsupported architecture)."""

    status = 500
    code = "model_load_failed"


class InsufficientMemory(BackendError):
    """Loading would exceed the memory budget; the message says what would fit."""

    status = 503
    code = "insufficient_memory"


class NotSupported(BackendError):
    """The backend lacks this capability (for example tokenize or pull)."""

    status = 501
    code = "not_supported"


class UpstreamError(BackendError):
    """The engine answered with an error; its status (4xx) and message are passed on."""

    def __init__(self, status: int, message: str, engine: str) -> None:
        self.status = status if 400 <= status < 600 else 502
        self.error_type = "invalid_request_error" if 400 <= status < 500 else "api_error"
        super().__init__(f"{engine}: {message}")


class QueueFull(BackendError):
    """Too many requests: the queue is full or the wait timed out."""

    status = 429
    code = "rate_limit_exceeded"
    error_type = "rate_limit_error"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestStopped(BackendError):
    """autotune stopped a running request: over ``AUTOTUNE_MAX_REQUEST_SECONDS`` (504), cancelled
    by the operator (499, as a cancelled call is), or the server stopping (503). Before the
    first byte it is the answer; after it, the stream's error event."""

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    @classmethod
    def over_time(cls, seconds: float) -> RequestStopped:
        return cls(
            f"The request ran for longer than {seconds:g} s (AUTOTUNE_MAX_REQUEST_SECONDS) and "
            "was stopped; ask for fewer tokens (max_tokens) or a shorter prompt.",
            status=504,
            code="request_timeout",
        )

    @classmethod
    def cancelled(cls, request_id: str) -> RequestStopped:
        return cls(
            f"The request {request_id} was cancelled by the operator of this autotune "
            "(DELETE /api/requests/{id}).",
            status=499,
            code="request_cancelled",
        )

    @classmethod
    def shutting_down(cls) -> RequestStopped:
        return cls(
            "autotune is shutting down: the request was stopped before it finished (nothing "
            "of it was stored). Send it again once autotune is back.",
            status=503,
            code="server_shutting_down",
        )


def error_summary(exc: BaseException) -> str:
    """What telemetry keeps of an error: autotune's own message, but never an engine's words,
    which can quote the prompt or the output (vLLM validation errors echo ``input_value``)."""
    if isinstance(exc, UpstreamError):
        return f"{type(exc).__name__}: HTTP {exc.status} from the engine ({exc.code})"
    if isinstance(exc, BackendError):
        return f"{type(exc).__name__}: {exc.message}"[:300]
    return type(exc).__name__
