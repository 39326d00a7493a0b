"""Ollama's native API over autotune's pipeline: ``/api/chat``, ``/api/generate``, ``/api/tags``,
``/api/show``, ``/api/ps``, ``/api/version`` and ``/api/pull``.

Apps written for Ollama (the official clients, Open WebUI, Continue, LangChain's
``ChatOllama``…) talk to autotune unchanged. Every chat goes through
:meth:`~autotune.pipeline.Pipeline.start` exactly as ``/v1/chat/completions`` does — the same
admission, planner, context window, conversation store (``X-Conversation-Id``), telemetry
and ``X-Autotune-Plan`` header; this module only translates (:mod:`.ollama_wire`). Errors
answer in Ollama's shape, ``{"error": "..."}``, with a real 4xx/5xx status, on every path
of Ollama's API (:data:`ERRORS`), those raised before a route included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.routing import APIRoute

from autotune.ground.errors import BackendError, InvalidRequest, ModelNotFound
from autotune.ground.types import PullProgress
from autotune.operations.engines import load_ahead, unload
from autotune.operations.inventory import described, file_identity, loaded_models, model_details
from autotune.operations.pull import prepare_pull
from autotune.pipeline import ChatRun, Pipeline
from autotune.pipeline.complete import CompletionInput, start_completion
from autotune.server.completions import completion_headers
from autotune.server.driver import CALL, Call
from autotune.server.errors import ErrorShape
from autotune.server.headers import HEADER_DOCS
from autotune.server.ollama_models import details, model_info, ps_entry, tag_entry
from autotune.server.ollama_reply import ReplyShape, created_at, done_fields
from autotune.server.ollama_wire import (
    OLLAMA_API_VERSION,
    OLLAMA_PATHS,
    ChatBody,
    GenerateBody,
    ModelBody,
    PullBody,
    Translated,
    is_completion,
    translate,
    validation_message,
)

__all__ = ["AUTOTUNE_API_PATHS", "ERRORS", "AnyContentType", "router"]

_NDJSON = "application/x-ndjson"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_ERRORS: dict[int | str, dict[str, Any]] = {status: {} for status in (400, 404, 413, 429, 503)}


def _error(exc: BackendError) -> dict[str, Any]:
    """Ollama's error shape, ``{"error": "..."}`` (with Ollama's own wording for an unknown
    model, which apps look for)."""
    if isinstance(exc, ModelNotFound):
        return {"error": f"model '{exc.model}' not found" + (f" ({exc.hint})" if exc.hint else "")}
    return {"error": str(exc)}


def _invalid(exc: RequestValidationError) -> InvalidRequest:
    return InvalidRequest(validation_message(exc.errors()))


#: autotune's own routes under ``/api`` (the dashboard's and the conversations'): every other
#: ``/api/…`` path is Ollama's, and an unknown one is a 404 in Ollama's shape.
AUTOTUNE_API_PATHS = (
    "/api/conversations",
    "/api/events",
    "/api/hardware",
    "/api/kv",
    "/api/profiles",
    "/api/requests",
    "/api/running_models",
)

#: Ollama's error shape, for every path of Ollama's API (those autotune does not offer too,
#: and any other ``/api/…`` path that is not autotune's own).
ERRORS = ErrorShape(
    "Ollama",
    _error,
    paths=(*OLLAMA_PATHS, "/api"),
    except_paths=AUTOTUNE_API_PATHS,
    describe=_invalid,
)


class AnyContentType(APIRoute):
    """A route that reads its body as JSON whatever the ``Content-Type`` says, as Ollama does
    (its handlers bind JSON without looking at the header): litellm (aider's ``ollama_chat/``)
    posts without one, and the curl examples of Ollama's docs send ``-d`` as a form."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            kind = request.headers.get("content-type", "")
            if request.method != "GET" and "json" not in kind.lower():
                headers = [(k, v) for k, v in request.scope["headers"] if k != b"content-type"]
                scope = {**request.scope, "headers": [*headers, (b"content-type", _JSON)]}
                request = Request(scope, request.receive)
            return await handler(request)

        return route


_JSON = b"application/json"
router = APIRouter(tags=["ollama"], route_class=AnyContentType)


def _pipeline(request: Request) -> Pipeline:
    return request.app.state.pipeline


def _line(obj: dict[str, Any]) -> bytes:
    return _dumps(obj).encode() + b"\n"


# --------------------------------------------------------------------------- chat & generate


@router.post(
    "/api/chat",
    responses={200: {"content": {_NDJSON: {}}}, **_ERRORS},
    summary="Ollama chat (NDJSON stream unless stream is false)",
    openapi_extra=HEADER_DOCS,
)
async def chat(body: ChatBody, call: Call = CALL) -> Response:
    """Ollama's ``/api/chat`` through autotune's pipeline."""
    arrived = time.monotonic_ns()
    translated = translate(body)
    shape = _shape(body.model, "chat", translated)
    return await _answer(call, body.model, translated, shape, body.stream, arrived)


@router.post(
    "/api/generate",
    responses={200: {"content": {_NDJSON: {}}}, **_ERRORS},
    summary="Ollama generate: the prompt as a user message (NDJSON stream unless stream is false)",
    openapi_extra=HEADER_DOCS,
)
async def generate(body: GenerateBody, call: Call = CALL) -> Response:
    """Ollama's ``/api/generate``: ``system`` and ``prompt`` become chat messages; a ``raw``
    prompt or a ``suffix`` (fill-in-the-middle) is completed as it is, like
    ``/v1/completions`` (which keeps no conversation: ``X-Conversation-Id`` is a 400 there)."""
    arrived = time.monotonic_ns()
    translated = translate(body)
    shape = _shape(body.model, "generate", translated)
    completion = None
    if is_completion(body):
        completion = CompletionInput(
            prompt=body.prompt or "",
            model=body.model,
            suffix=body.suffix or None,
            params=translated.params,
            profile=completion_headers(call.headers).profile,
            source="ollama",
        )
    return await _answer(call, body.model, translated, shape, body.stream, arrived, completion)


def _shape(model: str, kind: str, translated: Translated) -> ReplyShape:
    top = bool(translated.params.get("top_logprobs"))
    return ReplyShape(model, kind, translated.no_thinking, top)


async def _answer(
    call: Call,
    model: str,
    translated: Translated,
    shape: ReplyShape,
    stream: bool | None,
    arrived: int,
    completion: CompletionInput | None = None,
) -> Response:
    streaming = stream is not False  # Ollama streams unless told not to
    if completion is not None:
        started = start_completion(call.pipeline, completion)
    elif not translated.messages:
        return await _load_or_unload(call, model, translated.keep_alive, shape, streaming)
    else:
        inp = call.chat(
            translated.messages,
            model,
            translated.params,
            min_context=translated.min_context,
            keep_alive=translated.keep_alive,
            streamed=streaming,
        )
        started = call.pipeline.start(inp)

    def answer(run: ChatRun) -> _Answer:
        return _Answer(run, shape, arrived, time.monotonic_ns() - arrived)

    return await call.drive(started, answer, stream=streaming, media_type=_NDJSON)


class _Answer:
    """A run as Ollama's NDJSON objects, or one object, the last with Ollama's timings."""

    def __init__(self, run: ChatRun, shape: ReplyShape, arrived: int, waited: int) -> None:
        self.run, self.shape, self.arrived, self.waited = run, shape, arrived, waited

    def _done(self) -> dict[str, Any]:
        run = self.run
        record = run.record
        return done_fields(
            run.stats,
            total_ns=time.monotonic_ns() - self.arrived,
            waited_ns=self.waited,
            finish_reason=run.finish_reason,
            usage=run.usage,
            paid_load_ms=record.load_ms if record.reloaded else None,
        )

    async def frames(self) -> AsyncIterator[bytes]:
        run, shape = self.run, self.shape
        try:
            async for chunk in run:
                piece = shape.piece(chunk.data)
                if piece is not None:
                    yield _line(piece)
        except BackendError as exc:  # the headers are gone: report it the way Ollama streams do
            yield _line(_error(exc))
            return
        for obj in shape.closing(run.reply.tool_calls, self._done()):
            yield _line(obj)

    async def whole(self) -> dict[str, Any]:
        run = self.run
        async for _ in run:
            pass
        main = run.reply.choices.get(0)
        return self.shape.whole(
            run.reply.text,
            thinking=main.texts.get("reasoning_content") if main else None,
            calls=run.reply.tool_calls,
            probs=main.logprobs if main else None,
            done=self._done(),
        )


async def _load_or_unload(
    call: Call, model: str, keep_alive: float | None, shape: ReplyShape, streaming: bool
) -> Response:
    """A request without messages: Ollama's way to unload (``keep_alive: 0``) or preload."""
    runtime = call.runtime
    if keep_alive == 0:
        await unload(runtime, model)
    else:
        await load_ahead(runtime, model)
    obj = shape.loaded("unload" if keep_alive == 0 else "load")
    if streaming:
        return Response(_line(obj), media_type=_NDJSON)
    return JSONResponse(obj)


# --------------------------------------------------------------------------- models


@router.get("/api/tags", summary="Ollama: every model autotune can serve")
async def tags(request: Request) -> dict[str, Any]:
    """Every model the engines in use can serve, with Ollama's fields."""
    models = await described(_pipeline(request).backends)
    facts = await asyncio.to_thread(
        lambda: [file_identity(e.path or (m.path if m else None), e.name) for e, m in models]
    )
    return {
        "models": [
            tag_entry(entry, meta, digest=digest, modified=mtime)
            for (entry, meta), (digest, mtime) in zip(models, facts, strict=True)
        ]
    }


@router.post("/api/show", responses={404: {}, 400: {}}, summary="Ollama: one model's details")
async def show(body: ModelBody, request: Request) -> dict[str, Any]:
    """The model's metadata (``model_info``), details, chat template and capabilities."""
    asked = body.model or body.name
    if not asked:
        raise InvalidRequest("Missing required field 'model'.", param="model")
    found = await model_details(_pipeline(request).backends, asked)
    meta, name = found.meta, found.name
    digest, mtime = await asyncio.to_thread(file_identity, meta.path, name)
    where = f"FROM {meta.path}" if meta.path else f"# served by the {found.engine} engine"
    return {
        "modelfile": f"# autotune: {name}\n{where}\n",
        "parameters": "",
        "template": found.template or "",
        "details": details(None, meta),
        "model_info": model_info(meta),
        "capabilities": found.capabilities,
        "modified_at": created_at(mtime or 0),
        "digest": digest,
    }


@router.get("/api/ps", summary="Ollama: the models loaded now")
async def ps(request: Request) -> dict[str, Any]:
    """The models resident in the engines' memory."""
    models = []
    for model, meta in await loaded_models(_pipeline(request).backends):
        digest, _ = await asyncio.to_thread(file_identity, meta.path if meta else None, model.name)
        models.append(ps_entry(model, meta, digest=digest))
    return {"models": models}


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def root() -> Response:
    """Ollama's heartbeat (its CLI and some apps check ``/`` before anything else)."""
    return PlainTextResponse("Ollama is running", headers={"X-Served-By": "autotune"})


@router.get("/api/version", summary="Ollama: the API version autotune speaks")
async def version() -> dict[str, str]:
    """The Ollama API version this face speaks (clients gate features on it)."""
    return {"version": OLLAMA_API_VERSION}


# --------------------------------------------------------------------------- pull


@router.post(
    "/api/pull",
    responses={200: {"content": {_NDJSON: {}}}, 400: {}, 404: {}, 501: {}, 503: {}},
    summary="Ollama: download a model (NDJSON progress unless stream is false)",
)
async def pull(body: PullBody, request: Request) -> Response:
    """With Ollama in use, its own pull; else a GGUF from the Hugging Face hub for the
    embedded engine (``autotune pull``), the fit verdict checked before any byte."""
    name = body.model or body.name
    if not name:
        raise InvalidRequest("Missing required field 'model'.", param="model")
    job = await prepare_pull(request.app.state.runtime, name)
    job.check()
    steps = job.steps()
    if body.stream is not False:
        return StreamingResponse(_pull_stream(steps), media_type=_NDJSON)
    last: dict[str, Any] = {"status": "success"}
    async for step in steps:
        last = _progress(step)
    return JSONResponse(last)


def _progress(step: PullProgress) -> dict[str, Any]:
    obj: dict[str, Any] = {"status": step.status}
    digest = getattr(step, "digest", None)
    if digest:
        obj["digest"] = digest
    if step.total:
        obj["total"] = step.total
        obj["completed"] = step.completed or 0
    return obj


async def _pull_stream(steps: AsyncIterator[PullProgress]) -> AsyncIterator[bytes]:
    try:
        async for step in steps:
            yield _line(_progress(step))
    except BackendError as exc:
        yield _line(_error(exc))
    finally:
        with contextlib.suppress(Exception):
            await steps.aclose()  # type: ignore[attr-defined]
