"""``autotune recall``: search past conversations and import conversations from JSONL files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from autotune.cli._common import console, err_console, fail, print_json
from autotune.cli._help import PlainCommand, PlainGroup

__all__ = ["register"]

#: Files at least this big get a progress bar while they are read.
_PROGRESS_BYTES = 1 << 20
_SHOWN_BAD_LINES = 20


def _manager(fts_only: bool) -> Any:
    from autotune.ground.config import get_settings
    from autotune.recall.embed import default_embedder
    from autotune.recall.manager import RecallManager
    from autotune.store.db import Database

    db = Database(get_settings().db_path)
    return RecallManager(db, None if fts_only else default_embedder())


def _index(manager: Any, *, quiet: bool) -> int:
    """Embed the messages that lack vectors, with a progress bar when there are any."""
    from autotune.recall.embed import EmbedderUnavailable

    pending = manager.pending_count()
    if not pending:
        return 0
    with Progress(
        TextColumn("embedding"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=quiet,
    ) as progress:
        task = progress.add_task("embedding", total=pending)
        try:
            return int(manager.index_pending(progress=lambda n: progress.advance(task, n)))
        except EmbedderUnavailable as exc:
            raise fail(str(exc)) from None


def search(
    query: str = typer.Argument(..., metavar="QUERY", help="What to look for, in your own words."),
    limit: int = typer.Option(
        10, "--limit", "-n", min=1, metavar="N", help="At most this many results."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    fts_only: bool = typer.Option(
        False, "--fts", help="Full-text search only (skip the embedding model)."
    ),
) -> None:
    """Find past conversations by meaning and by words; each result names its conversation id.

    A conversation matches when one of its messages holds every word of the query or, with
    the embedding model, is as close in meaning as a recalled memory must be. Full-text
    search alone has no such measure of meaning: when no message holds every word, it lists
    the conversations that share some, and says so. Searches the conversations stored under
    AUTOTUNE_HOME.
    """
    from autotune.recall.manager import MEMORY_THRESHOLD

    manager = _manager(fts_only)
    try:
        _index(manager, quiet=json_out)
        hits = manager.search(query, limit=limit, relevant_only=True)
        some_words = []
        if not hits and manager.embedder is None:
            some_words = manager.search_fts(query, limit=limit)
    finally:
        manager.db.close()
    mode = "fts" if manager.embedder is None else "hybrid"
    if json_out:
        print_json(
            {
                "query": query,
                "mode": mode,
                "embedder": manager.embedder.name if manager.embedder else None,
                "similarity_threshold": MEMORY_THRESHOLD if manager.embedder else None,
                "hits": hits,
                "some_words": some_words,
            }
        )
        return
    if hits:
        _print_hits(hits)
    else:
        console.print(f"No conversation matches {escape(repr(query))}.")
    if some_words:
        console.print("No message holds all of its words; conversations that share some:")
        _print_hits(some_words)
    if mode == "fts":
        console.print("[dim](full-text search only: no embedding model in use)[/]")


def _print_hits(hits: list[Any]) -> None:
    for hit in hits:
        when = time.strftime("%Y-%m-%d", time.localtime(hit.created_at))
        title = escape(hit.title or "(untitled)")
        model = f" · {escape(hit.model)}" if hit.model else ""
        console.print(f"[bold]{title}[/]  [dim]{when}{model} · {hit.conversation_id}[/]")
        console.print(f"  [dim]{hit.role}:[/] {escape(hit.snippet)}")


def import_(
    file: Path = typer.Argument(
        ..., metavar="FILE", help="A JSONL file: one conversation object per line."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    no_index: bool = typer.Option(
        False, "--no-index", help="Do not embed the imported turns now (search will)."
    ),
) -> None:
    """Import conversations from a JSONL file; importing the same file twice adds nothing.

    Each line is one conversation: an object with "id", "title" and "messages" (OpenAI-style
    messages). Exits 1 when a line could not be imported (each is listed with its line
    number). Conversations are stored in the database under AUTOTUNE_HOME.
    """
    if not file.exists():
        raise fail(f"{file} does not exist.", "Pass the path of a JSONL file of conversations.")
    if file.is_dir():
        raise fail(f"{file} is a directory.", "Pass the path of a JSONL file of conversations.")
    manager = _manager(no_index)
    size = file.stat().st_size
    try:
        with Progress(
            TextColumn("importing"),
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
            disable=json_out or size < _PROGRESS_BYTES,
        ) as progress:
            task = progress.add_task("importing", total=size)
            report = manager.import_jsonl(
                file, progress=lambda done, total: progress.update(task, completed=done)
            )
        indexed = _index(manager, quiet=json_out)
    except OSError as exc:
        raise fail(f"cannot read {file}: {exc.strerror or exc}.") from None
    finally:
        manager.db.close()
    if json_out:
        print_json({**_report_dict(report), "indexed": indexed})
    else:
        console.print(
            f"Imported {report.imported} conversation(s) ({report.messages} message(s)) from "
            f"{escape(str(file))}: {report.updated} extended, {report.unchanged} already there."
        )
        for bad in report.bad_lines[:_SHOWN_BAD_LINES]:
            err_console.print(f"[yellow]line {bad.line}:[/] {escape(bad.reason)}")
        if len(report.bad_lines) > _SHOWN_BAD_LINES:
            err_console.print(f"… and {len(report.bad_lines) - _SHOWN_BAD_LINES} more bad lines")
    if report.bad_lines:
        raise typer.Exit(1)


def _report_dict(report: Any) -> dict[str, Any]:
    return {
        "path": report.path,
        "lines": report.lines,
        "imported": report.imported,
        "updated": report.updated,
        "unchanged": report.unchanged,
        "messages": report.messages,
        "bad_lines": [{"line": b.line, "reason": b.reason} for b in report.bad_lines],
    }


def register(app: typer.Typer) -> None:
    """Add the ``recall`` group (``search``, ``import``) to the ``autotune`` command."""
    group = typer.Typer(
        name="recall",
        help="Search and import past conversations.",
        no_args_is_help=True,
        cls=PlainGroup,
    )
    group.command("search", cls=PlainCommand)(search)
    group.command("import", cls=PlainCommand)(import_)
    app.add_typer(group, name="recall")
