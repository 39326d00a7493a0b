"""The terminal chat loop: reads lines, runs slash commands, streams replies from the pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from autotune.chat.commands import COMMANDS, Command, complete, parse_command
from autotune.chat.render import MarkdownRenderer, PlainRenderer, ReplyRenderer, footer_text
from autotune.chat.session import ChatState
from autotune.chat.slash import HANDLERS
from autotune.chat.watcher import ModelWatcher, UnloadNotice
from autotune.ground.errors import BackendError
from autotune.ground.ids import new_conversation_id
from autotune.ground.profiles import get_profile
from autotune.operations.preflight import FitCheck
from autotune.pipeline import ChatInput, ChatRun

if TYPE_CHECKING:
    from autotune.runtime import Runtime

__all__ = ["Chat", "ChatOptions", "FitCheck", "SlashCompleter", "run_chat"]

_ENGINE_LABEL = {"embedded": "embedded llama.cpp (autotune-managed worker)"}


@dataclass
class ChatOptions:
    """How the chat starts; ``None`` means the setting's default."""

    model: str | None = None
    profile: str | None = None
    system: str | None = None
    conversation_id: str | None = None
    no_swap: bool = False
    verbose: bool = False
    max_tokens: int | None = None
    #: Skip the start-up fit check (``autotune run`` has just done a fuller one).
    checked: bool = False


