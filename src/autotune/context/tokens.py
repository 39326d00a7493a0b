"""Token counts: exact from the engine's tokenizer when at hand, else a cautious estimate.

Before a model is loaded its tokenizer is not at hand, so the planner sizes the context
from an estimate. The estimate leans high, so a context is never sized too small: ASCII
text is counted at a calibrated characters-per-token ratio (starting conservative and pulled
towards what the engine reports as ``prompt_tokens``), and every byte of other text (CJK,
emoji, accents) as a token of its own — byte-level tokenizers never use more, and emoji
really do take several (measured on the bundled model: 3,000 emoji were 6,030 tokens, which
a characters-per-token ratio had put at 1,000). Once the engine can tokenize (llama.cpp
``/tokenize``), each message's exact count is learned once and cached by a digest of its text.

:class:`TokenTable` is the frozen view a request's decisions use: the counts known when
its facts were gathered, so deciding never waits on an engine.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "TokenEstimator",
    "TokenTable",
    "estimate_text",
    "message_chars",
    "message_text",
    "text_key",
]

#: Characters per token before any calibration. English on BPE tokenizers is ~4; code and
#: other scripts are denser, so 3.0 over-counts a little, which errs on the safe side.
DEFAULT_CHARS_PER_TOKEN = 3.0
#: Tokens the chat template adds around each message (role markers, separators).
PER_MESSAGE_OVERHEAD = 4
_SMOOTHING = 0.3
#: Exact counts kept per process (digest → count); the oldest go first.
_MAX_EXACT = 50_000

Message = Mapping[str, Any]


def message_text(m: Message) -> str:
    """The text a message contributes to the prompt (content and tool calls)."""
    content = m.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "".join(p.get("text", "") for p in content if isinstance(p, Mapping))
    else:
        text = ""
    if m.get("tool_calls"):
        text += str(m["tool_calls"])
    return text


def message_chars(messages: Iterable[Message]) -> int:
    """Characters of text in OpenAI messages (content strings, text parts, tool calls)."""
    return sum(len(message_text(m)) for m in messages)


def text_key(text: str) -> str:
    """The cache key of a text: a digest, so the cache holds no prompt text."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def estimate_text(text: str, ratio: float) -> int:
    """Tokens ``text`` may take: a token per digit (Gemma, SmolLM2 and others split numbers
    into digits: a page of figures measured 18 % over a characters-per-token estimate), the
    other ASCII at ``ratio`` characters a token, and other text a token per UTF-8 byte (an
    upper bound for byte-level tokenizers)."""
    digits = sum(1 for c in text if c.isdigit() and c < "\x80")
    if text.isascii():
        return math.ceil((len(text) - digits) / ratio) + digits
    ascii_chars = sum(1 for c in text if c < "\x80")
    other = text.encode("utf-8", "surrogatepass")
    return math.ceil((ascii_chars - digits) / ratio) + digits + len(other) - ascii_chars


@dataclass(frozen=True)
class TokenTable:
    """Counts for one request's decisions: exact where the engine said, else estimated."""

    ratio: float = DEFAULT_CHARS_PER_TOKEN
    exact: Mapping[str, int] = field(default_factory=dict)

    def text(self, text: str) -> int:
        known = self.exact.get(text_key(text)) if text else 0
        return known if known is not None else estimate_text(text, self.ratio)

    def count(self, messages: Sequence[Message]) -> int:
        """Prompt tokens for these messages, template overhead included."""
        return PER_MESSAGE_OVERHEAD * len(messages) + sum(
            self.text(message_text(m)) for m in messages
        )

    def is_exact(self, messages: Sequence[Message]) -> bool:
        """Every message's count came from the engine's tokenizer."""
        return all(not t or text_key(t) in self.exact for t in (message_text(m) for m in messages))


class TokenEstimator:
    """Per model: the calibrated estimate ratio and the exact counts the engine gave."""

    def __init__(self, default_ratio: float = DEFAULT_CHARS_PER_TOKEN) -> None:
        self.default_ratio = default_ratio
        self._ratio: dict[str, float] = {}
        #: (model, text digest) → exact token count from the engine's tokenizer.
        self._exact: OrderedDict[tuple[str, str], int] = OrderedDict()

    def ratio(self, model: str) -> float:
        return self._ratio.get(model, self.default_ratio)

    def table(self, model: str, messages: Sequence[Message]) -> TokenTable:
        """The frozen counts for these messages (exact ones where learned)."""
        exact = {}
        for m in messages:
            key = text_key(message_text(m))
            known = self._exact.get((model, key))
            if known is not None:
                exact[key] = known
        return TokenTable(self.ratio(model), exact)

    def count(self, model: str, messages: Sequence[Message]) -> int:
        """Tokens for these messages: exact where learned, estimated elsewhere."""
        return self.table(model, messages).count(messages)

    def unknown(self, model: str, messages: Sequence[Message]) -> list[str]:
        """Texts of these messages whose exact count is not known yet (newest first)."""
        seen: dict[str, None] = {}
        for m in reversed(messages):
            text = message_text(m)
            if text and (model, text_key(text)) not in self._exact:
                seen.setdefault(text)
        return list(seen)

    def learn(self, model: str, text: str, tokens: int) -> None:
        self._exact[(model, text_key(text))] = tokens
        while len(self._exact) > _MAX_EXACT:
            self._exact.popitem(last=False)

    def observe(self, model: str, messages: Sequence[Message], prompt_tokens: int) -> None:
        """Calibrate the ASCII ratio from the engine's prompt token count for these messages."""
        texts = [message_text(m) for m in messages]
        if not all(t.isascii() for t in texts):
            return  # the ratio is for ASCII text; other text is counted by its bytes
        digits = sum(1 for t in texts for c in t if c.isdigit())
        text_tokens = prompt_tokens - PER_MESSAGE_OVERHEAD * len(messages) - digits
        chars = sum(len(t) for t in texts) - digits
        if text_tokens < 16 or chars < 64:
            return  # too little text to learn from
        seen = chars / text_tokens
        old = self._ratio.get(model)
        self._ratio[model] = seen if old is None else (1 - _SMOOTHING) * old + _SMOOTHING * seen
