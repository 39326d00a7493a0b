"""An in-process engine for unit tests of the pipeline: queued replies, recorded requests.

Like llm's ``MockModel``: queue what the "engine" answers, run requests through the real
pipeline, then look at what it was sent. It behaves like an engine autotune loads (the
embedded llama.cpp one): load-time settings, a reload when they change, a tokenizer that
only answers while the model is loaded, timings on the last chunk with the prompt tokens
reused from the previous prompt. Its tokenizer is a plain rule so tests can predict counts:
one token per whitespace-separated ASCII word and one per other character.

With ``kv_dir`` it also has llama.cpp's slots: requests pinned with ``id_slot``, each slot
reusing its own previous prompt, ``/apply-template`` + ``/tokenize`` (``tokenize_prompt``), and
``/slots`` save/restore as files in that folder with llama.cpp's header (magic, version 4,
the token list) so autotune reads what a file holds as it does on the real engine; the rest of
a file names the model's identity, and a file of another model, or not a slot file, is refused
like llama.cpp refuses it: a 400.
"""

from __future__ import annotations

import asyncio
import dataclasses
import struct
import zlib
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autotune.backends.base import Backend
from autotune.context.tokens import PER_MESSAGE_OVERHEAD, message_text
from autotune.ground.errors import BackendError, NotSupported, UpstreamError
from autotune.ground.kv import KvIdentity, SlotLayout
from autotune.ground.types import (
    Capabilities,
    ChatRequest,
    Chunk,
    EngineStats,
    LoadSettings,
    ModelEntry,
    ModelMeta,
    RunningModel,
)

__all__ = ["FakeBackend", "FakeReply", "fake_ids", "fake_tokens", "slot_file"]

MODEL = "fake-model"
#: What the fake says a token's KV takes (the bundled model's real figure: 23,040 bytes).
_BYTES_PER_TOKEN = 23_040

LIKE_EMBEDDED = Capabilities(
    load_control=True,
    kv_cache_type=True,
    flash_attention=True,
    context_change_reloads=True,
    reports_cached_tokens=True,
    tokenize=True,
    running_models=True,
    keep_alive=True,
    unload=True,
)


def fake_tokens(text: str) -> list[str]:
    """The fake tokenizer: ASCII words, and every other character on its own."""
    tokens: list[str] = []
    for word in text.split():
        if word.isascii():
            tokens.append(word)
        else:
            tokens.extend(word)
    return tokens


def fake_ids(tokens: Sequence[str]) -> list[int]:
    """Token ids for the fake's tokens (stable across runs: a CRC of each)."""
    return [zlib.crc32(t.encode()) & 0x7FFFFFFF for t in tokens]


def slot_file(tokens: Sequence[int], identity: str) -> bytes:
    """A slot file as llama.cpp writes it (format 4), its state replaced by ``identity``."""
    words = [-1, 1, len(tokens), *tokens, 0]
    head = struct.pack("<III", 0x67677371, 4, len(words))
    return head + struct.pack(f"<{len(words)}i", *words) + identity.encode()


@dataclass
class FakeReply:
    """One queued answer: text pieces (or tool calls), or an error raised before any chunk."""

    pieces: Sequence[str] = ("Hello", " there")
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "stop"
    error: BackendError | None = None
    #: Raise this after the first chunk (a failure mid-stream).
    fail_midway: BackendError | None = None
    #: More llama.cpp ``timings`` fields for the last chunk (e.g. ``draft_n``, as documented).
    timings: dict[str, Any] = field(default_factory=dict)


