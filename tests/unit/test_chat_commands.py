"""The terminal chat's pure parts: slash commands, rendering helpers, the watcher, the pre-flight.

The dispatch tests drive the real commands over a real runtime (SQLite store, the embedded
backend object) without loading a model: the commands that never reach an engine. Ollama
cannot be installed here, so its tests use the fake built from its API docs (tests/fakes).
"""

from __future__ import annotations

import io
import re
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from autotune.backends.embedded import EmbeddedBackend
from autotune.backends.ollama import OllamaBackend
from autotune.chat.commands import (
    COMMANDS,
    SessionMetrics,
    complete,
    format_conversation_list,
    parse_command,
    parse_recall,
)
from autotune.chat.render import PlainRenderer, footer_text, hard_breaks, split_stable
from autotune.chat.repl import Chat, ChatOptions
from autotune.chat.slash import HANDLERS
from autotune.chat.watcher import ModelWatcher, notice_from_event, notice_from_poll
from autotune.ground.config import Settings
from autotune.ground.types import EngineEvent, ModelMeta
from autotune.ground.units import MiB
from autotune.models.fit import Verdict
from autotune.runtime import Runtime, open_runtime
from autotune.tuning.preflight import analyse, choose_profile
from fakes.ollama import MODEL, PS, FakeOllama
from fakes.server import closed_port_url, serve

# --------------------------------------------------------------------------- parsing


def test_a_plain_line_is_a_message_not_a_command() -> None:
    assert parse_command("hello there") is None
    assert parse_command("  what is 2/3?") is None
    assert parse_command("//etc/hosts is what?") is None  # the escape for a leading slash


@pytest.mark.parametrize(
    ("line", "name", "arg"),
    [
        ("/help", "help", ""),
        ("  /QUIT  ", "quit", ""),
        ("/exit", "quit", ""),
        ("/profile FAST", "profile", "fast"),
        ("/model qwen3:8b", "model", "qwen3:8b"),
        ("/system You are terse.  ", "system", "You are terse."),
        ("/recall search  cats and dogs", "recall", "search  cats and dogs"),
        ("/pull llama3.2:1b", "pull", "llama3.2:1b"),
    ],
)
def test_commands_parse_with_their_argument(line: str, name: str, arg: str) -> None:
    command = parse_command(line)
    assert command is not None and command.error is None
    assert (command.name, command.arg) == (name, arg)


def test_every_command_has_one_handler() -> None:
    assert set(HANDLERS) == set(COMMANDS)


def test_an_unknown_command_lists_the_known_ones_and_the_closest() -> None:
    command = parse_command("/profle fast")
    assert command is not None and not command.known and command.error
    assert "Did you mean /profile?" in command.error
    for name in COMMANDS:
        assert f"/{name}" in command.error


def test_missing_and_invalid_arguments_say_how_to_use_the_command() -> None:
    missing = parse_command("/model")
    assert missing is not None and missing.error == "Usage: /model <id>"
    bad = parse_command("/profile turbo")
    assert bad is not None and bad.known and bad.error
    assert "turbo" in bad.error and "fast, balanced, quality" in bad.error


def test_recall_arguments() -> None:
    assert parse_recall("").kind == "list"
    assert (parse_recall("3").kind, parse_recall("3").value) == ("pick", "3")
    assert parse_recall("conv_ab12").value == "conv_ab12"
    search = parse_recall("search  the blue whale ")
    assert (search.kind, search.value) == ("search", "the blue whale")


def test_completion_of_names_then_choices() -> None:
    assert complete("/p") == ["/profile", "/pull"]
    assert complete("/") == [f"/{n}" for n in COMMANDS]
    assert complete("/profile ") == ["fast", "balanced", "quality"]
    assert complete("/profile b") == ["balanced"]
    assert complete("/recall s") == ["search "]
    assert complete("hello /p") == []
    assert complete("/nothing ") == []


def test_the_prompt_completer_replaces_what_was_typed() -> None:
    from prompt_toolkit.completion import CompleteEvent
    from prompt_toolkit.document import Document

    from autotune.chat.repl import SlashCompleter

    names = list(SlashCompleter().get_completions(Document("/pro"), CompleteEvent()))
    assert [(c.text, c.start_position) for c in names] == [("/profile", -4)]
    choices = list(SlashCompleter().get_completions(Document("/profile q"), CompleteEvent()))
    assert [(c.text, c.start_position) for c in choices] == [("quality", -1)]
    assert list(SlashCompleter().get_completions(Document("a\n/pro"), CompleteEvent())) == []


