"""The Ollama face as lenient as Ollama, and embedding models in the lists, over real HTTP.

The real server and pipeline over the scripted FakeBackend (tests/fakes/backend.py) for the
chats; embeddings by autotune's real offline MiniLM (``all-minilm``). What is replayed:

* aider 0.86's requests through litellm's ``ollama_chat/`` provider, which posts JSON with
  no ``Content-Type`` to ``/api/show``, ``/api/chat`` and ``/api/embed``, and the curl
  examples of Ollama's docs (``curl -d``, a form's Content-Type);
* ``llm embed`` with llm-ollama (its calls through the official ``ollama`` client: ``list``,
  ``show(model).capabilities``, ``embed(model, input, truncate=True)``) and LangChain's
  ``OllamaEmbeddings`` (langchain-ollama: ``embed(model, texts, options=…, keep_alive=…)``;
  replayed with the official client rather than installing LangChain), and the legacy
  ``/api/embeddings`` (``prompt`` in, ``embedding`` out) older clients post.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import ollama
import openai
import pytest

from autotune.backends.registry import BackendSet
from autotune.ground.config import Settings
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer
from fakes.backend import MODEL, FakeBackend, FakeReply

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False}


@pytest.fixture(scope="module")
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture(scope="module")
def url(fake: FakeBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("lenient")
    settings = Settings(home=home, backend="embedded", default_model=MODEL, recall=False)
    app = create_app(settings, backends=BackendSet({"fake": fake}, ["fake"]))
    with BackgroundServer(app) as server:
        yield server.url


@pytest.mark.parametrize(
    "content_type",
    [None, "application/x-www-form-urlencoded", "text/plain"],
    ids=["none (litellm)", "form (curl -d)", "text"],
)
def test_json_bodies_are_read_whatever_the_content_type(
    url: str, fake: FakeBackend, content_type: str | None
) -> None:
    """litellm's ``ollama_chat/`` sends its JSON with no Content-Type (aider retried a 400
    ten times); Ollama reads the body as JSON whatever the header says."""
    headers = {"Content-Type": content_type} if content_type else {}
    fake.queue(FakeReply(("Hello",)))
    with httpx.Client(base_url=url, timeout=30) as http:
        # ``content=`` sends no Content-Type of its own: none at all, as litellm sends it
        chat = http.post("/api/chat", content=json.dumps(CHAT), headers=headers)
        assert "content-type" not in chat.request.headers or content_type
        show = http.post("/api/show", content=json.dumps({"model": MODEL}), headers=headers)
    assert chat.status_code == 200, chat.text
    assert chat.json()["message"]["content"] == "Hello"
    assert show.status_code == 200 and "capabilities" in show.json()


def test_unknown_api_paths_answer_in_ollamas_shape(url: str) -> None:
    """ollama-js shows the ``error`` string; OpenAI's error object showed as [object Object]."""
    unknown = httpx.post(url + "/api/nonesuch", json={}, timeout=10)
    assert unknown.status_code == 404 and isinstance(unknown.json()["error"], str)
    wrong_method = httpx.get(url + "/api/chat", timeout=10)
    assert wrong_method.status_code == 405 and isinstance(wrong_method.json()["error"], str)
    own = httpx.get(url + "/api/conversations/nonesuch", timeout=10)  # autotune's own API
    assert own.status_code == 404 and isinstance(own.json()["error"], dict)


def test_load_duration_is_the_load_this_request_paid(url: str, fake: FakeBackend) -> None:
    """The request that loaded the model reports a load (autotune said 0 before issue 21); the
    next one, on a warm model, 0. ``total_duration`` covers the whole request, as Ollama's does
    (queueing included)."""
    client = ollama.Client(host=url, timeout=30)
    client.generate(model=MODEL, keep_alive=0)  # unload: the next request loads
    fake.queue(FakeReply(("one",)), FakeReply(("two",)))
    first = client.chat(model=MODEL, messages=[{"role": "user", "content": "a"}])
    second = client.chat(model=MODEL, messages=[{"role": "user", "content": "b"}])
    assert (first.load_duration or 0) > 0 and second.load_duration == 0
    assert (first.total_duration or 0) > 0 and (second.total_duration or 0) > 0


def test_embedding_models_are_listed_with_their_kind(url: str) -> None:
    """``all-minilm`` (autotune's MiniLM) is in both lists; Ollama's show says what it is."""
    client = ollama.Client(host=url, timeout=30)
    tags = {m.model: m for m in client.list().models}
    assert tags["all-minilm"].details is not None and tags["all-minilm"].details.family == "bert"
    assert len({m.digest for m in tags.values()}) == len(tags)  # llm-ollama groups by digest
    assert client.show("all-minilm").capabilities == ["embedding"]
    assert "embedding" not in (client.show(MODEL).capabilities or [])
    models = openai.OpenAI(base_url=url + "/v1", api_key="x").models.list()
    assert {"all-minilm", MODEL} <= {m.id for m in models}


def test_embeddings_as_llm_and_langchain_and_the_legacy_route_ask(url: str) -> None:
    client = ollama.Client(host=url, timeout=60)
    # llm embed -m all-minilm (llm-ollama's OllamaEmbed.embed_batch)
    by_llm = client.embed(model="all-minilm", input=["one", "two"], truncate=True)
    # LangChain's OllamaEmbeddings(model="all-minilm").embed_documents([...])
    by_langchain = client.embed("all-minilm", ["one"], options={"num_ctx": 512}, keep_alive="5m")
    # the legacy route: ollama.embeddings(), langchain_community's OllamaEmbeddings, scripts
    legacy = client.embeddings(model="all-minilm", prompt="one")
    empty = httpx.post(url + "/api/embeddings", json={"model": "all-minilm"}, timeout=10)
    assert len(by_llm.embeddings) == 2 and len(by_llm.embeddings[0]) == 384
    assert by_langchain.embeddings[0] == pytest.approx(by_llm.embeddings[0], abs=1e-5)
    assert list(legacy.embedding) == pytest.approx(by_llm.embeddings[0], abs=1e-5)
    assert empty.status_code == 200 and empty.json() == {"embedding": []}
    no_type = httpx.post(
        url + "/api/embed",
        content=json.dumps({"model": "all-minilm", "input": "one"}),
        timeout=30,
    )
    assert no_type.status_code == 200, no_type.text
