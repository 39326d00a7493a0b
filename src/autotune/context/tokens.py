"""Token counts for planning: a per-model characters-per-token ratio, calibrated from the engine.

Before a model is loaded its tokenizer is not at hand, so the planner sizes the context
from an estimate. The ratio starts conservative (more tokens than reality, so a context is
never sized too small) and is pulled towards what the engine reports as ``prompt_tokens``
for the text autotune sent it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["TokenEstimator", "message_chars"]

#: Characters per token before any calibration. English on BPE tokenizers is ~4; code and
#: other scripts are denser, so 3.0 over-counts a little, which errs on the safe side.
DEFAULT_CHARS_PER_TOKEN = 3.0
#: Tokens the chat template adds around each message (role markers, separators).
PER_MESSAGE_OVERHEAD = 4
_SMOOTHING = 0.3


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

    def ratio(self, model: str) -> float:
        return self._ratio.get(model, self.default_ratio)

    def count(self, model: str, messages: list[Mapping[str, Any]]) -> int:
        chars = message_chars(messages)
        return math.ceil(chars / self.ratio(model)) + PER_MESSAGE_OVERHEAD * len(messages)

    def observe(self, model: str, messages: list[Mapping[str, Any]], prompt_tokens: int) -> None:
        """Calibrate from the engine's prompt token count for these messages."""
        text_tokens = prompt_tokens - PER_MESSAGE_OVERHEAD * len(messages)
        chars = message_chars(messages)
        if text_tokens < 16 or chars < 64:
            return  # too little text to learn from
        seen = chars / text_tokens
        old = self._ratio.get(model)
        self._ratio[model] = seen if old is None else (1 - _SMOOTHING) * old + _SMOOTHING * seen
