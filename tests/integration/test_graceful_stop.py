"""A graceful stop: ``autotune serve`` (its own process, the embedded engine) gets SIGTERM while
a stream runs on each API face, through each face's official client. Every stream still
running after the drain ends with its API's error event, the server exits cleanly, and its log
holds no traceback and no "timeout graceful shutdown exceeded".

Gemma-3-270M asked to repeat a phrase loops until its token limit (see
tests/integration/test_runaway_engine.py), so the four streams are still running when the
signal comes, whatever the machine's speed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

import anthropic
import ollama
import openai
import pytest

pytestmark = pytest.mark.engine

GEMMA = "gemma3:270m"
PROMPT = "Repeat after me: internationalization, internationalization,"
LIMIT = 2000  # tokens: the loop would run for minutes
FIRST_EVENT_S = 300  # bounds a broken server's hang only; nothing is timed


class Stream(threading.Thread):
    """Reads one stream to its end in a thread: its events, then how it ended."""

    def __init__(self, read: Callable[[Callable[[Any], None]], None]) -> None:
        super().__init__(daemon=True)
        self.read = read
        self.events: list[Any] = []
        self.started = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.read(self.add)
        except BaseException as exc:  # what the client raised at the end is the outcome
            self.error = exc
        finally:
            self.started.set()

    def add(self, event: Any) -> None:
        self.events.append(event)
        self.started.set()


def _readers(url: str) -> dict[str, Callable[[Callable[[Any], None]], None]]:
    oai = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600)
    claude = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=600)
    messages: Any = [{"role": "user", "content": PROMPT}]

    def openai_chat(add: Callable[[Any], None]) -> None:
        for chunk in oai.chat.completions.create(
            model=GEMMA, messages=messages, max_tokens=LIMIT, temperature=0, stream=True
        ):
            add(chunk)

    def responses(add: Callable[[Any], None]) -> None:
        for event in oai.responses.create(
            model=GEMMA, input=PROMPT, max_output_tokens=LIMIT, temperature=0, stream=True
        ):
            add(event)

    def messages_api(add: Callable[[Any], None]) -> None:
        for event in claude.messages.create(
            model=GEMMA,
            max_tokens=LIMIT,
            messages=messages,
            stream=True,
            extra_body={"temperature": 0},
        ):
            add(event)

    def ollama_chat(add: Callable[[Any], None]) -> None:
        for part in ollama.Client(host=url, timeout=600).chat(
            model=GEMMA,
            messages=messages,
            stream=True,
            options={"num_predict": LIMIT, "temperature": 0},
        ):
            add(part)

    return {
        "openai": openai_chat,
        "responses": responses,
        "anthropic": messages_api,
        "ollama": ollama_chat,
    }


def test_sigterm_mid_stream_ends_every_faces_stream_with_its_error_event(
    serve_process: Callable[..., Any],
) -> None:
    """Issue 22.4 — before: the stream ran on for 5 s, then was cut with no error event
    (``incomplete chunked read``), and serve logged "timeout graceful shutdown exceeded"
    and a traceback."""
    server = serve_process(AUTOTUNE_MAX_CONCURRENT="4").start()
    # Load the model first at the context the longest of the four asks for (a stop word ends
    # this reply at once). Started cold and together, the faces plan different contexts (an
    # Anthropic max_tokens is a ceiling, sized up to the default reserve only), and the load
    # for the bigger one may stop the worker under a stream already started on the smaller:
    # a 503 for that stream, on whichever face came first.
    openai.OpenAI(
        base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600
    ).chat.completions.create(
        model=GEMMA,
        messages=[{"role": "user", "content": "Say OK."}],
        max_tokens=LIMIT,
        temperature=0,
        stop=[".", "\n", "!"],
    )
    streams = {face: Stream(read) for face, read in _readers(server.url).items()}
    for stream in streams.values():
        stream.start()
    for face, stream in streams.items():
        assert stream.started.wait(FIRST_EVENT_S), face
        assert stream.error is None, (face, stream.error)  # streaming, not refused
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    for stream in streams.values():
        stream.join(timeout=120)
    code = server.proc.wait(timeout=120)
    log = server.proc.stderr.read() if server.proc.stderr else ""
    assert code in (0, -signal.SIGTERM), log

    # OpenAI's chat: an error data object (the client raises it as an APIError).
    assert isinstance(streams["openai"].error, openai.APIError)
    assert "shutting down" in str(streams["openai"].error)
    # Responses: response.failed, with the reason.
    last = streams["responses"].events[-1]
    assert streams["responses"].error is None and last.type == "response.failed"
    assert "shutting down" in last.response.error.message
    # Anthropic: an ``event: error`` (the client raises it).
    assert isinstance(streams["anthropic"].error, anthropic.APIStatusError)
    assert "shutting down" in str(streams["anthropic"].error)
    # Ollama: a final {"error": …} line (the client raises it as a ResponseError).
    assert isinstance(streams["ollama"].error, ollama.ResponseError)
    assert "shutting down" in str(streams["ollama"].error)

    assert "Traceback" not in log, log
    assert "timeout graceful shutdown exceeded" not in log, log
    assert "request(s) still running were ended" in log
