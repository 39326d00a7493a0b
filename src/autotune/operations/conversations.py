"""Deleting a conversation, for ``DELETE /api/conversations/{id}`` and the chat's ``/delete``:
its stored turns, and the KV cache files saved for it."""

from __future__ import annotations

import asyncio

from autotune.runtime import Runtime

__all__ = ["delete_conversation"]


async def delete_conversation(runtime: Runtime, conversation_id: str) -> bool:
    """Delete the conversation and its saved KV; False when nothing was stored under it."""
    deleted = await asyncio.to_thread(runtime.store.delete, conversation_id)
    kv = runtime.pipeline.kv
    if kv is not None:  # its saved KV goes with it
        await asyncio.to_thread(kv.store.forget_conversation, conversation_id)
    return bool(deleted)
