"""The face kit over HTTP: errors in each API's own shape wherever they are raised, fields
inside messages declared (what clients echo back accepted), autotune's headers read one way.

A real server and pipeline (real SQLite) over the scripted in-process FakeBackend
(``tests/fakes/backend.py``): what is tested here is the faces' plumbing, not an engine (the
same paths on the real engine are in tests/integration/test_faces.py). The last-resort 500
needs an engine that raises something unexpected, which only a fake does on demand.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anthropic
import httpx
import openai
import pytest

from autotune.backends.registry import BackendSet
from autotune.ground.config import Settings
from autotune.ground.types import ChatRequest, Chunk, CompletionRequest
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer
from autotune.store.conversations import ConversationStore
from autotune.store.db import Database
from fakes.backend import MODEL, FakeBackend

KEY = "face-kit-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
HI = [{"role": "user", "content": "hi"}]

#: Each chat face: (path, a body it accepts, the error shape its clients expect).
FACES: dict[str, tuple[str, dict[str, Any], str]] = {
    "openai": ("/v1/chat/completions", {"model": MODEL, "messages": HI}, "openai"),
    "anthropic": ("/v1/messages", {"model": MODEL, "max_tokens": 4, "messages": HI}, "anthropic"),
    "responses": ("/v1/responses", {"model": MODEL, "input": "hi", "store": False}, "openai"),
    "ollama": ("/api/chat", {"model": MODEL, "messages": HI, "stream": False}, "ollama"),
    "completions": ("/v1/completions", {"model": MODEL, "prompt": "hi"}, "openai"),
}


class _Broken(FakeBackend):
    """Raises what no engine error is (the message quotes the prompt, as some would)."""

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        raise RuntimeError(f"secret prompt text: {request.messages}")
        yield  # pragma: no cover

    async def stream_completion(self, request: CompletionRequest) -> AsyncIterator[Chunk]:
        raise RuntimeError(f"secret prompt text: {request.prompt}")
        yield  # pragma: no cover


@pytest.fixture(scope="module")
def fake() -> FakeBackend:
    return FakeBackend()


@pytest.fixture(scope="module")
def url(fake: FakeBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings(
        home=tmp_path_factory.mktemp("kit-home"),
        backend="embedded",
        default_model=MODEL,
        api_key=KEY,
        max_body_bytes=4096,
        recall=False,
    )
    app = create_app(settings, backends=BackendSet({"fake": fake}, ["fake"]))
    with BackgroundServer(app) as server:
        yield server.url


@pytest.fixture(scope="module")
def broken_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home: Path = tmp_path_factory.mktemp("broken-home")
    settings = Settings(home=home, backend="embedded", default_model=MODEL, recall=False)
    app = create_app(settings, backends=BackendSet({"fake": _Broken()}, ["fake"]))
    with BackgroundServer(app) as server:
        yield server.url


def shaped(reply: httpx.Response, shape: str) -> str:
    """The error's message, after checking the body has ``shape``'s form."""
    data = reply.json()
    if shape == "anthropic":
        assert data["type"] == "error" and set(data["error"]) == {"type", "message"}, data
        return str(data["error"]["message"])
    if shape == "ollama":
        assert set(data) == {"error"} and isinstance(data["error"], str), data
        return str(data["error"])
    assert set(data["error"]) >= {"message", "type", "param", "code"}, data
    return str(data["error"]["message"])


# ---------------------------------------------------------------------- before any route


@pytest.mark.parametrize("face", FACES)
def test_refusals_before_a_route_come_in_the_shape_of_the_api_called(url: str, face: str) -> None:
    path, body, shape = FACES[face]
    with httpx.Client(base_url=url, timeout=30) as http:
        no_key = http.post(path, json=body)
        assert no_key.status_code == 401 and no_key.headers["www-authenticate"] == "Bearer"
        assert "API key" in shaped(no_key, shape)
        foreign = http.post(path, json=body, headers={**AUTH, "Host": "evil.example"})
        assert foreign.status_code == 403 and "host name" in shaped(foreign, shape)
        big = http.post(path, json={**body, "pad": "x" * 5000}, headers=AUTH)
        assert big.status_code == 413 and "limit" in shaped(big, shape)


@pytest.mark.parametrize(
    ("path", "shape"),
    [("/api/delete", "ollama"), ("/v1/messages/batches", "anthropic"), ("/v1/nope", "openai")],
)
def test_an_unknown_route_answers_404_in_the_shape_of_its_api(
    url: str, path: str, shape: str
) -> None:
    reply = httpx.post(url + path, json={}, headers=AUTH, timeout=30)
    assert reply.status_code in (404, 405)
    shaped(reply, shape)


@pytest.mark.parametrize("face", FACES)
def test_an_internal_error_is_a_500_in_its_shape_that_never_quotes_the_prompt(
    broken_url: str, face: str
) -> None:
    path, body, shape = FACES[face]
    reply = httpx.post(broken_url + path, json=body, timeout=30)
    assert reply.status_code == 500
    message = shaped(reply, shape)
    assert "Internal error" in message and "secret" not in reply.text
    assert reply.headers["x-request-id"] in message


# ---------------------------------------------------------------------- inside messages


@pytest.mark.parametrize(
    ("face", "body", "where"),
    [
        (
            "openai",
            {"messages": [{"role": "user", "content": "hi", "frobnicate": 1}]},
            "messages.0.frobnicate",
        ),
        (
            "openai",
            {"messages": [{"role": "user", "content": [{"type": "text", "text": "a", "x": 1}]}]},
            "messages.0.content.0.x",
        ),
        (
            "anthropic",
            {"max_tokens": 4, "messages": [{"role": "user", "content": "hi", "frobnicate": 1}]},
            "messages[0].frobnicate",
        ),
        (
            "anthropic",
            {
                "max_tokens": 4,
                "messages": [{"role": "user", "content": [{"type": "text", "text": "a", "x": 1}]}],
            },
            "messages[0].content[0].x",
        ),
        ("responses", {"input": [{"role": "user", "content": "hi", "frobnicate": 1}]}, "input[0]"),
        (
            "responses",
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "a", "x": 1}]}]},
            "input[0].content[0].x",
        ),
        (
            "ollama",
            {"messages": [{"role": "user", "content": "hi", "frobnicate": 1}]},
            "messages.0.frobnicate",
        ),
    ],
)
def test_an_unknown_field_inside_a_message_is_a_400_naming_its_path(
    url: str, face: str, body: dict[str, Any], where: str
) -> None:
    path, _, shape = FACES[face]
    reply = httpx.post(url + path, json={"model": MODEL, **body}, headers=AUTH, timeout=30)
    assert reply.status_code == 400
    assert where in shaped(reply, shape)
    if shape == "openai":
        assert reply.json()["error"]["param"].startswith(where)


def test_what_the_openai_client_echoes_from_a_reply_is_accepted(
    url: str, fake: FakeBackend
) -> None:
    """The official client sends a reply's message back as it got it (``refusal``,
    ``annotations``, ``audio`` …): accepted, and not sent on to the engine."""
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    first = client.chat.completions.create(model=MODEL, messages=HI)  # type: ignore[arg-type]
    echoed = first.choices[0].message.model_dump()
    assert {"refusal", "annotations", "audio"} <= set(echoed)
    echoed.update(annotations=[], refusal=None)
    again = client.chat.completions.create(
        model=MODEL,
        messages=[*HI, echoed, {"role": "user", "content": "more"}],  # type: ignore[list-item]
    )
    assert again.choices[0].message.content
    sent = fake.requests[-1].messages[-2]
    assert sent["role"] == "assistant" and not {"refusal", "annotations", "audio"} & set(sent)


def test_what_the_anthropic_client_echoes_from_a_reply_is_accepted(url: str) -> None:
    claude = anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0)
    first = claude.messages.create(model=MODEL, max_tokens=4, messages=HI)  # type: ignore[arg-type]
    again = claude.messages.create(
        model=MODEL,
        max_tokens=4,
        messages=[
            *HI,  # type: ignore[list-item]
            {"role": "assistant", "content": first.content},
            {"role": "user", "content": "more"},
        ],
    )
    assert again.content


def test_output_items_sent_back_to_the_responses_api_are_accepted(url: str) -> None:
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    first = client.responses.create(model=MODEL, input="hi", store=False)
    items = [item.model_dump(exclude_none=True) for item in first.output]
    again = client.responses.create(
        model=MODEL,
        input=[{"role": "user", "content": "hi"}, *items, {"role": "user", "content": "more"}],  # type: ignore[list-item]
        store=False,
    )
    assert again.output_text


# ---------------------------------------------------------------------- fields and headers


def test_ollama_embed_checks_its_fields_before_looking_for_the_model(url: str) -> None:
    body = {"model": "no-such-model", "input": "x", "frobnicate": 1}
    reply = httpx.post(url + "/api/embed", json=body, headers=AUTH, timeout=30)
    assert reply.status_code == 400 and "frobnicate" in shaped(reply, "ollama")


def test_completions_refuse_a_conversation_id_clearly(url: str) -> None:
    path, body, _ = FACES["completions"]
    headers = {**AUTH, "X-Conversation-Id": "conv_ok"}
    reply = httpx.post(url + path, json=body, headers=headers, timeout=30)
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "X-Conversation-Id"
    raw = {"model": MODEL, "prompt": "hi", "raw": True, "stream": False}
    generate = httpx.post(url + "/api/generate", json=raw, headers=headers, timeout=30)
    assert generate.status_code == 400 and "X-Conversation-Id" in shaped(generate, "ollama")


def test_ids_stored_before_the_id_rule_can_still_be_read_exported_and_deleted(
    tmp_path: Path,
) -> None:
    """Conversations some faces stored under ids the pattern refuses (before every face
    checked it): found by their exact text, so a user can still export and delete them."""
    settings = Settings(home=tmp_path, backend="embedded", default_model=MODEL, recall=False)
    db = Database(settings.db_path)
    store = ConversationStore(db)
    legacy = ["a b", "x/../y z", "Ã©", "q" * 200]
    for conv_id in legacy:
        store.append(store.create(id=conv_id).id, [{"role": "user", "content": conv_id}])
    db.close()
    app = create_app(settings, backends=BackendSet({"fake": FakeBackend()}, ["fake"]))
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        for conv_id in legacy:
            at = "/api/conversations/" + quote(conv_id, safe="")
            read = http.get(at)
            assert read.status_code == 200 and read.json()["id"] == conv_id
            exported = http.get(at + "/export")
            assert exported.status_code == 200 and conv_id in exported.text
            assert http.delete(at).status_code == 204
            assert http.get(at).status_code == 400  # gone, and no new one can take the id
