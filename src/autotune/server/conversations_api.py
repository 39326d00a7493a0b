"""The conversation endpoints: create, list, read, delete and export as Markdown.

An id must match the one pattern (:mod:`autotune.ground.ids`) to be created. One stored before
every face checked it (``a b``, ``x/../y``, a mis-decoded ``é``) stays readable, exportable and
deletable by its exact text: an id outside the pattern is looked up before it is refused.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse

from autotune.ground.errors import storage_failure
from autotune.ground.ids import CONVERSATION_ID_PATTERN, CONVERSATION_ID_RULE, is_conversation_id
from autotune.operations.conversations import delete_conversation
from autotune.server.errors import error_response
from autotune.server.schemas import ConversationCreate
from autotune.store.conversations import ConversationStore

__all__ = ["CONVERSATION_ID_PATTERN", "content_disposition", "router"]

router = APIRouter(prefix="/api/conversations")

ConversationId = Annotated[
    str,
    Path(
        description=f"{CONVERSATION_ID_RULE} (an id stored before this rule is found by its "
        "exact text too)",
    ),
]


def _store(request: Request) -> ConversationStore:
    store: ConversationStore = request.app.state.store
    return store


def _not_found(conv_id: str) -> Response:
    """404 for an id that could exist; 400 saying what an id may be for one that cannot."""
    if not is_conversation_id(conv_id):
        return error_response(
            f"{conv_id[:100]!r} is not a conversation id: an id is {CONVERSATION_ID_RULE}.",
            status=400,
            param="conv_id",
            code="invalid_request",
        )
    return error_response(f"No conversation {conv_id!r}.", status=404, code="not_found")


@router.post("", status_code=201)
async def create(body: ConversationCreate, request: Request) -> Any:
    store = _store(request)
    if body.id:
        existing = await asyncio.to_thread(store.get, body.id, with_messages=False)
        if existing is not None:
            return error_response(
                f"Conversation {body.id!r} already exists.", status=409, code="conflict"
            )
    try:
        conv = await asyncio.to_thread(
            store.create,
            id=body.id,
            title=body.title,
            model=body.model,
            profile=body.profile,
            system=body.system,
        )
    except (sqlite3.Error, OSError) as exc:
        raise storage_failure(exc, "The conversation") or exc from None
    return conv.as_dict()


@router.get("")
async def list_conversations(
    request: Request,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=2**62),
) -> dict[str, Any]:
    convs = await asyncio.to_thread(_store(request).list, limit=limit, offset=offset)
    return {"conversations": [c.as_dict(with_messages=False) for c in convs]}


@router.get("/{conv_id}")
async def get(conv_id: ConversationId, request: Request) -> Any:
    conv = await asyncio.to_thread(_store(request).get, conv_id)
    return conv.as_dict() if conv else _not_found(conv_id)


@router.delete("/{conv_id}", status_code=204)
async def delete(conv_id: ConversationId, request: Request) -> Response:
    deleted = await delete_conversation(request.app.state.runtime, conv_id)
    return Response(status_code=204) if deleted else _not_found(conv_id)


@router.get("/{conv_id}/export")
async def export(conv_id: ConversationId, request: Request) -> Response:
    text = await asyncio.to_thread(_store(request).export_markdown, conv_id)
    if text is None:
        return _not_found(conv_id)
    return PlainTextResponse(
        text,
        media_type="text/markdown; charset=utf-8",
        headers={"Content-Disposition": content_disposition(f"{conv_id}.md")},
    )


@router.api_route("/{rest:path}", methods=["GET", "DELETE"], include_in_schema=False)
async def slashed(rest: str, request: Request) -> Response:
    """An id with a ``/`` in it (``a/b``, or ``a/b/export``): no new conversation can have one,
    but one stored before the id rule is found by its exact text; anything else is a 400
    that says what an id may be, rather than a bare 404."""
    if not rest:  # /api/conversations/ is the list, as before
        return RedirectResponse("/api/conversations", status_code=307)
    store = _store(request)
    if await asyncio.to_thread(store.get, rest, with_messages=False) is not None:
        if request.method == "DELETE":
            return await delete(rest, request)
        return JSONResponse(await get(rest, request))
    stem, _, tail = rest.rpartition("/")
    if request.method == "GET" and tail == "export" and stem:
        return await export(stem, request)
    return _not_found(rest)


def content_disposition(filename: str) -> str:
    """``attachment`` with an ASCII fallback name and the exact name as RFC 6266/8187
    ``filename*`` (percent-encoded UTF-8), so no name can break the header."""
    fallback = re.sub(r"[^A-Za-z0-9_.-]", "_", filename) or "conversation.md"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