# --------------------------------------------------------------------------- metrics and lists


def _record(**fields: object) -> SimpleNamespace:
    base = dict(
        ttft_ms=None,
        tokens_per_s=None,
        prompt_tokens=None,
        cached_tokens=None,
        completion_tokens=None,
        n_ctx=None,
        reloaded=None,
    )
    return SimpleNamespace(**{**base, **fields})


def test_session_metrics_count_requests_and_summarise_speed() -> None:
    metrics = SessionMetrics()
    assert metrics.lines() == ["No requests yet in this session."]
    metrics.add(_record(ttft_ms=900.0, tokens_per_s=50.0, prompt_tokens=100, reloaded=True))
    metrics.add(_record(ttft_ms=100.0, tokens_per_s=70.0, prompt_tokens=120, cached_tokens=100))
    metrics.add(_record(ttft_ms=300.0), status="cancelled")
    metrics.add(None, status="error")
    text = "\n".join(metrics.lines())
    assert "requests: 4 (1 stopped, 1 failed, 1 with a model load)" in text
    assert "TTFT: median 300 ms, last 300 ms, best 100 ms" in text
    assert "60.0 tok/s mean, last 70.0 tok/s" in text
    assert "100 of 220 prompt tokens reused (45%)" in text


def test_conversation_list_numbers_marks_current_and_shows_first_words() -> None:
    convs = [
        SimpleNamespace(
            id="conv_a", title="Tell me about whales", model="m1", updated_at=0, message_count=4
        ),
        SimpleNamespace(id="conv_b", title=None, model=None, updated_at=0, message_count=0),
    ]
    lines = format_conversation_list(convs, current="conv_b")
    assert lines[0].startswith("  1. ") and "m1" in lines[0] and "Tell me about whales" in lines[0]
    assert "[conv_a]" in lines[0] and "4 msgs" in lines[0]
    assert lines[1].startswith("* 2. ") and "(no messages yet)" in lines[1]


# --------------------------------------------------------------------------- rendering


def test_split_stable_never_cuts_inside_a_code_fence() -> None:
    text = "Intro.\n\n```python\nx = 1\n\ny = 2\n"
    stable, tail = split_stable(text)
    assert stable == "Intro.\n\n" and tail.startswith("```python")
    done, rest = split_stable(text + "```\n\nAfter")
    assert done.endswith("```\n\n") and rest == "After"
    assert split_stable("one line, still typing") == ("", "one line, still typing")


def test_hard_breaks_keep_line_breaks_outside_code() -> None:
    poem = "roses are red\nviolets are blue\n\n```\na\nb\n```"
    out = hard_breaks(poem)
    assert out.startswith("roses are red  \nviolets are blue\n\n")
    assert out.endswith("```\na\nb\n```")  # code is left exactly as written


def test_footer_shows_what_the_engine_measured_and_nothing_invented() -> None:
    full = _record(
        ttft_ms=123.4,
        tokens_per_s=95.25,
        prompt_tokens=312,
        cached_tokens=280,
        completion_tokens=40,
        n_ctx=2048,
        reloaded=True,
    )
    assert footer_text(full) == (
        "TTFT 123 ms · 95.2 tok/s · ctx 312/2,048 tokens (280 cached) · model loaded"
    )
    stopped = _record(ttft_ms=50.0, n_ctx=4096)
    assert footer_text(stopped) == "TTFT 50 ms · ctx 4,096 tokens"
    one_token = _record(tokens_per_s=1e6, completion_tokens=1)
    assert "tok/s" not in footer_text(one_token)


def test_plain_renderer_keeps_stdout_to_the_reply() -> None:
    out, err = io.StringIO(), io.StringIO()
    renderer = PlainRenderer(out, err)
    renderer.begin()
    for piece in ("**Paris** is", " the capital."):
        renderer.feed(piece)
    renderer.end("TTFT 10 ms", stopped=False)
    assert out.getvalue() == "**Paris** is the capital.\n"
    assert err.getvalue() == "TTFT 10 ms\n"


# --------------------------------------------------------------------------- watcher


