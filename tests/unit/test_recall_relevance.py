"""Search with `relevant_only=True` on the labelled recall set: the bar memories use, for search.

Real offline MiniLM model and the corpus of ``tests/fixtures/recall`` (see
``test_recall_quality.py`` for what it holds). Measured when the rule was written (limit 10):
paraphrases and keyword look-ups all keep their target in the top 3, and every unrelated
question comes back empty, where the plain ranking lists ten conversations for each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from autotune.recall.embed import MiniLMEmbedder, minilm_available
from autotune.recall.manager import RecallManager
from autotune.store.db import Database

FIXTURES = Path(__file__).parents[1] / "fixtures" / "recall"
QUERIES: list[dict[str, Any]] = [
    json.loads(line) for line in (FIXTURES / "queries.jsonl").read_text().splitlines()
]


def corpus(path: Path, embedder: MiniLMEmbedder | None) -> RecallManager:
    manager = RecallManager(Database(path), embedder)
    assert manager.import_jsonl(FIXTURES / "corpus.jsonl").ok
    manager.index_pending()
    return manager


def outcome(manager: RecallManager, kind: str) -> tuple[float, int, int]:
    """(share with the target in the top 3, queries with no result, other conversations kept)."""
    labelled = [q for q in QUERIES if q["kind"] == kind]
    found = empty = others = 0
    for q in labelled:
        hits = [h.conversation_id for h in manager.search(q["query"], relevant_only=True)]
        found += q["target"] in hits[:3]
        empty += not hits
        others += sum(c != q["target"] for c in hits)
    return found / len(labelled), empty, others


@pytest.mark.skipif(not minilm_available(), reason="needs the offline embedding model")
def test_hybrid_keeps_what_is_relevant_and_nothing_for_unrelated_questions(
    tmp_path: Path,
) -> None:
    manager = corpus(tmp_path / "hybrid.db", MiniLMEmbedder())
    paraphrase, _, paraphrase_others = outcome(manager, "paraphrase")
    keyword, _, keyword_others = outcome(manager, "keyword")
    _, negative_empty, negative_others = outcome(manager, "negative")
    assert paraphrase >= 0.95 and keyword == 1.0
    assert negative_empty == 14 and negative_others == 0
    assert paraphrase_others + keyword_others <= 8  # 4 when measured; the plain ranking: 504


def test_full_text_needs_every_word(tmp_path: Path) -> None:
    """Without vectors the only bar is every word: keywords pass, unrelated questions do not."""
    manager = corpus(tmp_path / "fts.db", None)
    keyword, _, keyword_others = outcome(manager, "keyword")
    _, negative_empty, _ = outcome(manager, "negative")
    assert keyword == 1.0 and keyword_others == 0
    assert negative_empty == 14
