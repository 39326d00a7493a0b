"""The terminal chat loop: reads lines, runs slash commands, streams replies from the pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from prompt_toolkit.completion import CompleteEvent, Completer, Completion
from prompt_toolkit.document import Document
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from autotune.chat.commands import (
    COMMANDS,
    Command,
    SessionMetrics,
    complete,
    format_conversation_list,
    help_lines,
    parse_command,
    parse_recall,
)
from autotune.chat.render import MarkdownRenderer, PlainRenderer, ReplyRenderer, footer_text
from autotune.chat.watcher import ModelWatcher, UnloadNotice
from autotune.ground.errors import BackendError
from autotune.ground.profiles import get_profile
from autotune.pipeline import ChatInput, ChatRun
from autotune.store.conversations import new_conversation_id

if TYPE_CHECKING:
    from autotune.runtime import Runtime

__all__ = ["Chat", "ChatOptions", "FitCheck", "SlashCompleter", "run_chat"]

#: ``(model, profile) → None`` when a load is safe, else one sentence with the numbers.
FitCheck = Callable[[str, str], Awaitable[str | None]]

_ENGINE_LABEL = {"embedded": "embedded llama.cpp (autotune-managed worker)"}
_URL_SETTINGS = {
    "ollama": "ollama_url",
    "lmstudio": "lmstudio_url",
    "llamacpp": "llamacpp_url",
    "openai": "openai_url",
}


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


@dataclass
class _State:
    model: str = ""
    engine: str = ""
    profile: str = "balanced"
    conversation_id: str = ""
    #: The conversation exists in the store (it is created with the first message).
    stored: bool = False
    metrics: SessionMetrics = field(default_factory=SessionMetrics)
    #: Conversation ids of the last /recall listing, for "/recall 2".
    listing: list[str] = field(default_factory=list)


class Chat:
    """One chat session over a :class:`~autotune.runtime.Runtime`."""

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
        self.state = _State()
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
        if not opts.checked and not await self._fit_ok(name, profile):
            return 1
        if opts.system:
            await self._set_system(opts.system)
        self._header(resumed=bool(opts.conversation_id))
        self.watcher.watch(backend.name, name)
        self.watcher.start()
        return 0

    async def close(self) -> None:
        await self.watcher.stop()

    async def _fit_ok(self, model: str, profile: str) -> bool:
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

    def _engine_label(self, engine: str) -> str:
        backend = self.runtime.backends.get(engine)
        if engine in _ENGINE_LABEL:
            return _ENGINE_LABEL[engine]
        url = getattr(backend, "base_url", "") if backend is not None else ""
        return f"{engine} at {url}" if url else engine

    def _header(self, *, resumed: bool) -> None:
        s = self.state
        title = "resumed conversation" if resumed else "conversation"
        self.say(f"autotune chat · {title} {s.conversation_id}", "bold")
        self.say(
            f"model {s.model} · engine {self._engine_label(s.engine)} · profile {s.profile}",
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
        """Run a parsed command; False for /quit."""
        handler = getattr(self, f"_cmd_{command.name}")
        result = await handler(command.arg)
        return result is not False

    # ------------------------------------------------------------------ replies

    def _renderer(self) -> ReplyRenderer:
        if self.interactive:
            return MarkdownRenderer(self.console)
        return PlainRenderer(self.out, self.err)

    async def _ensure_conversation(self, **fields: Any) -> None:
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
        await self._ensure_conversation()
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
        await self._ensure_conversation(system=system)

    async def _reply(self, inp: ChatInput) -> None:
        renderer = self._renderer()
        renderer.begin()
        run: ChatRun | None = None
        status = "ok"
        try:
            run = await self.runtime.pipeline.start(inp)
            self._phase = "streaming"
            if self.options.verbose:
                self._verbose(run)
            if not self._stop_requested:
                async for chunk in run:
                    for choice in chunk.data.get("choices") or ():
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            renderer.feed(content)
            else:
                status = "cancelled"
        except asyncio.CancelledError:
            status = "cancelled"
            current = asyncio.current_task()
            if current is not None and hasattr(current, "uncancel"):
                current.uncancel()
        except Exception as exc:
            renderer.end(None)
            self._failed = True
            self.state.metrics.add(None, status="error")
            if isinstance(exc, BackendError):
                self.error(exc.message, exc.hint)
            else:  # not the engine's words: say what broke, keep the chat alive
                self.error(f"{type(exc).__name__}: {exc}")
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

    def _verbose(self, run: ChatRun) -> None:
        self.info(f"plan: {run.plan.summary()}")
        memories, self._memories = self._memories, []
        for memory in memories:
            title = getattr(memory, "title", None) or getattr(memory, "conversation_id", "")
            snippet = getattr(memory, "snippet", "") or ""
            self.info(f"memory: {title} — {snippet}")

    # ------------------------------------------------------------------ commands

    async def _cmd_help(self, arg: str) -> None:
        width = max(len(usage) for usage, _ in help_lines())
        for usage, text in help_lines():
            self.say(f"  {usage.ljust(width)}  {text}")
        self.info("  A line starting with // sends a message that starts with /.")

    async def _cmd_quit(self, arg: str) -> bool:
        return False

    async def _cmd_new(self, arg: str) -> None:
        s = self.state
        s.conversation_id, s.stored = new_conversation_id(), False
        self.say(f"New conversation {s.conversation_id}.")

    async def _cmd_delete(self, arg: str) -> None:
        s = self.state
        old = s.conversation_id
        deleted = s.stored and await asyncio.to_thread(self.runtime.store.delete, old)
        s.conversation_id, s.stored = new_conversation_id(), False
        s.listing = [i for i in s.listing if i != old]
        what = f"Deleted {old}" if deleted else f"{old} had nothing stored"
        self.say(f"{what}; new conversation {s.conversation_id}.")

    async def _cmd_history(self, arg: str) -> None:
        s = self.state
        messages = (
            await asyncio.to_thread(self.runtime.store.messages, s.conversation_id)
            if s.stored
            else []
        )
        conv = (
            await asyncio.to_thread(self.runtime.store.get, s.conversation_id, with_messages=False)
            if s.stored
            else None
        )
        if conv is not None and conv.system:
            self.say(f"system: {conv.system}", "magenta")
        if not messages:
            self.say("No messages yet in this conversation.")
            return
        for m in messages:
            style = "cyan" if m.role == "user" else ""
            label = "you" if m.role == "user" else m.role
            self.say(f"{label}: {m.content}", style)

    async def _cmd_profile(self, arg: str) -> None:
        s = self.state
        if not await self._fit_ok(s.model, arg):
            return
        s.profile = arg
        if s.stored:
            await self._ensure_conversation(profile=arg)
        profile = get_profile(arg)
        self.say(f"profile {arg}: {profile.description}")
        self.info("A loaded model keeps its context and KV settings until its next load.")

    async def _cmd_model(self, arg: str) -> None:
        s = self.state
        backend, name = await self.runtime.backends.resolve(arg)
        if not await self._fit_ok(name, s.profile):
            return
        s.model, s.engine = name, backend.name
        self.watcher.watch(backend.name, name)
        if s.stored:
            await self._ensure_conversation(model=name)
        self.say(f"model {name} · engine {self._engine_label(backend.name)}")

    async def _set_system(self, text: str) -> None:
        await self._ensure_conversation(system=text)

    async def _cmd_system(self, arg: str) -> None:
        await self._set_system(arg)
        self.say(f"System prompt set for {self.state.conversation_id}.")

    async def _cmd_export(self, arg: str) -> None:
        s = self.state
        store = self.runtime.store
        count = len(await asyncio.to_thread(store.messages, s.conversation_id)) if s.stored else 0
        if not count:
            self.say("Nothing to export yet: send a message first.")
            return
        text = await asyncio.to_thread(store.export_markdown, s.conversation_id)
        exports = Path(self.runtime.settings.exports_dir)
        path = exports / f"{s.conversation_id}.md"

        def write() -> None:
            exports.mkdir(parents=True, exist_ok=True)
            path.write_text(text or "", encoding="utf-8")

        await asyncio.to_thread(write)
        self.say(f"Exported {count} messages to {path}")

    async def _cmd_metrics(self, arg: str) -> None:
        for line in self.state.metrics.lines():
            self.say(line)

    async def _cmd_backends(self, arg: str) -> None:
        from autotune.backends.registry import ENGINE_ORDER, probe_engines

        settings = self.runtime.settings
        order = self.runtime.backends.order
        reachable = await probe_engines(settings, ENGINE_ORDER)
        for engine in ENGINE_ORDER:
            url = getattr(settings, _URL_SETTINGS[engine], None)
            if not url:
                self.say(f"  {engine:<9} not configured")
                continue
            state = "reachable" if reachable.get(engine) else "not reachable"
            use = (
                " · in use"
                if engine in order
                else (" · restart the chat to use it" if reachable.get(engine) else "")
            )
            mark = " · this chat" if engine == self.state.engine else ""
            self.say(f"  {engine:<9} {url}  {state}{use}{mark}")
        installed = importlib.util.find_spec("xllamacpp") is not None
        state = "available" if installed else "missing (run `make setup`)"
        use = " · in use" if "embedded" in order else ""
        mark = " · this chat" if self.state.engine == "embedded" else ""
        self.say(f"  {'embedded':<9} llama.cpp (built in)  {state}{use}{mark}")

    async def _cmd_models(self, arg: str) -> None:
        from autotune.ground.units import format_bytes

        inventory = await self.runtime.backends.inventory(fresh=True)
        for engine in self.runtime.backends.order:
            models = inventory.get(engine, [])
            problem = self.runtime.backends.errors.get(engine)
            self.say(f"{engine}:", "bold")
            if problem is not None:
                self.warn(f"  {problem}")
            elif not models:
                self.say("  (no models)")
            for m in models:
                mark = "*" if (engine, m.name) == (self.state.engine, self.state.model) else " "
                self.say(f" {mark}{m.name}  {format_bytes(m.size_bytes)}")

    async def _cmd_recall(self, arg: str) -> None:
        request = parse_recall(arg)
        if request.kind == "search":
            await self._recall_search(request.value)
        elif request.kind == "pick":
            await self._resume(request.value)
        else:
            await self._recall_list()

    async def _recall_list(self) -> None:
        conversations = await asyncio.to_thread(self.runtime.store.list, limit=10)
        if not conversations:
            self.say("No conversations yet.")
            return
        self.state.listing = [c.id for c in conversations]
        for line in format_conversation_list(
            conversations, current=self.state.conversation_id if self.state.stored else None
        ):
            self.say(line)
        if not self.interactive:
            return
        from prompt_toolkit import PromptSession
        from prompt_toolkit.patch_stdout import patch_stdout

        session: PromptSession[str] = PromptSession()
        try:
            with patch_stdout(raw=True):
                answer = await session.prompt_async(
                    "resume which? (number, Enter to stay) › ", handle_sigint=False
                )
        except (KeyboardInterrupt, EOFError):
            return
        if answer.strip():
            await self._resume(answer.strip())

    async def _recall_search(self, query: str) -> None:
        if not query:
            self.error("Usage: /recall search <query>")
            return
        manager = getattr(self.runtime, "recall", None)
        if manager is None or not hasattr(manager, "search"):
            self.say("Memory search is not set up yet; /recall lists recent conversations.")
            return
        if hasattr(manager, "asearch"):
            hits = await manager.asearch(query, limit=10)
        else:
            hits = await asyncio.to_thread(manager.search, query, limit=10)
        if not hits:
            self.say(f"Nothing found for {query!r}.")
            return
        self.state.listing = [h.conversation_id for h in hits]
        for i, hit in enumerate(hits, start=1):
            stamp = time.strftime("%Y-%m-%d", time.localtime(getattr(hit, "created_at", 0) or 0))
            title = getattr(hit, "title", None) or "(untitled)"
            snippet = " ".join(str(getattr(hit, "snippet", "")).split())
            self.say(f" {i:>2}. {stamp}  {title}  [{hit.conversation_id}]")
            if snippet:
                self.info(f"     {snippet}")
        self.info("/recall <number> resumes one.")

    async def _resume(self, choice: str) -> None:
        s = self.state
        if choice.isdigit():
            if not s.listing:
                s.listing = [
                    c.id for c in await asyncio.to_thread(self.runtime.store.list, limit=10)
                ]
            index = int(choice) - 1
            if not 0 <= index < len(s.listing):
                self.error(f"No conversation number {choice}; /recall lists them.")
                return
            choice = s.listing[index]
        conv = await asyncio.to_thread(self.runtime.store.get, choice, with_messages=False)
        if conv is None:
            self.error(f"No conversation {choice!r}; /recall lists them.")
            return
        s.conversation_id, s.stored = conv.id, True
        self.say(f"Resumed {conv.id}: {conv.title or '(untitled)'} ({conv.message_count} messages)")
        if conv.model and conv.model != s.model:
            try:
                backend, name = await self.runtime.backends.resolve(conv.model)
            except BackendError as exc:
                self.warn(f"Staying on {s.model}: the conversation's model {conv.model} — {exc}")
                return
            s.model, s.engine = name, backend.name
            self.watcher.watch(backend.name, name)
            self.say(f"model {name} · engine {self._engine_label(backend.name)}")

    async def _cmd_pull(self, arg: str) -> None:
        pullers = [b for b in self.runtime.backends.backends.values() if b.capabilities.pull]
        if not pullers:
            self.say(
                "No Ollama engine is in use, so there is nothing to pull with: start Ollama "
                "(`ollama serve`) and restart the chat. The embedded engine runs GGUF files "
                "already on disk (`autotune ls`)."
            )
            return
        backend = pullers[0]
        if self.interactive:
            await self._pull_with_bar(backend, arg)
        else:
            async for step in backend.pull(arg):
                done = f" {step.completed}/{step.total}" if step.total else ""
                self.info(f"{step.status}{done}")
        self.runtime.backends.forget(arg)
        await self.runtime.backends.inventory(fresh=True)
        self.say(f"Pulled {arg} with {backend.name}; `/model {arg}` switches to it.")

    async def _pull_with_bar(self, backend: Any, model: str) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        tasks: dict[str, Any] = {}
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=self.console,
            transient=False,
        ) as progress:
            async for step in backend.pull(model):
                if step.total:
                    key = step.status
                    if key not in tasks:
                        tasks[key] = progress.add_task(step.status[:40], total=step.total)
                    progress.update(tasks[key], completed=step.completed or 0, total=step.total)
                else:
                    progress.console.print(Text(step.status, style="dim"))


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