def test_an_engine_crash_is_a_notice_but_a_requested_unload_is_not() -> None:
    crash = EngineEvent("unexpected_unload", "smollm2:135m", {"exit_code": -9})
    notice = notice_from_event(crash, "embedded", "smollm2:135m")
    assert notice is not None and "code -9" in notice.message
    assert "next message reloads it" in notice.message
    asked = EngineEvent("unload", "smollm2:135m", {"reason": "requested"})
    assert notice_from_event(asked, "embedded", "smollm2:135m") is None
    evicted = EngineEvent("unload", "smollm2:135m", {"reason": "making room for big:7b"})
    assert notice_from_event(evicted, "embedded", "smollm2:135m") is not None
    other = EngineEvent("unexpected_unload", "other:1b", {})
    assert notice_from_event(other, "embedded", "smollm2:135m") is None


def test_polling_flags_a_vanished_model_unless_its_keep_alive_ran_out() -> None:
    loaded, notice = notice_from_poll(
        "llama3", "ollama", ["llama3:latest"], was_loaded=False, idle_s=0, keep_alive=-1
    )
    assert loaded and notice is None
    loaded, notice = notice_from_poll(
        "llama3", "ollama", [], was_loaded=True, idle_s=10, keep_alive=-1
    )
    assert not loaded and notice is not None and "ollama" in notice.message
    _, expired = notice_from_poll(
        "llama3", "ollama", [], was_loaded=True, idle_s=400, keep_alive=300
    )
    assert expired is None
    _, never_seen = notice_from_poll(
        "llama3", "ollama", [], was_loaded=False, idle_s=0, keep_alive=-1
    )
    assert never_seen is None


async def test_the_watcher_chains_the_engine_hook_and_restores_it() -> None:
    """The embedded backend object (no model loaded) with telemetry's hook in place."""
    backend = EmbeddedBackend(memory_budget=1024**3)
    seen_by_telemetry: list[str] = []
    backend.on_event = lambda e: seen_by_telemetry.append(e.kind)
    notices: list[str] = []
    watcher = ModelWatcher({"embedded": backend}, lambda n: notices.append(n.message))
    watcher.watch("embedded", "smollm2:135m")
    watcher.start()
    assert backend.on_event is not None
    backend.on_event(EngineEvent("load", "smollm2:135m", {"reason": "first load"}))
    backend.on_event(EngineEvent("unexpected_unload", "smollm2:135m", {"exit_code": 1}))
    assert seen_by_telemetry == ["load", "unexpected_unload"]
    assert len(notices) == 1 and watcher.unloaded
    watcher.used()
    assert not watcher.unloaded
    await watcher.stop()
    backend.on_event(EngineEvent("unexpected_unload", "smollm2:135m", {}))
    assert len(notices) == 1 and seen_by_telemetry[-1] == "unexpected_unload"


# --------------------------------------------------------------------------- pre-flight


def _meta(**overrides: object) -> ModelMeta:
    values: dict[str, object] = dict(
        name="tiny:1b",
        architecture="llama",
        block_count=16,
        head_count=16,
        head_count_kv=4,
        embedding_length=1024,
        context_length=32768,
        vocab_size=32000,
        size_bytes=600 * MiB,
    )
    return ModelMeta(**{**values, **overrides})  # type: ignore[arg-type]


def _analyse(meta: ModelMeta, budget: int, profile: str = "auto", **kw: object):
    return analyse(
        meta,
        engine="embedded",
        budget=budget,
        budget_source="test",
        ram_available=budget * 2,
        ram_total=budget * 4,
        profile=profile,
        **kw,  # type: ignore[arg-type]
    )


def test_auto_picks_quality_when_it_fits_comfortably_and_says_why() -> None:
    name, why = choose_profile(_meta(), 64 * 1024 * MiB)
    assert name == "quality" and "fits comfortably at its 32,768-token context" in why


def test_auto_falls_back_to_fast_with_the_shares_it_saw() -> None:
    name, why = choose_profile(_meta(), 1024 * MiB)
    assert name == "fast"
    assert "quality would use" in why and "balanced would use" in why and "70%" in why


def test_preflight_that_fits_has_the_parts_and_no_problem() -> None:
    found = _analyse(_meta(), 64 * 1024 * MiB)
    assert found.ok and found.problem() is None and found.verdict is Verdict.COMFORTABLE
    rows = dict(found.lines())
    assert set(rows) >= {"weights", "KV cache", "overhead", "total", "RAM", "verdict", "profile"}
    assert "32,768 tokens (f16)" in rows["KV cache"]


