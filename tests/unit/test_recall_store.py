"""The recall tables on a real SQLite file: migration 3, FTS5 triggers, safe queries, vectors.

Most tests use a tiny lexical embedder defined here (feature hashing of words), a real if crude
embedder that needs no model; the MiniLM model is exercised in ``test_recall_quality.py``.
"""

from __future__ import annotations

import hashlib
import itertools
import sqlite3
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from autotune.recall.embed import Embedder
from autotune.recall.manager import RecallManager
from autotune.recall.store import (
    RECALL_MIGRATION,
    RecallStore,
    VectorIndex,
    fts_query,
)
from autotune.store import schema
from autotune.store.conversations import ConversationStore
from autotune.store.db import Database


class HashingEmbedder(Embedder):
    """Bag of words hashed into 64 buckets, plus a synonym table; deterministic and instant."""

    name = "test:hashing-64"
    batch_size = 3
    SYNONYMS: ClassVar[dict[str, str]] = {"feline": "cat", "kitty": "cat", "automobile": "car"}

    def __init__(self) -> None:
        self.calls: list[int] = []

    def embed(self, texts: list[str]) -> np.ndarray:
        self.calls.append(len(texts))
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                word = self.SYNONYMS.get(word.strip(".,?!"), word.strip(".,?!"))
                out[row, hashlib.md5(word.encode()).digest()[0] % 64] += 1.0
        return out


@pytest.fixture
def db(tmp_path: Path) -> Database:
    database = Database(tmp_path / "recall.db")
    RecallStore(database)
    return database


@pytest.fixture
def conversations(db: Database) -> ConversationStore:
    return ConversationStore(db)


def add(store: ConversationStore, id: str, *turns: str, model: str = "m") -> None:
    store.create(id=id, model=model)
    roles = ["user", "assistant"]
    store.append(id, [{"role": roles[n % 2], "content": t} for n, t in enumerate(turns)])


def fts_ids(db: Database, term: str) -> list[int]:
    rows = db.query("SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?", (f'"{term}"',))
    return sorted(int(r[0]) for r in rows)


# --------------------------------------------------------------------------- migration


def test_the_migration_is_number_3_and_listed_once_in_order() -> None:
    assert RECALL_MIGRATION[:2] == (3, "recall")
    assert [v for v, _, _ in schema.MIGRATIONS].count(3) == 1
    versions = [v for v, _, _ in schema.MIGRATIONS]
    assert versions == sorted(versions)


def test_opening_a_recall_store_migrates_an_open_database(tmp_path: Path) -> None:
    db = Database(tmp_path / "a.db")
    RecallStore(db)
    assert db.version >= 3
    names = {r[0] for r in db.query("SELECT name FROM sqlite_master")}
    assert {"messages_fts", "message_vectors", "messages_fts_insert"} <= names


def test_the_migration_backfills_messages_stored_before_it(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(schema.MIGRATIONS[0][2])
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO conversations (id, created_at, updated_at) VALUES ('old', 0, 0)")
    conn.execute(
        "INSERT INTO messages (conversation_id, seq, role, content, created_at)"
        " VALUES ('old', 1, 'user', 'my sourdough starter smells of acetone', 0)"
    )
    conn.commit()
    conn.close()
    db = Database(path)
    store = RecallStore(db)
    assert db.version >= 3
    assert [i for i, _ in store.search_fts("acetone")] == [1]
    store.integrity_check()


# --------------------------------------------------------------------------- triggers


def test_triggers_keep_the_index_in_step_on_insert_update_and_delete(
    db: Database, conversations: ConversationStore
) -> None:
    store = RecallStore(db)
    add(conversations, "c1", "borrow checker error in rust", "clone the vector first")
    add(conversations, "c2", "rust on my bike chain", "use chain oil")
    assert fts_ids(db, "rust") == [1, 3]
    store.put_vectors("v", [1], np.ones((1, 4)))
    db.execute("UPDATE messages SET content = 'lifetime error in a struct' WHERE id = 1")
    assert fts_ids(db, "rust") == [3] and fts_ids(db, "lifetime") == [1]
    # The edited message lost its now stale vector.
    assert db.query("SELECT COUNT(*) FROM message_vectors")[0][0] == 0
    store.put_vectors("v", [3], np.ones((1, 4)))
    conversations.delete("c2")  # cascades to messages, their FTS rows and their vectors
    assert fts_ids(db, "rust") == [] and fts_ids(db, "chain") == []
    assert db.query("SELECT COUNT(*) FROM message_vectors")[0][0] == 0
    store.integrity_check()


def test_integrity_check_notices_an_index_that_disagrees(db: Database) -> None:
    store = RecallStore(db)
    ConversationStore(db).create(id="c")
    db.execute("DROP TRIGGER messages_fts_insert")
    db.execute(
        "INSERT INTO messages (conversation_id, seq, role, content, created_at)"
        " VALUES ('c', 1, 'user', 'never indexed', 0)"
    )
    with pytest.raises(sqlite3.DatabaseError):
        store.integrity_check()


# --------------------------------------------------------------------------- FTS queries

NASTY = [
    "C++",
    '"unterminated',
    "AND(",
    "*",
    "NEAR",
    "-",
    "NOT",
    "OR OR OR",
    "col:value",
    "^start",
    "a AND b OR (c",
    "NEAR(a b, 2)",
    "'single' \"double\"",
    "{a b}:x",
    "",
    "   ",
    "💥 emoji",
    "x" * 5000,
]


@pytest.mark.parametrize("text", NASTY)
def test_special_characters_never_break_a_search(
    db: Database, conversations: ConversationStore, text: str
) -> None:
    add(conversations, "c", "Why does my C++ template fail? NEAR the AND( operator", "Because.")
    store = RecallStore(db)
    hits = store.search_fts(text)
    if text in ("C++", "AND(", "NEAR"):
        assert [i for i, _ in hits] == [1]


def test_fts_query_quotes_every_term_and_joins_them_with_or() -> None:
    assert fts_query("C++ and the borrow-checker") == '"c" OR "borrow" OR "checker"'
    assert fts_query('say "hi') == '"say" OR "hi"'
    assert fts_query("the and of") == '"the" OR "and" OR "of"'  # only stopwords: keep them
    assert fts_query("* - ( ) :") is None
    assert fts_query("Ünïcödé café") == '"ünïcödé" OR "café"'
    many = " ".join(f"w{n}" for n in range(100))
    assert fts_query(many).count(" OR ") == 31  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def small_store(tmp_path_factory: pytest.TempPathFactory) -> RecallStore:
    db = Database(tmp_path_factory.mktemp("hypothesis") / "h.db")
    add(ConversationStore(db), "c", "some text to match", "more words")
    return RecallStore(db)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=80))
