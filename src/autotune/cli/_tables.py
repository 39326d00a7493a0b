"""Tables that never cut a name: cells wrap between words instead of ending in "…", and what
matters comes first.

Rich shrinks every column of a table wider than the terminal (80 columns when the output is
piped) and cuts what does not fit with an ellipsis, so ``smollm2:135m`` became ``smoll…``.
Here the column widths are chosen before Rich sees the table: a column that holds names
(models, engines, URLs) gets the width of its longest value (up to :data:`NAME_WIDTH_CAP`
characters, beyond which a name folds onto a second line), every other column at least its
longest word, and the space left over goes to the leading columns first. The
columns are given most important first; when even that does not fit the terminal, the last
ones are left out and a dim line names them. ``--json`` always has every field in full.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table
from rich.text import Text

__all__ = ["NAME_WIDTH_CAP", "Column", "column_widths", "details_table", "print_table"]

#: A name longer than this may fold onto a second line rather than squeeze every other column.
NAME_WIDTH_CAP = 40


@dataclass(frozen=True)
class Column:
    """One column: its header, right-aligned (numbers) or not, and whether it holds names."""

    header: str
    right: bool = False
    #: Holds names (a model, an engine, a URL) that should stay whole on one line.
    name: bool = False


def _plain(cell: str) -> str:
    return Text.from_markup(cell).plain


def _span(col: Column, cells: Sequence[str]) -> tuple[int, int]:
    """(narrowest, natural) width of a column: its longest word and its longest cell."""
    texts = [col.header, *(_plain(c) for c in cells)]
    natural = max(len(t) for t in texts)
    if col.name:
        width = min(NAME_WIDTH_CAP, natural)
        return width, width
    return max(len(w) for t in texts for w in (t.split() or [""])), natural


def _frame(n: int) -> int:
    """Characters a boxed table with ``n`` columns spends on borders and padding."""
    return 3 * n + 1


def column_widths(
    columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int
) -> list[int]:
    """Widths for the leading columns that fit in ``width`` (always at least the first).

    Each kept column gets at least its longest word (a name column: its longest name, up to
    the cap); if the natural widths do not all fit, the room left goes to the leading columns
    first, so the most important ones are the ones that do not wrap.
    """
    spans = [_span(col, [r[i] for r in rows]) for i, col in enumerate(columns)]
    keep = len(spans)
    while keep > 1 and sum(s[0] for s in spans[:keep]) + _frame(keep) > width:
        keep -= 1
    spans = spans[:keep]
    room = width - _frame(keep)
    natural = [s[1] for s in spans]
    if sum(natural) <= room:
        return natural
    widths = [s[0] for s in spans]
    spare = max(0, room - sum(widths))
    for i, (narrow, full) in enumerate(spans):  # the leading (more important) columns first
        grant = min(spare, full - narrow)
        widths[i] += grant
        spare -= grant
    return widths


def print_table(
    console: Console,
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    *,
    title: str | None = None,
) -> list[str]:
    """Print ``rows`` under ``columns`` within ``console``'s width; returns the headers of the
    columns left out for want of width, which a dim line also names."""
    widths = column_widths(columns, rows, console.width)
    table = Table(title=title, title_justify="left")
    for col, width in zip(columns, widths, strict=False):
        table.add_column(
            col.header, justify="right" if col.right else "left", overflow="fold", width=width
        )
    for row in rows:
        table.add_row(*row[: len(widths)])
    console.print(table)
    dropped = [c.header for c in columns[len(widths) :]]
    if dropped:
        console.print(
            f"[dim]Not shown at this width: {', '.join(dropped)} "
            "(widen the terminal, or use --json).[/]",
            soft_wrap=False,
        )
    return dropped


def details_table() -> Table:
    """A borderless label/value table (``show``, ``hardware``) whose values fold, never cut."""
    table = Table(show_header=False, box=None, padding=(0, 2))
    table.add_column("label", no_wrap=True)
    table.add_column("value", overflow="fold")
    return table