def test_preflight_offers_the_largest_context_out_of_the_swap_zone() -> None:
    meta = _meta()
    found = _analyse(meta, 900 * MiB, profile="balanced")
    assert not found.ok and found.n_ctx == 8192
    assert found.suggested_context is not None and found.suggested_estimate is not None
    assert 512 <= found.suggested_context < 8192 and found.suggested_context % 256 == 0
    assert found.suggested_estimate.total <= 0.9 * 900 * MiB
    bigger = _analyse(meta, 900 * MiB, profile="balanced", n_ctx=found.suggested_context + 256)
    assert bigger.estimate.total > 0.9 * 900 * MiB  # it really is the largest
    problem = found.problem()
    assert problem is not None and f"{found.suggested_context:,}-token context" in problem
    assert "900.0 MiB" in problem


def test_preflight_refuses_when_not_even_512_tokens_fit() -> None:
    found = _analyse(_meta(), 500 * MiB, profile="fast")
    assert found.verdict is Verdict.WONT_FIT and found.suggested_context is None
    problem = found.problem()
    assert problem is not None and "even a 512-token context needs" in problem


# --------------------------------------------------------------------------- dispatch


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[Runtime]:
    settings = Settings(home=tmp_path / "home", backend="embedded", memory_budget=1024**3)
    rt = await open_runtime(settings, start_sampler=False)
    try:
        yield rt
    finally:
        await rt.aclose()


async def _piped_chat(runtime: Runtime, **options: object) -> tuple[Chat, io.StringIO]:
    err = io.StringIO()
    chat = Chat(runtime, ChatOptions(**options), interactive=False, out=io.StringIO(), err=err)  # type: ignore[arg-type]
    assert await chat.open() == 0
    return chat, err


async def test_commands_that_need_no_engine_run_against_the_real_store(
    runtime: Runtime, tmp_path: Path
) -> None:
    chat, err = await _piped_chat(runtime)
    first = chat.state.conversation_id
    assert first in err.getvalue() and "engine embedded" in err.getvalue()

    await chat.handle_line("/export")
    assert "Nothing to export yet" in err.getvalue()

    await chat.handle_line("/system Answer in French.")
    conv = runtime.store.get(first, with_messages=False)
    assert conv is not None and conv.system == "Answer in French." and conv.source == "chat"

    await chat.handle_line("/profile fast")
    assert chat.state.profile == "fast"
    assert runtime.store.get(first, with_messages=False).profile == "fast"  # type: ignore[union-attr]

    with pytest.MonkeyPatch.context() as env:  # no Ollama: the hub, which does not answer here
        env.setenv("HF_ENDPOINT", closed_port_url())
        await chat.handle_line("/pull llama3.2:1b")
    assert "The Hugging Face hub at http://127.0.0.1:9 cannot be reached" in err.getvalue()

    await chat.handle_line("/recall")
    assert f"[{first}]" in err.getvalue()

    await chat.handle_line("/delete")
    assert runtime.store.get(first) is None and chat.state.conversation_id != first

    await chat.handle_line("/recall 1")
    assert "No conversation number 1" in err.getvalue()

    assert await chat.handle_line("/quit") is False
    await chat.close()


async def test_export_writes_the_conversation_under_the_exports_dir(runtime: Runtime) -> None:
    chat, err = await _piped_chat(runtime)
    conv_id = chat.state.conversation_id
    await chat.ensure_conversation()
    runtime.store.append(
        conv_id,
        [{"role": "user", "content": "Name a whale."}, {"role": "assistant", "content": "Blue."}],
    )
    await chat.handle_line("/export")
    path = Path(runtime.settings.exports_dir) / f"{conv_id}.md"
    assert str(path) in err.getvalue() and "Exported 2 messages" in err.getvalue()
    text = path.read_text()
    assert "## User\n\nName a whale." in text and "## Assistant\n\nBlue." in text

    await chat.handle_line("/new")
    await chat.handle_line(f"/recall {conv_id}")
    assert chat.state.conversation_id == conv_id and "Resumed" in err.getvalue()
    await chat.handle_line("/history")
    assert "you: Name a whale." in err.getvalue() and "assistant: Blue." in err.getvalue()
    await chat.close()


async def test_an_unknown_model_is_one_line_and_the_chat_stays_on_its_model(
    runtime: Runtime,
) -> None:
    chat, err = await _piped_chat(runtime)
    assert await chat.handle_line("/model smollm2:13") is True
    assert "Unknown model 'smollm2:13'" in err.getvalue()
    assert chat.state.model == "smollm2:135m"
    await chat.close()