def test_any_text_is_a_valid_query(small_store: RecallStore, text: str) -> None:
    small_store.search_fts(text)


# --------------------------------------------------------------------------- vectors


def test_nearest_matches_brute_force_cosine() -> None:
    rng = np.random.default_rng(7)
    matrix = rng.normal(size=(200, 16)).astype(np.float32)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    index = VectorIndex("m", np.arange(200, dtype=np.int64) + 1000, matrix)
    query = rng.normal(size=16).astype(np.float32)
    got = index.nearest(query * 3.0, 5)  # the query's length does not matter
    expected = np.argsort(-(matrix @ (query / np.linalg.norm(query))))[:5] + 1000
    assert [i for i, _ in got] == expected.tolist()
    assert all(a[1] >= b[1] for a, b in itertools.pairwise(got))
    with pytest.raises(ValueError, match="dimensions"):
        index.nearest(np.ones(8), 3)


def test_vectors_round_trip_as_normalised_float32_and_the_cache_refreshes(
    db: Database, conversations: ConversationStore
) -> None:
    add(conversations, "c", "one", "two", "three")
    store = RecallStore(db)
    store.put_vectors("m", [1, 2], np.array([[3.0, 4.0], [0.0, 2.0]]))
    blob, dim = db.query("SELECT vector, dim FROM message_vectors WHERE message_id = 1")[0]
    assert dim == 2 and len(blob) == 8
    assert np.frombuffer(blob, dtype="<f4").tolist() == pytest.approx([0.6, 0.8])
    first = store.vectors("m")
    assert first.ids.tolist() == [1, 2] and store.vectors("m") is first  # cached
    store.put_vectors("m", [3], np.array([[1.0, 0.0]]))
    assert store.vectors("m").ids.tolist() == [1, 2, 3]  # a new vector refreshes the cache
    store.put_vectors("m", [1], np.array([[0.0, -1.0]]))  # replacing one re-reads them all
    index = store.vectors("m")
    assert (
        sorted(index.ids.tolist()) == [1, 2, 3] and index.nearest(np.array([0, -1]), 1)[0][0] == 1
    )
    db.execute("DELETE FROM message_vectors WHERE message_id = 2")
    assert sorted(store.vectors("m").ids.tolist()) == [1, 3]
    assert RecallStore(db).vectors("m").ids.tolist() == store.vectors("m").ids.tolist()
    assert store.vectors("other").ids.tolist() == []
    with pytest.raises(ValueError):
        store.put_vectors("m", [1, 2], np.ones((1, 2)))


