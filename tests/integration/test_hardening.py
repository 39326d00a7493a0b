"""``autotune serve`` as an attacker and a careless client would use it (issue 13).

Every test talks to a real server (FastAPI + uvicorn) over real HTTP or raw sockets on
127.0.0.1; the tests marked ``engine`` also run the real embedded llama.cpp engine with the
bundled model. Each one asserts the outcome the defect broke: no timing is asserted, and the
time bounds only keep a broken server from hanging the suite.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from fastapi.testclient import TestClient

from autotune.ground.config import Settings
from autotune.pipeline.admission import Place
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer

MODEL = "smollm2:135m"
CHAT = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}


def _settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": tmp_path / "serve-home",
        "backend": "embedded",
        "memory_budget": 4 * 1024**3,
        **overrides,
    }
    return Settings(**values)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """``serve(settings_overrides…, uvicorn=dict(…))`` starts a server; all stop after."""
    started: list[BackgroundServer] = []

    def start(uvicorn: dict[str, Any] | None = None, **overrides: Any) -> BackgroundServer:
        server = BackgroundServer(create_app(_settings(tmp_path, **overrides)), **(uvicorn or {}))
        started.append(server.start())
        return server

    yield start
    for server in reversed(started):
        server.stop()


# ---------------------------------------------------------------- 1. DNS rebinding, origins


def test_a_foreign_host_name_is_refused_and_told_which_setting_to_change(serve: Any) -> None:
    """Issue 13.1 — before: ``Host: evil.example`` read, exported and deleted conversations."""
    server = serve()
    api = httpx.Client(base_url=server.url, timeout=30)
    assert api.post("/api/conversations", json={"id": "mine", "title": "t"}).status_code == 201
    evil = {"Host": "evil.example"}
    for method, path in (
        ("GET", "/api/conversations"),
        ("GET", "/api/conversations/mine/export"),
        ("DELETE", "/api/conversations/mine"),
        ("GET", "/health"),
    ):
        reply = api.request(method, path, headers=evil)
        assert reply.status_code == 403, (method, path)
        error = reply.json()["error"]
        assert "AUTOTUNE_ALLOWED_HOSTS" in error["message"]
        assert error["code"] == "host_not_allowed"
    refused = api.post("/v1/chat/completions", json=CHAT, headers={"Host": "evil.example:8765"})
    assert refused.status_code == 403
    assert api.get("/api/conversations/mine").status_code == 200  # nothing was deleted
    for name in ("localhost", "LOCALHOST:1234", "127.0.0.1", "127.9.9.9:80", "[::1]:8765"):
        assert api.get("/api/profiles", headers={"Host": name}).status_code == 200, name
    # The dashboard's static files hold no data: served to any host name, as without a key.
    assert api.get("/dashboard", headers=evil).status_code == 200


def test_allowed_hosts_setting_and_the_listening_address_are_answered(tmp_path: Path) -> None:
    """AUTOTUNE_ALLOWED_HOSTS names, ``.suffix`` domains and the configured host work."""
    settings = _settings(
        tmp_path, host="192.0.2.10", api_key="k", allowed_hosts="box.lan, .home.arpa"
    )
    client = TestClient(create_app(settings), base_url="http://127.0.0.1")  # no lifespan
    key = {"Authorization": "Bearer k"}
    for name in ("192.0.2.10:8765", "box.lan", "nas.home.arpa", "home.arpa", "localhost"):
        assert client.get("/api/profiles", headers={**key, "Host": name}).status_code == 200
    for name in ("evil.example", "box.lan.evil.example", "192.0.2.11"):
        assert client.get("/api/profiles", headers={**key, "Host": name}).status_code == 403


def test_a_web_page_of_another_site_is_refused_but_listed_and_local_ones_are_not(
    serve: Any,
) -> None:
    """Issue 13.1 — before: a page at ``http://evil.example`` could POST to 127.0.0.1."""
    server = serve(cors_origins="http://app.example")
    api = httpx.Client(base_url=server.url, timeout=30)
    refused = api.post(
        "/api/conversations", json={"id": "x1"}, headers={"Origin": "http://evil.example"}
    )
    assert refused.status_code == 403
    assert "AUTOTUNE_CORS_ORIGINS" in refused.json()["error"]["message"]
    assert api.get("/api/conversations/x1").status_code == 404  # nothing was created
    for origin in ("null", "https://evil.example", "http://127.0.0.1.evil.example"):
        assert api.get("/api/profiles", headers={"Origin": origin}).status_code == 403, origin
    for origin in ("http://app.example", "http://localhost:3000", server.url):
        assert api.get("/api/profiles", headers={"Origin": origin}).status_code == 200, origin