class Chat:
    """One chat session over a :class:`~autotune.runtime.Runtime` (a
    :class:`~autotune.chat.session.ChatSession` for the slash commands)."""

    def __init__(
        self,
        runtime: Runtime,
        options: ChatOptions,
        *,
        interactive: bool,
        check_fit: FitCheck | None = None,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.runtime = runtime
        self.options = options
        self.interactive = interactive
        self.check_fit = check_fit
        self.state = ChatState()
        #: Memories injected at this conversation's start, shown once with --verbose.
        self._memories: list[Any] = []
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        # Interactive: everything on the terminal. Piped: replies alone on stdout, the rest on
        # stderr, never coloured on stdout.
        # The interactive console follows sys.stdout, so that under prompt_toolkit's
        # patch_stdout a notice printed while the prompt waits lands above it.
        self.console = (
            Console(file=out, highlight=False)
            if interactive
            else Console(file=self.err, highlight=False, soft_wrap=True)
        )
        self.watcher = ModelWatcher(
            runtime.backends.backends, self._on_unload, keep_alive=runtime.settings.keep_alive
        )
        self._task: asyncio.Task[Any] | None = None
        self._phase = "idle"
        self._stop_requested = False
        self._failed = False

    # ------------------------------------------------------------------ output

    # Status lines are left to the terminal to wrap (soft_wrap), so a long path stays one
    # string that can be copied.

    def info(self, message: str) -> None:
        self.console.print(Text(message, style="dim"), soft_wrap=True)

    def say(self, message: str, style: str = "") -> None:
        self.console.print(Text(message, style=style), soft_wrap=True)

    def warn(self, message: str) -> None:
        self.console.print(Text(message, style="yellow"), soft_wrap=True)

    def error(self, message: str, hint: str | None = None) -> None:
        self.console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
        if hint:
            self.console.print(f"  {escape(hint)}", soft_wrap=True)

    def _on_unload(self, notice: UnloadNotice) -> None:
        self.warn(notice.message)

    # ------------------------------------------------------------------ set-up

    async def open(self) -> int:
        """Resolve the model, resume or start the conversation, print the header; 0 = ready."""
        runtime, opts = self.runtime, self.options
        settings = runtime.settings
        model = opts.model or settings.default_model
        profile = opts.profile or settings.profile
        conv_id = opts.conversation_id or new_conversation_id()
        if opts.conversation_id:
            conv = await asyncio.to_thread(runtime.store.get, conv_id, with_messages=False)
            if conv is None:
                self.error(
                    f"No conversation {conv_id!r}.",
                    "`/recall` in a chat lists the recent ones.",
                )
                return 1
            model = opts.model or conv.model or model
            profile = opts.profile or conv.profile or profile
            self.state.stored = True
        get_profile(profile)  # an unknown name fails here, with the known ones
        backend, name = await runtime.backends.resolve(model)
        self.state.model, self.state.engine = name, backend.name
        self.state.profile, self.state.conversation_id = profile, conv_id
        if not opts.checked and not await self.fit_ok(name, profile):
            return 1
        if opts.system:
            await self.ensure_conversation(system=opts.system)
        self._header(resumed=bool(opts.conversation_id))
        self.watcher.watch(backend.name, name)
        self.watcher.start()
        return 0

    async def close(self) -> None:
        await self.watcher.stop()

    async def fit_ok(self, model: str, profile: str) -> bool:
        """False (and why) when ``--no-swap`` forbids this load; otherwise warn and go on."""
        if self.check_fit is None:
            return True
        try:
            problem = await self.check_fit(model, profile)
        except BackendError:
            return True  # no metadata: the pipeline's own guard still applies at load time
        if problem is None:
            return True
        if self.options.no_swap:
            self.error(problem, "--no-swap refuses it: try `--profile fast` or a smaller model.")
            return False
        self.warn(f"warning: {problem}")
        return True

    def engine_label(self, engine: str) -> str:
        """How the header names an engine: what it is and where it listens."""
        backend = self.runtime.backends.get(engine)
        if engine in _ENGINE_LABEL:
            return _ENGINE_LABEL[engine]
        url = getattr(backend, "base_url", "") if backend is not None else ""
        return f"{engine} at {url}" if url else engine

    def use_model(self, engine: str, model: str) -> None:
        """Send the next messages to ``model`` on ``engine`` (and watch it there)."""
        self.state.model, self.state.engine = model, engine
        self.watcher.watch(engine, model)

    def _header(self, *, resumed: bool) -> None:
        s = self.state
        title = "resumed conversation" if resumed else "conversation"
        self.say(f"autotune chat · {title} {s.conversation_id}", "bold")
        self.say(
            f"model {s.model} · engine {self.engine_label(s.engine)} · profile {s.profile}",
        )
        others = [e for e in self.runtime.backends.order if e != s.engine]
        if others:
            self.info(f"other engines in use: {', '.join(others)}")
        if self.interactive:
            self.info(
                "/help lists commands · Esc Enter adds a line · Ctrl-C stops a reply · Ctrl-D quits"
            )

    # ------------------------------------------------------------------ loops

    async def interactive_loop(self) -> None:
        """Prompt, dispatch, repeat until /quit or Ctrl-D."""
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory
        from prompt_toolkit.key_binding import KeyBindings
        from prompt_toolkit.patch_stdout import patch_stdout

        history = Path(self.runtime.settings.home) / "chat_history"
        history.parent.mkdir(parents=True, exist_ok=True)
        keys = KeyBindings()

        @keys.add("escape", "enter")
        def _newline(event: Any) -> None:
            event.current_buffer.insert_text("\n")

        session: PromptSession[str] = PromptSession(
            history=FileHistory(str(history)),
            completer=SlashCompleter(),
            complete_while_typing=True,
            key_bindings=keys,
            enable_history_search=False,
        )
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError):  # Windows: Ctrl-C quits
            loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        try:
            while True:
                try:
                    with patch_stdout(raw=True):
                        line = await session.prompt_async("you › ", handle_sigint=False)
                except KeyboardInterrupt:
                    continue  # Ctrl-C at the prompt clears the line
                except EOFError:
                    break
                if not await self.handle_line(line):
                    break
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(signal.SIGINT)

    async def piped_loop(self, stream: TextIO) -> int:
        """Each input line is a message (or a slash command); 1 when any reply failed."""
        while True:
            line = await asyncio.to_thread(stream.readline)
            if not line:
                break
            if not await self.handle_line(line):
                break
        return 1 if self._failed else 0

    def _on_sigint(self) -> None:
        task = self._task
        if task is None or task.done():
            return
        if self._phase == "starting":
            # While the engine loads, a cancel would strand a half-started engine process:
            # the reply is stopped as soon as its first chunk arrives instead.
            if not self._stop_requested:
                self.info("stopping as soon as the engine answers…")
            self._stop_requested = True
            return
        self._stop_requested = True
        task.cancel()

    async def _guarded(self, coro: Awaitable[Any], phase: str) -> Any:
        """Run one reply or command as a task Ctrl-C can stop without leaving the chat."""
        self._stop_requested = False
        self._phase = phase
        self._task = asyncio.ensure_future(coro)
        try:
            return await self._task
        except asyncio.CancelledError:
            cancelling = getattr(asyncio.current_task(), "cancelling", None)
            if cancelling is not None and cancelling():
                raise  # the chat itself is being cancelled
            self.warn("stopped")
            return None
        finally:
            self._task, self._phase = None, "idle"

    # ------------------------------------------------------------------ dispatch

    async def handle_line(self, line: str) -> bool:
        """Run one line; False when the chat should end."""
        text = line.strip()
        if not text:
            return True
        command = parse_command(text)
        if command is None:
            await self.send(text[1:] if text.startswith("//") else text)
            return True
        if command.error:
            if not command.known and not self.interactive:
                await self.send(text)  # a script's message that happens to start with "/"
                return True
            self.error(command.error)
            return True
        try:
            return await self._guarded(self.dispatch(command), "command") is not False
        except BackendError as exc:
            self.error(exc.message, exc.hint)
            return True

    async def dispatch(self, command: Command) -> bool:
        """Run a parsed command (see :mod:`autotune.chat.slash`); False for /quit."""
        result = await HANDLERS[command.name](self, command.arg)
        return result is not False

    # ------------------------------------------------------------------ replies

    def _renderer(self) -> ReplyRenderer:
        if self.interactive:
            return MarkdownRenderer(self.console)
        return PlainRenderer(self.out, self.err)

    async def ensure_conversation(self, **fields: Any) -> None:
        """Store the conversation if it is not stored yet; then set ``fields`` on it."""
        s = self.state
        store = self.runtime.store
        if not s.stored:
            await asyncio.to_thread(
                store.ensure, s.conversation_id, model=s.model, profile=s.profile, source="chat"
            )
            s.stored = True
        if fields:
            await asyncio.to_thread(store.update, s.conversation_id, **fields)

    async def send(self, text: str) -> None:
        """Send one user message and stream the reply; errors are one line, the chat goes on."""
        s = self.state
        if self.watcher.unloaded:
            self.info(f"reloading {s.model}…")
        params: dict[str, Any] = {}
        if self.options.max_tokens:
            params["max_tokens"] = self.options.max_tokens
        inp = ChatInput(
            messages=[{"role": "user", "content": text}],
            model=s.model,
            params=params,
            profile=s.profile,
            conversation_id=s.conversation_id,
            persist=True,
            source="chat",
        )
        first = not await self._has_turns()
        await self.ensure_conversation()
        if first:
            await self._inject_memories(text)
        self.watcher.busy = True
        try:
            with _no_echo(self.interactive):
                await self._guarded(self._reply(inp), "starting")
        finally:
            self.watcher.busy = False

    async def _has_turns(self) -> bool:
        s = self.state
        if not s.stored:
            return False
        conv = await asyncio.to_thread(
            self.runtime.store.get, s.conversation_id, with_messages=False
        )
        return conv is not None and conv.message_count > 0

    async def _inject_memories(self, text: str) -> None:
        """At a conversation's start, add relevant notes from earlier conversations.

        They join this conversation's stored system prompt, so every later turn sends the
        same prefix (the engine's prompt cache keeps working); ``--verbose`` shows them.
        """
        recall = getattr(self.runtime, "recall", None)
        if recall is None or recall.embedder is None:
            return
        try:
            await recall.aindex_pending()
            memories = await recall.amemories_for(text, exclude=(self.state.conversation_id,))
        except Exception as exc:  # memory must never stop a chat
            self.info(f"memory unavailable: {type(exc).__name__}")
            return
        self._memories = memories
        if not memories:
            return
        lines = [
            f"- {m.title or 'untitled'} ({time.strftime('%Y-%m-%d', time.localtime(m.created_at))}"
            f", conversation {m.conversation_id}): {m.snippet}"
            for m in memories
        ]
        note = "Notes from earlier conversations that may be relevant:\n" + "\n".join(lines)
        conv = await asyncio.to_thread(
            self.runtime.store.get, self.state.conversation_id, with_messages=False
        )
        system = f"{conv.system}\n\n{note}" if conv is not None and conv.system else note
        await self.ensure_conversation(system=system)

    async def _reply(self, inp: ChatInput) -> None:
        renderer = self._renderer()
        renderer.begin()
        run: ChatRun | None = None
        try:
            run = await self.runtime.pipeline.start(inp)
            status = await self._stream(run, renderer)
        except asyncio.CancelledError:
            status = "cancelled"
            current = asyncio.current_task()
            if current is not None and hasattr(current, "uncancel"):
                current.uncancel()
        except Exception as exc:
            self._reply_failed(renderer, exc)
            return
        if run is not None:
            await run.aclose()  # stops the engine's generation when the reply was cut short
        record = run.record if run is not None else None
        footer = footer_text(record) if record is not None else None
        show_footer = self.interactive or self.options.verbose
        renderer.end(footer if show_footer else None, stopped=status == "cancelled")
        self.state.metrics.add(record, status=status)
        if status == "ok":
            self.watcher.used()

    async def _stream(self, run: ChatRun, renderer: ReplyRenderer) -> str:
        """Show the reply as it comes: ``ok``, or ``cancelled`` when Ctrl-C came during the
        engine's start."""
        self._phase = "streaming"
        if self.options.verbose:
            self._verbose(run)
        if self._stop_requested:
            return "cancelled"
        async for text in run.text_deltas():
            renderer.feed(text)
        return "ok"

    def _reply_failed(self, renderer: ReplyRenderer, exc: Exception) -> None:
        renderer.end(None)
        self._failed = True
        self.state.metrics.add(None, status="error")
        if isinstance(exc, BackendError):
            self.error(exc.message, exc.hint)
        else:  # not the engine's words: say what broke, keep the chat alive
            self.error(f"{type(exc).__name__}: {exc}")

    def _verbose(self, run: ChatRun) -> None:
        self.info(f"plan: {run.plan.summary()}")
        memories, self._memories = self._memories, []
        for memory in memories:
            title = getattr(memory, "title", None) or getattr(memory, "conversation_id", "")
            snippet = getattr(memory, "snippet", "") or ""
            self.info(f"memory: {title} — {snippet}")