def test_index_pending_embeds_each_turn_once_in_batches(
    db: Database, conversations: ConversationStore
) -> None:
    add(conversations, "a", "one", "two", "three", "four")
    add(conversations, "b", "five", "")  # an empty reply is not embedded
    conversations.append("b", [{"role": "tool", "content": "tool output is not embedded"}])
    embedder = HashingEmbedder()
    manager = RecallManager(db, embedder)
    assert manager.pending_count() == 5
    assert manager.index_pending() == 5
    assert embedder.calls == [3, 2]
    assert manager.pending_count() == 0 and manager.index_pending() == 0
    add(conversations, "c", "six")
    assert manager.index_pending() == 1


# --------------------------------------------------------------------------- manager


@pytest.fixture
def zoo(db: Database, conversations: ConversationStore) -> RecallManager:
    add(conversations, "cat", "my cat vomits hairballs", "brush her daily", model="llama")
    add(conversations, "car", "the car battery dies in winter", "test the alternator")
    add(conversations, "rust", "borrow error pushing to a Vec in Rust", "collect then extend")
    manager = RecallManager(db, HashingEmbedder())
    manager.index_pending()
    return manager


def test_hybrid_search_finds_by_meaning_and_by_words(zoo: RecallManager) -> None:
    # "feline" is in no message: only the vector ranking knows it means cat.
    assert [h.conversation_id for h in zoo.search_fts("feline")] == []
    hybrid = zoo.search("feline", limit=1)
    assert hybrid[0].conversation_id == "cat" and hybrid[0].source == "hybrid"
    assert hybrid[0].similarity is not None and hybrid[0].bm25 is None
    # "alternator" is rare enough that BM25 finds it.
    top = zoo.search("alternator", limit=1)[0]
    assert top.conversation_id == "car" and top.bm25 is not None and top.seq == 2
    assert top.title == "the car battery dies in winter" and top.role == "assistant"


def test_results_are_one_per_conversation_with_its_details(zoo: RecallManager) -> None:
    hits = zoo.search("cat hairballs brush", limit=10)
    ids = [h.conversation_id for h in hits]
    assert ids[0] == "cat" and len(ids) == len(set(ids))
    assert hits[0].model == "llama" and hits[0].created_at > 0 and hits[0].snippet


def test_without_an_embedder_search_is_full_text_and_memories_are_empty(
    zoo: RecallManager,
) -> None:
    plain = RecallManager(zoo.db)
    assert [h.conversation_id for h in plain.search("alternator")] == ["car"]
    assert plain.search("feline") == [] and plain.search_vectors("feline") == []
    assert plain.memories_for("my cat vomits hairballs") == []
    assert plain.index_pending() == 0


def test_memories_respect_the_threshold_and_skip_the_current_conversation(
    zoo: RecallManager,
) -> None:
    hits = zoo.memories_for("my feline vomits hairballs", threshold=0.5)
    assert [h.conversation_id for h in hits] == ["cat"] and hits[0].score >= 0.5
    assert zoo.memories_for("my feline vomits hairballs", threshold=0.5, exclude=["cat"]) == []
    assert zoo.memories_for("completely unrelated words here", threshold=0.5) == []
    assert zoo.memories_for("   ") == []


def test_recent_conversations_show_date_model_and_first_turn(zoo: RecallManager) -> None:
    ConversationStore(zoo.db).append("cat", [{"role": "user", "content": "and fur everywhere"}])
    recent = zoo.recent_conversations(2)
    assert [c.id for c in recent] == ["cat", "rust"]
    assert recent[0].snippet == "my cat vomits hairballs" and recent[0].model == "llama"
    assert recent[0].message_count == 3


async def test_async_paths_match_the_sync_ones(zoo: RecallManager) -> None:
    ConversationStore(zoo.db).append("car", [{"role": "user", "content": "automobile wont start"}])
    assert await zoo.aindex_pending() == 1
    assert [h.conversation_id for h in await zoo.asearch("feline", limit=1)] == ["cat"]
    memories = await zoo.amemories_for("my feline vomits hairballs", threshold=0.5)
    assert [h.conversation_id for h in memories] == ["cat"]


async def test_with_nothing_else_to_recall_the_query_is_never_embedded(db: Database) -> None:
    """A first chat must not wait for the embedding model (~5 s of torch) to recall nothing."""

    class Refusing(HashingEmbedder):
        def embed(self, texts: list[str]) -> np.ndarray:
            raise AssertionError(f"embedded {texts!r} with nothing to recall")

    store = ConversationStore(db)
    store.create(id="now")
    store.append("now", [{"role": "user", "content": "my cat vomits hairballs"}])
    manager = RecallManager(db, Refusing())
    assert manager.memories_for("my cat vomits hairballs") == []
    assert await manager.amemories_for("my cat", exclude=["now"]) == []
    # Once another conversation has vectors, the query is embedded (and refused here).
    manager.store.put_vectors(Refusing.name, [1], np.ones((1, 8), dtype=np.float32))
    with pytest.raises(AssertionError, match="nothing to recall"):
        manager.memories_for("my cat", exclude=["other"])