def test_running_requests_are_listed_and_cancelled_only_with_the_key(tmp_path: Path) -> None:
    key = {"Authorization": "Bearer k3y"}
    with TestClient(
        create_app(_settings(tmp_path, api_key="k3y")), base_url="http://127.0.0.1"
    ) as client:
        assert client.delete("/api/requests/req_x").status_code == 401
        assert client.get("/api/requests").status_code == 401
        assert client.get("/api/requests", headers=key).json()["running"] == []
        missing = client.delete("/api/requests/req_x", headers=key)
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "request_id"


LOOPBACK_PAGES = ("http://localhost:3000", "http://127.0.0.1:5173", "http://[::1]:8080")


def test_pages_on_loopback_and_allowed_sites_get_cors_and_others_a_403(serve: Any) -> None:
    """Issue 22.2 — before: a preflight from ``http://localhost:3000`` got a 405 and a GET no
    ``Access-Control-Allow-Origin``, so the browser blocked every page served from localhost."""
    server = serve(cors_origins="https://app.example")
    api = httpx.Client(base_url=server.url, timeout=30)
    for origin in (*LOOPBACK_PAGES, "https://app.example"):
        preflight = api.options(
            "/v1/chat/completions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, x-conversation-id",
            },
        )
        assert preflight.status_code in (200, 204), (origin, preflight.text)
        assert preflight.headers["access-control-allow-origin"] == origin
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "x-conversation-id" in preflight.headers["access-control-allow-headers"]
        answer = api.get("/v1/models", headers={"Origin": origin})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == origin
        assert "X-Conversation-Id" in answer.headers["access-control-expose-headers"]
    for foreign in ("http://evil.example", "http://localhost.evil.example:3000", "null"):
        preflight = api.options(
            "/v1/chat/completions",
            headers={"Origin": foreign, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 403, foreign
        assert "access-control-allow-origin" not in preflight.headers
    # Clients that are not browsers send no Origin and get no CORS headers.
    assert "access-control-allow-origin" not in api.get("/v1/models").headers


# ---------------------------------------------------------------- 4. slow and idle clients


def _connect(server: BackgroundServer, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=10)
    if first:
        sock.sendall(first)
    return sock


def _closed_by_server(sock: socket.socket, within: float = 20.0) -> bool:
    """True when the server ends the connection (EOF or reset) before ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], 0.2)
        if ready:
            try:
                if sock.recv(65536) == b"":
                    return True
            except OSError:
                return True
    return False


def _dribbled_until_closed(sock: socket.socket, within: float = 20.0) -> bool:
    """Send a head one byte every 0.1 s (never finishing it): True when the server closes."""
    deadline = time.monotonic() + within
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    while time.monotonic() < deadline:
        try:
            sock.sendall(b"X")
        except OSError:
            return True
        ready, _, _ = select.select([sock], [], [], 0.1)
        if ready:
            try:
                answer = sock.recv(65536)
            except OSError:
                return True
            # EOF, or the server's 408 and then EOF.
            return answer == b"" or (answer.startswith(b"HTTP/1.1 408") and _closed_by_server(sock))
    return False


def test_slow_clients_are_closed_and_a_normal_client_is_served(serve: Any) -> None:
    """Issue 13.4 — before: a connection that never finished its request was held forever
    (here 0 of 16 were closed; 300 of them under ``ulimit -n 256`` locked every client out)."""
    server = serve(uvicorn={"header_timeout": 0.5, "body_timeout": 0.5})
    silent = [_connect(server) for _ in range(5)]
    half_head = [_connect(server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n") for _ in range(5)]
    stalled_body = [
        _connect(
            server,
            b"POST /api/conversations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
        )
        for _ in range(5)
    ]
    dribbler = _connect(server)
    try:
        assert _dribbled_until_closed(dribbler)  # bytes trickling in do not extend the deadline
        closed = [_closed_by_server(s) for s in silent + half_head + stalled_body]
        assert closed == [True] * 15
        assert httpx.get(server.url + "/health", timeout=30).status_code == 200
    finally:
        for sock in [*silent, *half_head, *stalled_body, dribbler]:
            sock.close()


def test_idle_connections_make_room_for_a_new_client_at_the_connection_limit(
    serve: Any,
) -> None:
    """At the connection limit the oldest idle connections are closed, so a new client is
    served (uvicorn alone would answer it 503 until a slow client gave up)."""
    server = serve(uvicorn={"limit_concurrency": 8, "header_timeout": 120})
    idle = [_connect(server, b"GET /health HTTP/1.1\r\n") for _ in range(20)]
    try:
        for _ in range(3):
            assert httpx.get(server.url + "/api/profiles", timeout=30).status_code == 200
        deadline = time.monotonic() + 20
        closed: set[int] = set()
        while len(closed) < 20 - 8 and time.monotonic() < deadline:
            ready, _, _ = select.select([s for s in idle if s.fileno() not in closed], [], [], 0.2)
            for sock in ready:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if data == b"":
                    closed.add(sock.fileno())
        assert len(closed) >= 20 - 8
    finally:
        for sock in idle:
            sock.close()


# ---------------------------------------------------------------- 6. conversation ids


def test_one_conversation_id_pattern_everywhere(serve: Any) -> None:
    """Issue 13.6 — before: ``X-Conversation-Id: a/b`` was stored but could never be read,
    exported or deleted (404)."""
    server = serve()
    api = httpx.Client(base_url=server.url, timeout=30)
    for bad in ("a/b", 'a"b', "a b", "x" * 129, "a\\b"):
        reply = api.post("/v1/chat/completions", json=CHAT, headers={"X-Conversation-Id": bad})
        assert reply.status_code == 400, bad
        assert reply.json()["error"]["param"] == "X-Conversation-Id"
    for path in ("a%2Fb", "a%22b", "a%20b", "x" * 129, "a/b", "a/b/export"):
        for method in ("GET", "DELETE"):
            reply = api.request(method, f"/api/conversations/{path}")
            assert reply.status_code == 400, (method, path)
            assert reply.json()["error"]["param"] == "conv_id"
    assert api.get(f"/api/conversations/{'y' * 129}/export").status_code == 400
    assert api.post("/api/conversations", json={"id": "a/b"}).status_code == 400
    ok = "Conv_1.2:3-x"
    assert api.post("/api/conversations", json={"id": ok}).status_code == 201
    assert api.get(f"/api/conversations/{ok}").status_code == 200
    assert api.get(f"/api/conversations/{ok}/export").status_code == 200
    assert api.delete(f"/api/conversations/{ok}").status_code == 204
    listed = api.get("/api/conversations/", follow_redirects=True)
    assert listed.status_code == 200 and "conversations" in listed.json()  # as before


def test_a_refused_request_leaves_no_empty_conversation(serve: Any) -> None:
    """Issue 13.6 — before: a request refused at the queue (429) still created its
    conversation (here 3 of 3; 18 of 20 at queue 1 in the report): the pipeline created it
    (``store.ensure``) before admission.

    The queue's one place is marked taken (as a running request would hold it), so every
    request is refused at admission, deterministically and without an engine.
    """
    server = serve(max_concurrent=1, max_queued=0)
    api = httpx.Client(base_url=server.url, timeout=60)
    queue = server.app.state.pipeline.queue
    held = Place()
    queue._places.add(held)  # the one place, taken
    try:
        for i in range(3):
            reply = api.post(
                "/v1/chat/completions", json=CHAT, headers={"X-Conversation-Id": f"refused-{i}"}
            )
            assert reply.status_code == 429
    finally:
        queue._places.discard(held)
    for i in range(3):
        assert api.get(f"/api/conversations/refused-{i}").status_code == 404
    assert api.get("/api/conversations").json()["conversations"] == []


# ---------------------------------------------------------------- 7. 400 and 500 bodies


def test_a_lone_surrogate_is_a_400_naming_the_field(serve: Any) -> None:
    """Issue 13.7 — before: 500 "UnicodeEncodeError: 'utf-8' codec can't encode …"."""
    server = serve()
    raw = {"Content-Type": "application/json"}
    api = httpx.Client(base_url=server.url, timeout=30, headers=raw)
    reply = api.post("/api/conversations", content=b'{"system":"a\\ud800b"}')
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "system"
    assert "surrogate" in reply.json()["error"]["message"]
    chat = (
        b'{"model":"smollm2:135m","max_tokens":2,'
        b'"messages":[{"role":"user","content":"hi \\udc00"}]}'
    )
    reply = api.post("/v1/chat/completions", content=chat)
    assert reply.status_code == 400
    assert reply.json()["error"]["param"] == "messages.0.content"
    # A complete pair is an ordinary character (an emoji), and is kept.
    pair = api.post("/api/conversations", content=b'{"id":"e","system":"a\\ud83d\\ude00b"}')
    assert pair.status_code == 201 and pair.json()["system"] == "a\U0001f600b"


def test_an_unexpected_error_says_internal_error_and_a_logged_request_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 13.7 — before: a 500 body carried the exception's own text."""
    app = create_app(_settings(tmp_path))

    @app.get("/boom")
    async def boom(q: str = "the secret prompt text") -> None:
        raise RuntimeError(q)  # an exception whose text quotes what the client sent

    client = TestClient(app, base_url="http://127.0.0.1")
    with caplog.at_level(logging.ERROR, logger="autotune.server"):
        reply = client.get("/boom")
    assert reply.status_code == 500
    error = reply.json()["error"]
    assert error["code"] == "internal_error" and "secret" not in reply.text
    request_id = reply.headers["x-request-id"]
    assert error["message"].startswith("Internal error") and request_id in error["message"]
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name == "autotune.server")
    assert request_id in logged and "RuntimeError" in logged and "boom" in logged
    assert "secret" not in logged


# ---------------------------------------------------------------- 8. export file name


def test_export_names_its_file_safely_with_rfc_6266(serve: Any) -> None:
    """Issue 13.8 — before: ``attachment; filename="<id>.md"``, the id unescaped."""
    server = serve()
    api = httpx.Client(base_url=server.url, timeout=30)
    assert api.post("/api/conversations", json={"id": "proj:notes.v2"}).status_code == 201
    header = api.get("/api/conversations/proj:notes.v2/export").headers["content-disposition"]
    kind, *rest = (part.strip() for part in header.split(";"))
    params = dict(part.split("=", 1) for part in rest)
    assert kind == "attachment"
    assert params["filename*"] == "UTF-8''proj%3Anotes.v2.md"  # RFC 8187: the exact name
    assert unquote(params["filename*"].removeprefix("UTF-8''")) == "proj:notes.v2.md"
    assert params["filename"] == '"proj_notes.v2.md"'  # the ASCII fallback has no ':'
    parsed = Message()  # a standard parser reads the same name (filename* wins, RFC 6266)
    parsed["content-disposition"] = header
    assert parsed.get_content_disposition() == "attachment"


# ---------------------------------------------------------------- 12. the key's scheme


def test_the_bearer_scheme_is_case_insensitive(serve: Any) -> None:
    """Issue 13.12 — before: ``Authorization: bearer <key>`` was a 401."""
    server = serve(api_key="s3cret")
    for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
        headers = {"Authorization": f"{scheme} s3cret"}
        assert httpx.get(server.url + "/api/profiles", headers=headers).status_code == 200
    for wrong in ("Basic s3cret", "Bearer s3cre", "Bearer s3cret2", "s3cret", "Bearer", ""):
        headers = {"Authorization": wrong}
        assert httpx.get(server.url + "/api/profiles", headers=headers).status_code == 401, wrong


# ---------------------------------------------------------------- 13. engine workers


def _worker_url(server: BackgroundServer) -> str:
    embedded = server.app.state.pipeline.backends.backends["embedded"]
    (worker,) = embedded._workers.values()
    return str(worker.url)


@pytest.mark.engine
def test_an_engine_worker_needs_a_key_only_autotune_holds(serve: Any) -> None:
    """Issue 13.13 — before: the worker's llama-server answered anyone on its port, and
    ``/api/running_models`` printed that port to any caller."""
    server = serve()
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=120).is_success
    (model,) = httpx.get(server.url + "/api/running_models").json()["models"]
    assert "url" not in model["settings"] and model["settings"]["pid"] > 0
    worker = _worker_url(server)
    direct = httpx.post(worker + "/v1/chat/completions", json=CHAT, timeout=30)
    assert direct.status_code == 401
    for path in ("/props", "/slots", "/tokenize"):
        assert (
            httpx.request(
                "POST" if path == "/tokenize" else "GET", worker + path, json={"content": "x"}
            ).status_code
            == 401
        ), path
    assert httpx.get(worker + "/health").status_code == 200  # llama-server leaves it open
    # autotune itself still drives it: a second chat, and its tokenizer through the engine.
    assert httpx.post(server.url + "/v1/chat/completions", json=CHAT, timeout=120).is_success


@pytest.mark.engine
def test_a_key_holder_sees_the_worker_url(serve: Any) -> None:
    server = serve(api_key="k3y")
    key = {"Authorization": "Bearer k3y"}
    assert httpx.post(
        server.url + "/v1/chat/completions", json=CHAT, headers=key, timeout=120
    ).is_success
    (model,) = httpx.get(server.url + "/api/running_models", headers=key).json()["models"]
    assert model["settings"]["url"] == _worker_url(server)
    assert httpx.post(model["settings"]["url"] + "/v1/chat/completions", json=CHAT).status_code == (
        401
    )
