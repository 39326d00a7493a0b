"""``autotune kv``: the KV caches saved on disk — list them (with what each prompt starts
with), remove them."""

from __future__ import annotations

import time
from typing import Any

import typer

from autotune.cli._common import console, fail, print_json
from autotune.cli._help import PlainCommand, PlainGroup
from autotune.cli._tables import Column, print_table
from autotune.ground.config import get_settings
from autotune.ground.units import format_bytes

__all__ = ["register"]

_COLUMNS = (
    Column("starts with", name=True),
    Column("model", name=True),
    Column("tokens", right=True),
    Column("size", right=True),
    Column("hits", right=True),
    Column("last used"),
    Column("conversation", name=True),
)


def _open() -> Any:
    from autotune.runtime import kv_disk_budget
    from autotune.store.db import Database
    from autotune.store.kv import KvStore

    settings = get_settings()
    return KvStore(Database(settings.db_path), settings.kv_dir), kv_disk_budget(settings)


def ls(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List the saved KV caches: what each prompt starts with, model, tokens, size on disk,
    restores (hits), and the conversation it was saved from when the client named one.

    A prompt's KV is saved after a long turn, when its engine slot goes to another prompt,
    and before the engine unloads, reloads or stops; any later request whose prompt starts
    the same way (the next turn of that conversation, or a new session with the same
    preamble) gets it restored instead of computed again. The files hold the conversations
    in another form: they are readable by you alone. Reads AUTOTUNE_HOME; the disk budget is
    AUTOTUNE_KV_DISK_BUDGET.
    """
    store, budget = _open()
    try:
        rows = store.rows()
    finally:
        store.db.close()
    total = sum(r["bytes"] for r in rows)
    if json_out:
        print_json({"files": rows, "bytes": total, "budget": budget, "folder": store.directory})
        return
    if not rows:
        console.print("No saved KV caches yet.")
        return
    cells = [
        [
            r["preview"] or "—",
            r["model"],
            str(r["tokens"]),
            format_bytes(r["bytes"]),
            str(r["hits"]),
            time.strftime("%m-%d %H:%M", time.localtime(r["last_used"])),
            r["conversation_id"] or "—",
        ]
        for r in rows
    ]
    title = f"{len(rows)} saved KV caches, {format_bytes(total)} of {format_bytes(budget)}"
    print_table(console, _COLUMNS, cells, title=title)


def rm(
    conversations: list[str] = typer.Argument(
        None, metavar="CONVERSATION", help="Conversation ids whose KV files to remove."
    ),
    all_: bool = typer.Option(False, "--all", help="Remove every saved KV cache."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Remove saved KV caches: those saved from the named conversations, or all of them
    (the conversations stay; the next request prefills afresh)."""
    if not conversations and not all_:
        raise fail("Name the conversations to remove, or pass --all.", code=2)
    store, _ = _open()
    try:
        if all_:
            removed = {"*": store.remove_all()}
        else:
            removed = {name: store.forget_conversation(name) for name in conversations}
    finally:
        store.db.close()
    if json_out:
        print_json({"removed": removed})
        return
    missing = [name for name, n in removed.items() if not n]
    count = sum(removed.values())
    console.print(f"Removed {count} KV file{'s' if count != 1 else ''}.")
    if missing and not all_:
        console.print(f"No saved KV cache for: {', '.join(missing)}")


def register(app: typer.Typer) -> None:
    """Add the ``kv`` group (``ls``, ``rm``) to the ``autotune`` command."""
    group = typer.Typer(
        name="kv",
        help="Conversations' saved KV caches on disk: list them, remove them.",
        no_args_is_help=True,
        cls=PlainGroup,
    )
    group.command("ls", cls=PlainCommand)(ls)
    group.command("rm", cls=PlainCommand)(rm)
    app.add_typer(group, name="kv")