class FakeBackend(Backend):
    """A scripted engine: ``queue()`` replies, then read ``requests`` and ``loads``."""

    name = "fake"

    def __init__(
        self,
        *,
        capabilities: Capabilities = LIKE_EMBEDDED,
        meta: ModelMeta | None = None,
        models: Sequence[str] = (MODEL,),
        kv_dir: Path | None = None,
        ram_tokens: int = 0,
    ) -> None:
        self.kv_dir = kv_dir
        #: Tokens the host-RAM prompt cache holds (0: none), and what it holds.
        self.ram_tokens = ram_tokens
        self._ram: list[list[int]] = []
        #: Prompts tokenized for a KV look-up (``tokenize_prompt`` calls).
        self.lookups = 0
        if kv_dir is not None:
            capabilities = dataclasses.replace(capabilities, slots=True)
        self.capabilities = capabilities
        self.meta = meta or ModelMeta(name=MODEL, context_length=8192)
        self.models = list(models)
        self.replies: deque[FakeReply] = deque()
        self.requests: list[ChatRequest] = []
        #: Every load, in order: (model, settings).
        self.loads: list[tuple[str, LoadSettings | None]] = []
        self._loaded: dict[str, LoadSettings] = {}
        #: What each (model, slot) holds: the tokens of its last prompt.
        self._last_prompt: dict[tuple[str, int], list[int]] = {}
        self._generation: dict[str, int] = {}
        #: Every slot action, in order: (action, slot, filename).
        self.slot_actions: list[tuple[str, int, str]] = []
        #: Slots serving a request now: a save or restore into one of them is a bug.
        self.busy: set[int] = set()

    def queue(self, *replies: FakeReply | str) -> None:
        for r in replies:
            self.replies.append(FakeReply((r,)) if isinstance(r, str) else r)

    # -- the Backend interface

    async def health(self) -> bool:
        return True

    async def list_models(self) -> list[ModelEntry]:
        return [ModelEntry(name=m, backend=self.name) for m in self.models]

    async def model_meta(self, model: str) -> ModelMeta:
        return self.meta

    async def running_models(self) -> list[RunningModel]:
        return [
            RunningModel(name=m, backend=self.name, context_length=s.n_ctx)
            for m, s in self._loaded.items()
        ]

    def loaded_settings(self, model: str) -> LoadSettings | None:
        if not self.capabilities.load_control:
            raise NotSupported("this fake does not report load settings")
        return self._loaded.get(model)

    async def load(self, model: str, settings: LoadSettings | None = None) -> bool:
        wanted = settings or LoadSettings(n_ctx=4096)
        if self._loaded.get(model) == wanted:  # like the embedded engine: same settings, no-op
            return False
        if self.before_unload is not None and model in self._loaded:
            await self.before_unload(model)
        self._load(model, wanted)
        return True

    async def preload(self, model: str, settings: LoadSettings) -> bool:
        """Like the embedded engine's warm start: load unless loaded (no budget here)."""
        if model in self._loaded:
            return False
        self._load(model, settings)
        return True

    async def unload(self, model: str) -> None:
        if self.before_unload is not None and model in self._loaded:
            await self.before_unload(model)
        self._loaded.pop(model, None)
        self._forget(model)

    async def aclose(self) -> None:
        for model in list(self._loaded):
            await self.unload(model)

    def slot_layout(self, model: str) -> SlotLayout | None:
        settings = self._loaded.get(model)
        if self.kv_dir is None or settings is None:
            return None
        identity = KvIdentity(f"fake|{model}", "f16", "f16", settings.n_parallel)
        ram_bytes = self.ram_tokens * _BYTES_PER_TOKEN
        return SlotLayout(
            self._generation[model], settings.n_parallel, settings.n_ctx, identity, ram_bytes
        )

    async def slot_action(
        self, model: str, slot: int, action: str, filename: str
    ) -> dict[str, Any]:
        assert self.kv_dir is not None
        if slot in self.busy:
            raise AssertionError(f"a {action} of slot {slot} while it serves a request")
        self.slot_actions.append((action, slot, filename))
        path = self.kv_dir / filename
        layout = self.slot_layout(model)
        assert layout is not None
        if action == "save":
            tokens = self._last_prompt.get((model, slot), [])
            path.write_bytes(slot_file(tokens, layout.identity.key))
            return {"n_saved": len(tokens), "n_written": len(tokens) * _BYTES_PER_TOKEN}
        from autotune.store.kv import saved_tokens

        tokens = saved_tokens(path) if path.is_file() else None
        data = path.read_bytes() if tokens is not None else b""
        if tokens is None or not data.endswith(layout.identity.key.encode()):
            raise UpstreamError(
                400, "Unable to restore slot: invalid slot save file", "fake"
            ) from None
        self._last_prompt[(model, slot)] = tokens
        return {"n_restored": len(tokens), "n_read": len(data)}

    async def tokenize(self, model: str, text: str) -> list[int]:
        if model not in self._loaded:
            raise NotSupported(f"{model} is not loaded; its tokenizer is not at hand.")
        return list(range(len(fake_tokens(text))))

    async def tokenize_prompt(self, request: ChatRequest, raw: str | None = None) -> list[int]:
        if request.model not in self._loaded:
            raise NotSupported(f"{request.model} is not loaded; its tokenizer is not at hand.")
        self.lookups += 1
        return self._prompt_ids(request, raw)

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        reply = self.replies.popleft() if self.replies else FakeReply()
        if reply.error is not None:
            raise reply.error
        reloaded = False
        if request.load is not None and self._loaded.get(request.model) != request.load:
            self._load(request.model, request.load)
            reloaded = True
        prompt = self._prompt_ids(request, None)
        held = self._loaded.get(request.model)
        if held is not None and len(prompt) > held.n_ctx:  # llama.cpp's own words
            raise UpstreamError(
                400,
                f"request ({len(prompt)} tokens) exceeds the available context size "
                f"({held.n_ctx} tokens), try increasing it",
                "fake",
            )
        slot = int(request.params.get("id_slot", 0))
        cached = self._reuse(request.model, slot, prompt)
        self._last_prompt[(request.model, slot)] = prompt
        self.busy.add(slot)
        try:
            await asyncio.sleep(0)  # let concurrent requests interleave
            async for chunk in self._chunks(reply, len(prompt), cached, reloaded):
                yield chunk
        finally:
            self.busy.discard(slot)

    # -- helpers

    def _prompt_ids(self, request: ChatRequest, raw: str | None) -> list[int]:
        if raw is not None:
            return fake_ids(fake_tokens(raw))
        return fake_ids(self.prompt_tokens(request.messages))

    @staticmethod
    def prompt_tokens(messages: Sequence[dict[str, Any]]) -> list[str]:
        """The prompt as the fake engine tokenizes it (template overhead included)."""
        tokens: list[str] = []
        for m in messages:
            tokens += ["<|", str(m.get("role")), "|>", "\n"][:PER_MESSAGE_OVERHEAD]
            tokens += fake_tokens(message_text(m))
        return tokens

    def _reuse(self, model: str, slot: int, prompt: list[int]) -> int:
        """Tokens reused for ``prompt`` on ``slot``: its own content, or, with a host-RAM
        cache, the best prefix kept there (llama.cpp keeps a slot's state when a different
        prompt takes the slot, and swaps the best match back in)."""
        held = self._last_prompt.get((model, slot), [])
        cached = _common_prefix(held, prompt)
        if not self.ram_tokens:
            return cached
        if held and cached < len(held):  # another prompt takes the slot: keep the old one
            self._ram.append(held)
        best = max(self._ram, key=lambda kept: _common_prefix(kept, prompt), default=None)
        if best is not None and _common_prefix(best, prompt) > cached:
            self._ram.remove(best)
            cached = _common_prefix(best, prompt)
        while sum(len(kept) for kept in self._ram) > self.ram_tokens:
            self._ram.pop(0)  # the oldest go first
        return cached

    def _load(self, model: str, settings: LoadSettings) -> None:
        self.loads.append((model, settings))
        self._loaded[model] = settings
        self._forget(model)  # a reload drops the prompt cache
        self._generation[model] = self._generation.get(model, 0) + 1

    def _forget(self, model: str) -> None:
        for key in [k for k in self._last_prompt if k[0] == model]:
            del self._last_prompt[key]

    async def _chunks(
        self, reply: FakeReply, prompt: int, cached: int, reloaded: bool
    ) -> AsyncIterator[Chunk]:
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1}
        yield Chunk({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        for i, piece in enumerate(reply.pieces):
            if i == 1 and reply.fail_midway is not None:
                raise reply.fail_midway
            yield Chunk({**base, "choices": [{"index": 0, "delta": {"content": piece}}]})
        if reply.tool_calls:
            delta = {"tool_calls": [{"index": i, **c} for i, c in enumerate(reply.tool_calls)]}
            yield Chunk({**base, "choices": [{"index": 0, "delta": delta}]})
        completion = sum(len(fake_tokens(p)) for p in reply.pieces)
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
        }
        stats = EngineStats(
            prompt_tokens=prompt,
            cached_tokens=cached,
            completion_tokens=completion,
            prompt_ms=float(prompt - cached),
            decode_ms=float(completion),
            reloaded=reloaded,
            load_ms=1.0 if reloaded else None,  # as the embedded engine's worker reports a load
            raw={
                "usage": usage,
                "timings": {"prompt_n": prompt - cached, "cache_n": cached, **reply.timings},
            },
        )
        finish = {"index": 0, "delta": {}, "finish_reason": reply.finish_reason}
        yield Chunk({**base, "choices": [finish], "usage": usage}, stats=stats)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
