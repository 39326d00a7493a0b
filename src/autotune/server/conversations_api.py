"""The conversation endpoints: create, list, read, delete and export as Markdown."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse

from autotune.server.errors import error_response
from autotune.server.schemas import ConversationCreate
from autotune.store.conversations import ConversationStore

__all__ = ["router"]

router = APIRouter(prefix="/api/conversations")


def _store(request: Request) -> ConversationStore:
    return request.app.state.store  # type: ignore[no-any-return]


def _not_found(conv_id: str) -> Response:
    return error_response(f"No conversation {conv_id!r}.", status=404, code="not_found")


@router.post("", status_code=201)
async def create(body: ConversationCreate, request: Request) -> Any:
    store = _store(request)
    if body.id and await asyncio.to_thread(store.get, body.id, with_messages=False):
        return error_response(
            f"Conversation {body.id!r} already exists.", status=409, code="conflict"
        )
    conv = await asyncio.to_thread(
        store.create,
        id=body.id,
        title=body.title,
        model=body.model,
        profile=body.profile,
        system=body.system,
    )
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
async def get(conv_id: str, request: Request) -> Any:
    conv = await asyncio.to_thread(_store(request).get, conv_id)
    return conv.as_dict() if conv else _not_found(conv_id)


@router.delete("/{conv_id}", status_code=204)
async def delete(conv_id: str, request: Request) -> Response:
    deleted = await asyncio.to_thread(_store(request).delete, conv_id)
    return Response(status_code=204) if deleted else _not_found(conv_id)


@router.get("/{conv_id}/export")
async def export(conv_id: str, request: Request) -> Response:
    text = await asyncio.to_thread(_store(request).export_markdown, conv_id)
    if text is None:
        return _not_found(conv_id)
    return PlainTextResponse(
        text,
        media_type="text/markdown; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{conv_id}.md"'},
    )