async def test_resuming_an_unknown_conversation_refuses_to_start(runtime: Runtime) -> None:
    err = io.StringIO()
    chat = Chat(
        runtime,
        ChatOptions(conversation_id="conv_nope"),
        interactive=False,
        out=io.StringIO(),
        err=err,
    )
    assert await chat.open() == 1
    assert "No conversation 'conv_nope'" in err.getvalue()


async def test_no_swap_refuses_a_model_the_check_calls_a_swap_risk(runtime: Runtime) -> None:
    async def check(model: str, profile: str) -> str | None:
        return f"{model} needs 9.0 GiB at {profile} but the memory budget is 8.0 GiB"

    err = io.StringIO()
    refusing = Chat(runtime, ChatOptions(no_swap=True), interactive=False, check_fit=check, err=err)
    assert await refusing.open() == 1
    assert "needs 9.0 GiB" in err.getvalue() and "--no-swap" in err.getvalue()
    warned = io.StringIO()
    going = Chat(runtime, ChatOptions(), interactive=False, check_fit=check, err=warned)
    assert await going.open() == 0
    assert "warning:" in warned.getvalue()
    await going.close()


# --------------------------------------------------------------------------- Ollama (faked)


class _Ollama(FakeOllama):
    """The documented fake Ollama whose /api/ps list a test can empty (a model evicted)."""

    def __init__(self) -> None:
        super().__init__()
        self.running = [{**PS[0], "name": MODEL, "model": MODEL}]

    async def _ps(self, request: Request) -> Response:
        await self._record(request)
        return JSONResponse({"models": self.running})


async def test_polling_notices_once_when_an_ollama_model_vanishes() -> None:
    """Ollama cannot be installed here: a fake built from its API docs answers /api/ps."""
    fake = _Ollama()
    with serve(fake.app) as url:
        backend = OllamaBackend(url)
        notices: list[str] = []
        watcher = ModelWatcher(
            {"ollama": backend}, lambda n: notices.append(n.message), keep_alive=-1
        )
        watcher.watch("ollama", MODEL)
        try:
            await watcher.check()
            assert notices == []
            fake.running = []
            await watcher.check()
            await watcher.check()
        finally:
            await backend.aclose()
    assert len(notices) == 1 and "no longer loaded in ollama" in notices[0]
    assert len(fake.bodies("/api/ps")) == 3


async def test_pull_and_backends_with_an_ollama_engine(tmp_path: Path) -> None:
    """/pull streams Ollama's documented progress lines; /backends marks the engine in use."""
    fake = _Ollama()
    with serve(fake.app) as url:
        settings = Settings(home=tmp_path / "home", backend="ollama", ollama_url=url)
        rt = await open_runtime(settings, start_sampler=False)
        try:
            chat, err = await _piped_chat(rt, model=MODEL)
            assert "engine ollama at" in err.getvalue()
            await chat.handle_line("/pull llama3.2:1b")
            assert fake.bodies("/api/pull")[-1]["model"] == "llama3.2:1b"
            text = err.getvalue()
            assert "pulling manifest" in text and "241970/2142590208" in text
            assert "Pulled llama3.2:1b with ollama" in text
            await chat.handle_line("/backends")
            assert re.search(
                r"ollama\s+http://127\.0\.0\.1:\d+\s+reachable · in use · this chat", err.getvalue()
            )
            await chat.close()
        finally:
            await rt.aclose()


async def test_recall_search_uses_the_runtimes_memory_and_resumes_a_hit(runtime: Runtime) -> None:
    """Full-text recall (no embedder) over the real store; without a manager it says so."""
    from autotune.recall.manager import RecallManager

    old = runtime.store.create(model="smollm2:135m", source="chat")
    runtime.store.append(
        old.id,
        [
            {"role": "user", "content": "Which whale is the largest animal?"},
            {"role": "assistant", "content": "The blue whale."},
        ],
    )
    runtime.recall = None
    chat, err = await _piped_chat(runtime)
    await chat.handle_line("/recall search whale")
    assert "Memory search is not set up yet" in err.getvalue()

    runtime.recall = RecallManager(runtime.db, None)
    await chat.handle_line("/recall search largest whale")
    text = err.getvalue()
    assert f"[{old.id}]" in text and "Which whale is the largest animal?" in text
    await chat.handle_line("/recall 1")
    assert chat.state.conversation_id == old.id
    await chat.close()
