"""``autotune recall search`` and ``recall import`` through Typer, on a real database file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from autotune.cli.recall import register
from autotune.ground.config import get_settings
from autotune.recall.embed import minilm_available
from autotune.recall.manager import MEMORY_THRESHOLD

CORPUS = Path(__file__).parents[1] / "fixtures" / "recall" / "corpus.jsonl"


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:
        """A stand-in for the autotune root command."""

    register(app)
    return app


def run(app: typer.Typer, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["recall", *args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_import_then_search_by_words(cli: typer.Typer) -> None:
    code, out, _ = run(cli, "import", str(CORPUS), "--json", "--no-index")
    report = json.loads(out)
    assert code == 0 and report["imported"] == 44 and report["bad_lines"] == []
    assert get_settings().db_path.exists()  # the database lives under AUTOTUNE_HOME
    code, out, _ = run(cli, "search", "exit code 137", "--fts", "--json", "--limit", "2")
    result = json.loads(out)
    assert code == 0 and result["mode"] == "fts" and len(result["hits"]) <= 2
    assert result["hits"][0]["conversation_id"] == "k8s-oom"
    assert {"title", "snippet", "created_at", "model", "seq", "role"} <= set(result["hits"][0])
    code, out, _ = run(cli, "search", "acetone", "--fts")
    assert code == 0 and "sourdough" in out and "Sourdough starter" in out


def test_reimporting_reports_everything_already_there(cli: typer.Typer) -> None:
    run(cli, "import", str(CORPUS), "--no-index")
    code, out, _ = run(cli, "import", str(CORPUS), "--no-index")
    assert code == 0 and "Imported 0 conversation(s)" in out and "44 already there" in out


@pytest.mark.parametrize("query", ["C++", '"unterminated', "AND(", "*", "NEAR", "-"])
def test_search_with_special_characters_succeeds(cli: typer.Typer, query: str) -> None:
    run(cli, "import", str(CORPUS), "--no-index")
    code, out, err = run(cli, "search", query, "--fts", "--json")
    assert code == 0 and isinstance(json.loads(out)["hits"], list) and not err


def test_search_on_an_empty_home_says_so(cli: typer.Typer) -> None:
    code, out, _ = run(cli, "search", "anything", "--fts")
    assert code == 0 and "No conversation matches 'anything'." in out


def test_full_text_search_without_every_word_says_no_match_then_lists_partial_ones(
    cli: typer.Typer,
) -> None:
    """Full text has no measure of meaning: a message must hold every word to match."""
    run(cli, "import", str(CORPUS), "--no-index")
    code, out, _ = run(cli, "search", "acetone smell in my quarterly tax return", "--fts", "--json")
    result = json.loads(out)
    assert code == 0 and result["hits"] == [] and result["similarity_threshold"] is None
    assert {"sourdough", "tax-deadline"} <= {h["conversation_id"] for h in result["some_words"]}
    code, out, _ = run(cli, "search", "acetone smell in my quarterly tax return", "--fts")
    assert out.startswith("No conversation matches 'acetone smell in my quarterly tax return'.")
    assert "share some" in out and "Sourdough starter" in out
    code, out, _ = run(cli, "search", "zeppelin", "--fts", "--json")
    assert json.loads(out)["hits"] == json.loads(out)["some_words"] == []


def test_a_file_with_bad_lines_imports_the_rest_and_exits_1(
    cli: typer.Typer, tmp_path: Path
) -> None:
    path = tmp_path / "mixed.jsonl"
    good = {"id": "ok", "messages": [{"role": "user", "content": "hello"}]}
    path.write_text(json.dumps(good) + "\nnot json\n")
    code, out, err = run(cli, "import", str(path), "--no-index")
    assert code == 1 and "Imported 1 conversation(s)" in out
    assert "line 2:" in err and "invalid JSON" in err


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_an_unreadable_file_is_one_readable_line(
    cli: typer.Typer, tmp_path: Path, kind: str
) -> None:
    target = tmp_path / "nope.jsonl"
    if kind == "directory":
        target.mkdir()
    code, out, err = run(cli, "import", str(target))
    assert code == 1 and out == ""
    assert err.startswith("error: ") and str(target) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2  # the error and a hint


@pytest.mark.skipif(not minilm_available(), reason="needs the offline embedding model")
def test_import_embeds_and_search_is_hybrid(cli: typer.Typer) -> None:
    code, out, _ = run(cli, "import", str(CORPUS), "--json")
    assert code == 0 and json.loads(out)["indexed"] == 90
    code, out, _ = run(cli, "search", "my kitchen scrap pile stinks", "--json", "-n", "3")
    result = json.loads(out)
    assert result["mode"] == "hybrid" and result["embedder"].startswith("minilm:")
    assert result["hits"][0]["conversation_id"] == "compost"
    assert result["hits"][0]["similarity"] is not None


@pytest.mark.skipif(not minilm_available(), reason="needs the offline embedding model")
def test_an_unrelated_query_matches_no_conversation(cli: typer.Typer) -> None:
    """Before the threshold, this listed ten unrelated conversations, ranked."""
    run(cli, "import", str(CORPUS))
    code, out, _ = run(cli, "search", "who painted the Sistine Chapel ceiling")
    assert code == 0
    assert out.strip() == "No conversation matches 'who painted the Sistine Chapel ceiling'."
    code, out, _ = run(cli, "search", "how many moons does Jupiter have", "--json")
    result = json.loads(out)
    assert result["hits"] == [] and result["some_words"] == []
    assert result["similarity_threshold"] == MEMORY_THRESHOLD
    code, out, _ = run(cli, "search", "my levain smells like nail varnish", "--json")
    found = json.loads(out)["hits"]
    assert [h["conversation_id"] for h in found] == ["sourdough"]  # and nothing unrelated
    assert found[0]["similarity"] >= MEMORY_THRESHOLD
