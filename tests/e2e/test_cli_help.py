"""Every command's ``--help`` as a user reads it: plain metavars, no raw placeholders, the settings.

In-process through Typer's test runner (a subprocess per command would add a second each);
the output is not a terminal, as when help is piped, and 80 columns wide.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from autotune.cli.main import app

COMMANDS = [
    [],
    ["hardware"],
    ["ls"],
    ["show"],
    ["ps"],
    ["recommend"],
    ["chat"],
    ["run"],
    ["serve"],
    ["telemetry"],
    ["recall"],
    ["recall", "search"],
    ["recall", "import"],
    ["proof"],
    ["tune"],
    ["mlx"],
    ["pull"],
]


def help_text(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "autotune")
def test_help_has_no_raw_placeholders(command: list[str]) -> None:
    text = help_text(*command)
    for raw in ("<bool>", "<str>", "<int", "<float", "<path>", "{", "}", "``"):
        assert raw not in text, f"{raw!r} in `autotune {' '.join(command)} --help`"
    assert "…" not in text


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (["show"], ["Usage: autotune show [OPTIONS] MODEL"]),
        (["run"], ["Usage: autotune run [OPTIONS] MODEL", "--context", "TOKENS"]),
        (["tune"], ["Usage: autotune tune [OPTIONS] [MODEL]", "SECONDS"]),
        (["recall", "search"], ["QUERY", "--limit", " N "]),
        (["recall", "import"], ["FILE"]),
        (["proof"], ["DIR", "MODEL"]),
        (["pull"], ["Usage: autotune pull [OPTIONS] NAME", "--force", "HF_ENDPOINT", "HF_TOKEN"]),
        ([], ["ENGINE", "AUTOTUNE_BACKEND"]),
    ],
)
def test_help_names_plain_metavars(command: list[str], shown: list[str]) -> None:
    text = help_text(*command)
    for piece in shown:
        assert piece in text


def test_serve_help_names_the_settings_it_reads() -> None:
    text = " ".join(help_text("serve").split())
    for name in (
        "AUTOTUNE_HOST",
        "AUTOTUNE_PORT",
        "AUTOTUNE_API_KEY",
        "AUTOTUNE_BACKEND",
        "AUTOTUNE_PROFILE",
        "AUTOTUNE_MEMORY_BUDGET",
        "AUTOTUNE_DEFAULT_MODEL",
        "AUTOTUNE_MAX_CONCURRENT",
        "AUTOTUNE_MAX_QUEUED",
        "AUTOTUNE_WAIT_TIMEOUT",
        "AUTOTUNE_ROUTER_CONFIG",
        "AUTOTUNE_HOME",
    ):
        assert name in text


@pytest.mark.parametrize(
    ("command", "setting"),
    [
        (["hardware"], "AUTOTUNE_MEMORY_BUDGET"),
        (["ls"], "AUTOTUNE_MODELS_DIR"),
        (["show"], "AUTOTUNE_MEMORY_BUDGET"),
        (["recommend"], "AUTOTUNE_MEMORY_BUDGET"),
        (["ps"], "AUTOTUNE_PORT"),
        (["chat"], "AUTOTUNE_DEFAULT_MODEL"),
        (["run"], "AUTOTUNE_MEMORY_BUDGET"),
        (["telemetry"], "AUTOTUNE_HOME"),
        (["tune"], "AUTOTUNE_DEFAULT_MODEL"),
    ],
)
def test_each_command_names_the_settings_it_reads(command: list[str], setting: str) -> None:
    assert setting in help_text(*command)
