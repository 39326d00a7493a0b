"""Property-based API testing: schemathesis generates requests from autotune's OpenAPI schema
and the server must never answer with a 5xx. Real server, real embedded engine. Every face
is in the schema: OpenAI chat, completions, embeddings and Responses, Anthropic Messages and
Ollama's API; ``/api/pull`` reaches a fake Hugging Face hub with no repos
(tests/fakes/hf_hub.py: no network here)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from autotune.ground.config import Settings
from autotune.server.app import create_app
from autotune.server.runner import BackgroundServer
from fakes.hf_hub import FakeHub
from fakes.server import serve

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    home = tmp_path_factory.mktemp("schemathesis-home")
    with serve(FakeHub().app()) as hub, pytest.MonkeyPatch.context() as env:
        env.setenv("HF_ENDPOINT", hub)
        app = create_app(
            Settings(
                home=home,
                backend="embedded",
                memory_budget=4 * 1024**3,
                max_concurrent=1,
                max_queued=32,
            )
        )
        with BackgroundServer(app) as server:
            yield server


#: Routes whose output length is not ``max_tokens`` (or that generate nothing).
_OUTPUT_LIMIT = {"/v1/responses": "max_output_tokens"}
_NO_OUTPUT = {"/v1/embeddings", "/api/embed", "/v1/messages/count_tokens"}
OLLAMA_CHATS = ("/api/chat", "/api/generate")


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    """Keep the engine's work bounded: generated bodies may ask for 10⁹ tokens or n=16."""
    path = context.operation.path if context.operation is not None else ""
    if path in OLLAMA_CHATS:
        return _ollama_body(body)
    if isinstance(body, dict) and path not in _NO_OUTPUT and not path.startswith("/api/"):
        limit = _OUTPUT_LIMIT.get(path, "max_tokens")
        if isinstance(body.get(limit), int):
            body[limit] = min(body[limit], 8)
        else:
            body[limit] = 8
        body.pop("max_completion_tokens", None)
        if isinstance(body.get("n"), int):
            body["n"] = min(body["n"], 2)
        if isinstance(body.get("best_of"), int):
            body["best_of"] = min(body["best_of"], 2)
    return body


def _ollama_body(body: Any) -> Any:
    """Ollama's bodies: at most 8 tokens, and half of them for a model that exists (a required
    field schemathesis fills with random names) so they reach the engine."""
    if not isinstance(body, dict):
        return body
    if isinstance(body.get("model"), str) and len(body["model"]) % 2 == 0:
        body["model"] = "smollm2:135m"
    options = body.get("options")
    if options is None:
        body["options"] = {"num_predict": 8}
    elif isinstance(options, dict):
        n = options.get("num_predict")
        options["num_predict"] = n if isinstance(n, int) and 0 < n <= 8 else 8
    return body


def test_no_request_gets_a_server_error(api_server: BackgroundServer) -> None:
    """Every operation in the schema, ~30 generated requests each (schemathesis' Python API:
    its pytest plugin does not run under pytest 9)."""
    schema = schemathesis.openapi.from_url(api_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    seen: Counter[tuple[str, int]] = Counter()
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def check(case: schemathesis.Case) -> None:
            response = case.call_and_validate(checks=[not_a_server_error], timeout=120)
            seen[(case.operation.label, response.status_code)] += 1

        check()
    chat = {code for (label, code) in seen if label == "POST /v1/chat/completions"}
    assert 200 in chat and chat & {400, 404}, seen  # both valid and invalid bodies were tried
    for label in ("POST /api/chat", "POST /api/generate"):
        codes = {code for (seen_label, code) in seen if seen_label == label}
        assert 200 in codes and codes & {400, 404}, seen
    faces = (
        "POST /v1/messages",
        "POST /v1/messages/count_tokens",
        "POST /v1/responses",
        "GET /v1/responses/{response_id}",
        "POST /v1/completions",
        "POST /v1/embeddings",
        "POST /api/embed",
    )
    tried = {label for (label, _) in seen}
    assert set(faces) <= tried, sorted(set(faces) - tried)
