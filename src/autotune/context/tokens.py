"""Token counts: exact from the engine's tokenizer when at hand, else a calibrated estimate.

Before a model is loaded its tokenizer is not at hand, so the planner sizes the context
from an estimate. The ratio starts conservative (more tokens than reality, so a context is
never sized too small) and is pulled towards what the engine reports as ``prompt_tokens``
for the text autotune sent it. Once the engine can tokenize (llama.cpp ``/tokenize``), each
message's exact count is learned once and cached by its text.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["TokenEstimator", "message_chars", "message_text"]

#: Characters per token before any calibration. English on BPE tokenizers is ~4; code and
#: other scripts are denser, so 3.0 over-counts a little, which errs on the safe side.
DEFAULT_CHARS_PER_TOKEN = 3.0
#: Tokens the chat template adds around each message (role markers, separators).
PER_MESSAGE_OVERHEAD = 4
_SMOOTHING = 0.3


def message_text(m: Mapping[str, Any]) -> str:
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


def message_chars(messages: Iterable[Mapping[str, Any]]) -> int:
    """Characters of text in OpenAI messages (content strings, text parts, tool calls)."""
    total = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(len(p.get("text", "")) for p in content if isinstance(p, Mapping))
        if m.get("tool_calls"):
            total += len(str(m["tool_calls"]))
    return total


class TokenEstimator:
    """Estimates prompt tokens per model, learning each model's ratio from engine counts."""

    def __init__(self, default_ratio: float = DEFAULT_CHARS_PER_TOKEN) -> None:
        self.default_ratio = default_ratio
        self._ratio: dict[str, float] = {}
        #: (model, text) → exact token count from the engine's tokenizer.
        self._exact: dict[tuple[str, str], int] = {}

    def ratio(self, model: str) -> float:
        return self._ratio.get(model, self.default_ratio)

    def count(self, model: str, messages: list[Mapping[str, Any]]) -> int:
        """Tokens for these messages: exact where learned, estimated elsewhere."""
        ratio = self.ratio(model)
        total = PER_MESSAGE_OVERHEAD * len(messages)
        for m in messages:
            text = message_text(m)
            exact = self._exact.get((model, text))
            total += exact if exact is not None else math.ceil(len(text) / ratio)
        return total

    def unknown(self, model: str, messages: list[Mapping[str, Any]]) -> list[str]:
        """Texts of these messages whose exact count is not known yet."""
        return [t for t in {message_text(m) for m in messages} if (model, t) not in self._exact]

    def learn(self, model: str, text: str, tokens: int) -> None:
        if len(self._exact) > 50_000:  # a bound, not a policy: old entries go first
            for key in list(self._exact)[:10_000]:
                del self._exact[key]
        self._exact[(model, text)] = tokens

    def observe(self, model: str, messages: list[Mapping[str, Any]], prompt_tokens: int) -> None:
        """Calibrate from the engine's prompt token count for these messages."""
        text_tokens = prompt_tokens - PER_MESSAGE_OVERHEAD * len(messages)
        chars = message_chars(messages)
        if text_tokens < 16 or chars < 64:
            return  # too little text to learn from
        seen = chars / text_tokens
        old = self._ratio.get(model)
        self._ratio[model] = seen if old is None else (1 - _SMOOTHING) * old + _SMOOTHING * seen
