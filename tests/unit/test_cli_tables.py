"""The CLI's table layout: names whole, words unbroken, what matters first (pure, no engine)."""

from __future__ import annotations

from rich.console import Console

from autotune.cli._tables import NAME_WIDTH_CAP, Column, column_widths, print_table

COLUMNS = (
    Column("model", name=True),
    Column("verdict"),
    Column("size", right=True),
    Column("engine", name=True),
    Column("trained ctx", right=True),
)
ROWS = [
    ["smollm2:135m", "[green]fits comfortably[/]", "93.8 MiB", "embedded", "8,192"],
    ["mistral-small:24b-instruct-2501-q4_K_M", "will not fit", "14.3 GiB", "ollama", "32,768"],
]


def render(width: int, rows: list[list[str]] = ROWS) -> tuple[str, list[str]]:
    console = Console(width=width, record=True, no_color=True)
    dropped = print_table(console, COLUMNS, rows, title="Local models")
    return console.export_text(), dropped


def test_a_wide_terminal_shows_every_column_on_one_line_per_row() -> None:
    text, dropped = render(200)
    assert dropped == []
    lines = [line for line in text.splitlines() if "smollm2:135m" in line]
    assert len(lines) == 1 and "fits comfortably" in lines[0] and "8,192" in lines[0]


def test_at_80_columns_names_stay_whole_and_no_cell_is_cut() -> None:
    text, _ = render(80)
    assert "…" not in text
    assert "smollm2:135m" in text and "mistral-small:24b-instruct-2501-q4_K_M" in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_a_narrow_terminal_keeps_the_leading_columns_and_names_the_rest() -> None:
    text, dropped = render(60)
    assert dropped and dropped[-1] == "trained ctx"  # the least important goes first
    assert "model" in text and "mistral-small:24b-instruct-2501-q4_K_M" in text
    assert f"Not shown at this width: {', '.join(dropped)}" in " ".join(text.split())


def test_widths_never_break_a_word_and_spare_room_goes_to_the_first_columns() -> None:
    widths = column_widths(COLUMNS, ROWS, 80)
    assert widths[0] == len("mistral-small:24b-instruct-2501-q4_K_M")
    assert widths[1] >= len("comfortably")  # a wrapped cell still breaks between words
    frame = 3 * len(widths) + 1
    assert sum(widths) + frame <= 80


def test_a_name_longer_than_the_cap_folds_instead_of_taking_the_whole_table() -> None:
    long_name = "w" * (NAME_WIDTH_CAP + 15)
    widths = column_widths(COLUMNS, [[long_name, "tight", "1 GiB", "embedded", "4,096"]], 200)
    assert widths[0] == NAME_WIDTH_CAP
    text, _ = render(120, [[long_name, "tight", "1 GiB", "embedded", "4,096"]])
    assert "…" not in text and text.count("w") == len(long_name)
