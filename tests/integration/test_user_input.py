"""Nothing a user sends is silently lost: the newest message is sacred, every field is
honoured or refused. On the real embedded engine, through the official ``openai`` client."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from autotune.backends.worker_process import start_worker, stop_worker
from autotune.models.bundled import second_model_path
from autotune.server.runner import BackgroundServer

pytestmark = pytest.mark.engine

MODEL = "smollm2:135m"
#: The second test model: its prefill is several times faster than SmolLM2's here.
GEMMA = "gemma3:270m"
#: About 1,500 English words (the engine counts ~2,000 tokens).
LONG = (
    " ".join(
        f"Paragraph {i}: the committee reviewed the budget, the schedule and the staffing plan, "
        "and agreed to meet again after the holidays."
        for i in range(75)
    )
    + " What was the number of the last paragraph?"
)


@pytest.fixture(scope="module")
def engine_count() -> Iterator[Callable[[str], int]]:
    """The engine's own token count of a text: llama.cpp's /tokenize on a raw worker of the
    second model, independent of the autotune under test."""
    path = second_model_path()
    assert path is not None, "the second test model is missing: run `make setup`"
    proc, url = start_worker({"path": str(path), "alias": GEMMA, "n_ctx": 512})
    try:
        yield lambda text: len(
            httpx.post(url + "/tokenize", json={"content": text}, timeout=60).json()["tokens"]
        )
    finally:
        stop_worker(proc)


def test_a_long_message_on_a_small_context_is_answered_whole(
    client: OpenAI, engine_count: Callable[[str], int]
) -> None:
    """Issue 12: this once came back with prompt_tokens=32 and context=emergency."""
    fast = {"X-Autotune-Profile": "fast"}
    client.chat.completions.create(
        model=GEMMA, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, extra_headers=fast
    )
    raw = client.chat.completions.with_raw_response.create(
        model=GEMMA, messages=[{"role": "user", "content": LONG}], max_tokens=8, extra_headers=fast
    )
    reply = raw.parse()
    assert reply.usage is not None
    assert reply.usage.prompt_tokens >= 0.95 * engine_count(LONG)  # the whole message
    plan = raw.headers["X-Autotune-Plan"]
    assert "ctx=2048" not in plan and "emergency" not in plan
    again = client.chat.completions.create(
        model=GEMMA, messages=[{"role": "user", "content": LONG}], max_tokens=8, extra_headers=fast
    )
    assert again.usage is not None and again.usage.prompt_tokens == reply.usage.prompt_tokens


def test_a_message_longer_than_the_model_gets_a_400_with_numbers(client: OpenAI) -> None:
    huge = "lorem ipsum dolor sit amet " * 4000  # ~20,000 tokens; SmolLM2 was trained on 8,192
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": huge}], max_tokens=8
        )
    error = info.value.body
    assert isinstance(error, dict)
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "8,192" in error["message"] and "trained" in error["message"]


def test_truncate_oldest_is_an_opt_in_and_reported(
    start_server: Callable[..., BackgroundServer],
) -> None:
    """Under a tight memory budget (a context of about 1,280 tokens), a message of ~9,000
    tokens is cut to fit when the client asks for it, and the plan says so."""
    server = start_server(memory_budget=200 * 1024**2)
    client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    huge = "lorem ipsum dolor sit amet " * 1500 + "Now say OK."
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": huge}],
        max_tokens=4,
        extra_headers={"X-Autotune-Overflow": "truncate-oldest"},
    )
    assert "overflow=cut" in raw.headers["X-Autotune-Plan"]
    usage = raw.parse().usage
    assert usage is not None and 500 < usage.prompt_tokens < 1300


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("functions", [{"name": "f", "parameters": {"type": "object"}}]),
        ("function_call", "auto"),
        ("modalities", ["text", "audio"]),
        ("audio", {"voice": "alloy", "format": "wav"}),
        ("prediction", {"type": "content", "content": "x"}),
        ("web_search_options", {}),
        ("service_tier", "priority"),
        ("verbosity", "low"),
        ("tool_choice", "required"),
        ("n", 2),
        ("foo_bar", 1),
    ],
)
def test_each_field_autotune_cannot_honour_is_a_400_naming_it(
    server: BackgroundServer, field: str, value: object
) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
        field: value,
    }
    reply = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == field and field in error["message"]
    assert "llama" not in error["message"].lower()  # autotune's own words, not the engine's


def test_a_model_can_be_retrieved_by_id(client: OpenAI) -> None:
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
