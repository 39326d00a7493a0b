"""The chat's slash commands: one small async function each, registered in :data:`HANDLERS`.

Parsing, completion and help text are in :mod:`autotune.chat.commands`; this module holds
what each command does to a running chat, through the small
:class:`~autotune.chat.session.ChatSession` protocol; what is not a chat (pull, the engines'
state, the model lists) is an operation (:mod:`autotune.operations`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from autotune.chat.commands import format_conversation_list, help_lines, parse_recall
from autotune.chat.progress import show_pull
from autotune.chat.session import ChatSession
from autotune.ground.errors import BackendError
from autotune.ground.ids import new_conversation_id
from autotune.ground.profiles import get_profile
from autotune.ground.units import format_bytes
from autotune.operations.conversations import delete_conversation
from autotune.operations.engines import engine_states
from autotune.operations.pull import prepare_pull

__all__ = ["HANDLERS", "Handler"]

Chat = ChatSession
#: ``(chat, argument)``; returns False to end the chat (only /quit does).
Handler = Callable[[ChatSession, str], Awaitable[bool | None]]


async def _help(chat: Chat, arg: str) -> None:
    width = max(len(usage) for usage, _ in help_lines())
    for usage, text in help_lines():
        chat.say(f"  {usage.ljust(width)}  {text}")
    chat.info("  A line starting with // sends a message that starts with /.")


async def _quit(chat: Chat, arg: str) -> bool:
    return False


async def _new(chat: Chat, arg: str) -> None:
    s = chat.state
    s.conversation_id, s.stored = new_conversation_id(), False
    chat.say(f"New conversation {s.conversation_id}.")


async def _delete(chat: Chat, arg: str) -> None:
    s = chat.state
    old = s.conversation_id
    deleted = s.stored and await delete_conversation(chat.runtime, old)
    s.conversation_id, s.stored = new_conversation_id(), False
    s.listing = [i for i in s.listing if i != old]
    what = f"Deleted {old}" if deleted else f"{old} had nothing stored"
    chat.say(f"{what}; new conversation {s.conversation_id}.")


async def _history(chat: Chat, arg: str) -> None:
    s = chat.state
    store = chat.runtime.store
    messages = await asyncio.to_thread(store.messages, s.conversation_id) if s.stored else []
    conv = (
        await asyncio.to_thread(store.get, s.conversation_id, with_messages=False)
        if s.stored
        else None
    )
    if conv is not None and conv.system:
        chat.say(f"system: {conv.system}", "magenta")
    if not messages:
        chat.say("No messages yet in this conversation.")
        return
    for m in messages:
        style = "cyan" if m.role == "user" else ""
        label = "you" if m.role == "user" else m.role
        chat.say(f"{label}: {m.content}", style)


async def _profile(chat: Chat, arg: str) -> None:
    s = chat.state
    if not await chat.fit_ok(s.model, arg):
        return
    s.profile = arg
    if s.stored:
        await chat.ensure_conversation(profile=arg)
    profile = get_profile(arg)
    chat.say(f"profile {arg}: {profile.description}")
    chat.info("A loaded model keeps its context and KV settings until its next load.")


async def _model(chat: Chat, arg: str) -> None:
    backend, name = await chat.runtime.backends.resolve(arg)
    if not await chat.fit_ok(name, chat.state.profile):
        return
    chat.use_model(backend.name, name)
    if chat.state.stored:
        await chat.ensure_conversation(model=name)
    chat.say(f"model {name} · engine {chat.engine_label(backend.name)}")


async def _system(chat: Chat, arg: str) -> None:
    await chat.ensure_conversation(system=arg)
    chat.say(f"System prompt set for {chat.state.conversation_id}.")


async def _export(chat: Chat, arg: str) -> None:
    s = chat.state
    store = chat.runtime.store
    count = len(await asyncio.to_thread(store.messages, s.conversation_id)) if s.stored else 0
    if not count:
        chat.say("Nothing to export yet: send a message first.")
        return
    text = await asyncio.to_thread(store.export_markdown, s.conversation_id)
    exports = Path(chat.runtime.settings.exports_dir)
    path = exports / f"{s.conversation_id}.md"

    def write() -> None:
        exports.mkdir(parents=True, exist_ok=True)
        path.write_text(text or "", encoding="utf-8")

    await asyncio.to_thread(write)
    chat.say(f"Exported {count} messages to {path}")


async def _metrics(chat: Chat, arg: str) -> None:
    for line in chat.state.metrics.lines():
        chat.say(line)


async def _backends(chat: Chat, arg: str) -> None:
    order = chat.runtime.backends.order
    for state in await engine_states(chat.runtime.settings, order):
        mark = " · this chat" if state.name == chat.state.engine else ""
        use = " · in use" if state.in_use else ""
        if state.name == "embedded":
            found = "available" if state.reachable else "missing (run `make setup`)"
            chat.say(f"  {'embedded':<9} llama.cpp (built in)  {found}{use}{mark}")
        elif not state.url:
            chat.say(f"  {state.name:<9} not configured")
        else:
            found = "reachable" if state.reachable else "not reachable"
            if state.reachable and not state.in_use:
                use = " · restart the chat to use it"
            chat.say(f"  {state.name:<9} {state.url}  {found}{use}{mark}")


async def _models(chat: Chat, arg: str) -> None:
    backends = chat.runtime.backends
    inventory = await backends.inventory(fresh=True)
    for engine in backends.order:
        models = inventory.get(engine, [])
        problem = backends.errors.get(engine)
        chat.say(f"{engine}:", "bold")
        if problem is not None:
            chat.warn(f"  {problem}")
        elif not models:
            chat.say("  (no models)")
        for m in models:
            mark = "*" if (engine, m.name) == (chat.state.engine, chat.state.model) else " "
            chat.say(f" {mark}{m.name}  {format_bytes(m.size_bytes)}")


async def _recall(chat: Chat, arg: str) -> None:
    request = parse_recall(arg)
    if request.kind == "search":
        await _recall_search(chat, request.value)
    elif request.kind == "pick":
        await _resume(chat, request.value)
    else:
        await _recall_list(chat)


async def _recall_list(chat: Chat) -> None:
    conversations = await asyncio.to_thread(chat.runtime.store.list, limit=10)
    if not conversations:
        chat.say("No conversations yet.")
        return
    chat.state.listing = [c.id for c in conversations]
    for line in format_conversation_list(
        conversations, current=chat.state.conversation_id if chat.state.stored else None
    ):
        chat.say(line)
    if not chat.interactive:
        return
    answer = await _ask("resume which? (number, Enter to stay) › ")
    if answer.strip():
        await _resume(chat, answer.strip())


async def _ask(question: str) -> str:
    """One line typed at a prompt of its own; empty when the user gives up (Ctrl-C, Ctrl-D)."""
    from prompt_toolkit import PromptSession
    from prompt_toolkit.patch_stdout import patch_stdout

    session: PromptSession[str] = PromptSession()
    try:
        with patch_stdout(raw=True):
            return await session.prompt_async(question, handle_sigint=False)
    except (KeyboardInterrupt, EOFError):
        return ""


async def _recall_search(chat: Chat, query: str) -> None:
    if not query:
        chat.error("Usage: /recall search <query>")
        return
    manager = getattr(chat.runtime, "recall", None)
    if manager is None or not hasattr(manager, "search"):
        chat.say("Memory search is not set up yet; /recall lists recent conversations.")
        return
    if hasattr(manager, "asearch"):
        hits = await manager.asearch(query, limit=10)
    else:
        hits = await asyncio.to_thread(manager.search, query, limit=10)
    if not hits:
        chat.say(f"Nothing found for {query!r}.")
        return
    chat.state.listing = [h.conversation_id for h in hits]
    for i, hit in enumerate(hits, start=1):
        stamp = time.strftime("%Y-%m-%d", time.localtime(getattr(hit, "created_at", 0) or 0))
        title = getattr(hit, "title", None) or "(untitled)"
        snippet = " ".join(str(getattr(hit, "snippet", "")).split())
        chat.say(f" {i:>2}. {stamp}  {title}  [{hit.conversation_id}]")
        if snippet:
            chat.info(f"     {snippet}")
    chat.info("/recall <number> resumes one.")


async def _resume(chat: Chat, choice: str) -> None:
    s = chat.state
    if choice.isdigit():
        picked = await _listed(chat, choice)
        if picked is None:
            chat.error(f"No conversation number {choice}; /recall lists them.")
            return
        choice = picked
    conv = await asyncio.to_thread(chat.runtime.store.get, choice, with_messages=False)
    if conv is None:
        chat.error(f"No conversation {choice!r}; /recall lists them.")
        return
    s.conversation_id, s.stored = conv.id, True
    chat.say(f"Resumed {conv.id}: {conv.title or '(untitled)'} ({conv.message_count} messages)")
    if conv.model and conv.model != s.model:
        try:
            backend, name = await chat.runtime.backends.resolve(conv.model)
        except BackendError as exc:
            chat.warn(f"Staying on {s.model}: the conversation's model {conv.model} — {exc}")
            return
        chat.use_model(backend.name, name)
        chat.say(f"model {name} · engine {chat.engine_label(backend.name)}")


async def _listed(chat: Chat, number: str) -> str | None:
    """The id at ``number`` (from 1) in the last listing (the recent ones when none)."""
    s = chat.state
    if not s.listing:
        s.listing = [c.id for c in await asyncio.to_thread(chat.runtime.store.list, limit=10)]
    index = int(number) - 1
    return s.listing[index] if 0 <= index < len(s.listing) else None


async def _pull(chat: Chat, arg: str) -> None:
    """Pull a model as ``autotune pull`` does (Ollama's own pull when it is in use, else a
    GGUF from the Hugging Face hub for the embedded engine), its fit for this machine shown
    first."""
    job = await prepare_pull(chat.runtime, arg)
    if job.plan is not None:
        for file in job.plan.files:
            chat.say(f"{arg} → {job.plan.target.repo}  {file.path}  {format_bytes(file.size)}")
        if job.plan.fit is not None:
            chat.say(f"On this machine: {job.plan.fit.text}")
    job.check()
    await _show_progress(chat, job.steps())
    source = "from the Hugging Face hub" if job.plan is not None else f"with {job.engine}"
    chat.say(f"Pulled {arg} {source}; `/model {arg}` switches to it.")


async def _show_progress(chat: Chat, steps: AsyncIterator[Any]) -> None:
    """Pull progress: a bar per file in a terminal, a line per step when piped."""
    if not chat.interactive:
        async for step in steps:
            done = f" {step.completed}/{step.total}" if step.total else ""
            chat.info(f"{step.status}{done}")
        return
    await show_pull(steps, chat.console)


#: Every slash command's handler, by the name :func:`~autotune.chat.commands.parse_command`
#: gives it (one entry per :data:`~autotune.chat.commands.COMMANDS` entry).
HANDLERS: dict[str, Handler] = {
    "help": _help,
    "new": _new,
    "history": _history,
    "profile": _profile,
    "model": _model,
    "system": _system,
    "export": _export,
    "metrics": _metrics,
    "backends": _backends,
    "models": _models,
    "recall": _recall,
    "pull": _pull,
    "delete": _delete,
    "quit": _quit,
}