@contextlib.contextmanager
def _no_echo(enabled: bool) -> Iterator[None]:
    """Keep keys typed during a reply off the screen: an echoed ``^C`` at the end of a full
    line wraps it and throws off the live redraw."""
    try:
        import termios
    except ImportError:  # Windows: the console does not echo into the output stream
        enabled = False
    if not enabled or not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield
        return
    quiet = list(saved)
    quiet[3] &= ~(termios.ECHO | getattr(termios, "ECHOCTL", 0))
    termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        with contextlib.suppress(termios.error):
            termios.tcsetattr(fd, termios.TCSANOW, saved)


class SlashCompleter(Completer):
    """Completes slash command names, then a command's choices (``/profile f`` → ``fast``)."""

    def get_completions(
        self, document: Document, complete_event: CompleteEvent
    ) -> Iterator[Completion]:
        text = document.text_before_cursor
        if "\n" in text:
            return
        _, space, rest = text.partition(" ")
        typed = rest if space else text
        for option in complete(text):
            spec = COMMANDS.get(option[1:]) if option.startswith("/") else None
            yield Completion(
                option, start_position=-len(typed), display_meta=spec.help if spec else None
            )


async def run_chat(
    runtime: Runtime,
    options: ChatOptions,
    *,
    interactive: bool,
    check_fit: FitCheck | None = None,
    stdin: TextIO | None = None,
) -> int:
    """Open a chat on ``runtime`` and run it to the end; returns the exit status."""
    chat = Chat(runtime, options, interactive=interactive, check_fit=check_fit)
    status = await chat.open()
    if status:
        return status
    try:
        if interactive:
            await chat.interactive_loop()
            return 0
        return await chat.piped_loop(stdin or sys.stdin)
    finally:
        with contextlib.suppress(Exception):
            await chat.close()
