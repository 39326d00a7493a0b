"""Scores how much a chat message matters, from chatter (0.0) to technical content (1.0).

The rule, applied to the message's text:

1. Empty text, or text with no letters or digits (emoji, punctuation): **0.0**.
2. Technical features each add a fixed weight, counted once per kind: a fenced code block
   (0.5), a stack trace or exception name (0.5), an error word such as "error", "failed",
   "fatal" (0.3), a shell command (0.3), a file path (0.2), a URL (0.2), inline code (0.2),
   a number with a unit or a version (0.15), code identifiers such as ``snake_case``,
   ``CamelCase`` or ``obj.call()`` (0.15), a high density of code punctuation (0.15).
3. A short message (at most 8 words) with no technical feature whose words are mostly
   (at least 60 %) from the chatter vocabulary ("ok", "thanks", "lol", "got it", "cool",
   "sounds good" …) is chatter: **0.0** when every word is chatter, else **0.1**.
4. Anything else is prose: ``0.2 + 0.2 * min(1, words / 30)`` (0.2 for a short question,
   0.4 for a paragraph), plus the feature weights, capped at **1.0**.

So chatter scores below :data:`CHATTER_THRESHOLD` (0.2), plain prose 0.2–0.4 and technical
content above that. Chatter is what the context window drops first when space runs short.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "CHATTER_THRESHOLD",
    "ERROR_LINE_RE",
    "FILE_EXTENSIONS",
    "is_chatter",
    "message_text",
    "score_message",
    "technical_score",
    "word_set",
]


def word_set(text: str) -> frozenset[str]:
    """The whitespace-separated words of ``text``, for writing a vocabulary as one string."""
    return frozenset(text.split())


#: Scores below this are chatter.
CHATTER_THRESHOLD = 0.2

_CHATTER_WORDS = word_set(
    """
    ok okay k kk okey alright allright right fine good great nice cool awesome perfect
    excellent amazing wonderful sweet neat brilliant super lovely
    thanks thank thx ty tysm thnx cheers appreciated appreciate much lot very so a the
    you u your it that this sense makes make sounds sound
    lol lmao lmfao rofl haha hahaha hah hehe heh xd
    yes yeah yep yup yea ya sure certainly absolutely indeed exactly true agreed correct
    no nope nah not
    np problem welcome worries
    hi hello hey hiya yo bye goodbye later cya night morning
    oh ah ahh hmm hm mhm uh um wow whoa ooh aha
    got gotcha see understood understand i i'm im me and too well just now all
    please pls plz again once more
    """
)

_WORD_RE = re.compile(r"[^\W_]+(?:'[^\W_]+)?", re.UNICODE)

_FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.MULTILINE)
_TRACE_RE = re.compile(
    r"Traceback \(most recent call last\)|^\s+at [\w$.<>]+\(|\bpanicked at\b|^goroutine \d+ \["
    r"|\b[A-Z][A-Za-z0-9]*(?:Error|Exception)\b",
    re.MULTILINE,
)
#: A line that reports an error: exception names, "error:", "FAILED", "fatal", "panic" ….
ERROR_LINE_RE = re.compile(
    r"\b[A-Z][A-Za-z0-9]*(?:Error|Exception)\b|Traceback \(most recent call last\)"
    r"|(?i:\b(?:error|errors|errno|exception|fatal|panic|panicked|failed|failure|segfault"
    r"|segmentation fault|core dumped|stack trace|traceback|undefined reference"
    r"|not found|permission denied|timed out|refused)\b)"
)
_ERROR_WORDS = word_set(
    "error errors errno exception fatal panic failed failure failing crash crashed crashes "
    "segfault bug broken warning denied refused timeout"
)
_SHELL_WORDS = word_set(
    "sudo pip pip3 python python3 uv npm npx yarn pnpm git docker kubectl cargo go make cmake "
    "brew apt curl wget ssh ls cd grep cat chmod ollama llama"
)
_SHELL_RE = re.compile(
    r"(?m)^\s*(?:\$|#|>>>|PS>|C:\\>)\s+\S|(?:^|[\s`])(?:sudo|pip|pip3|python|python3|uv|npm|npx|"
    r"yarn|pnpm|git|docker|kubectl|cargo|go|make|cmake|brew|apt|apt-get|curl|wget|ssh|ls|cd|"
    r"grep|cat|chmod|ollama|llama-server)\s+-{0,2}[\w.]"
)
_PATH_RE = re.compile(
    r"(?:^|[\s(\"'`=])(?:~?/|\.{1,2}/)?(?:[\w.-]+/)+[\w.-]+|[A-Za-z]:\\[\w\\. -]+"
)
#: File name extensions that mark a word as a file name (a regex alternation).
FILE_EXTENSIONS = (
    "py|js|ts|tsx|jsx|rs|go|java|kt|c|cc|cpp|h|hpp|cs|rb|php|swift|md|toml|yaml"
    "|yml|json|txt|cfg|ini|sh|sql|html|css|lock|gguf|log|csv"
)
_EXT_RE = re.compile(rf"(?<=[\w-])\.(?:{FILE_EXTENSIONS})\b")
_URL_RE = re.compile(r"\bhttps?://\S+|\bwww\.\S+\.\w+")
_INLINE_CODE_RE = re.compile(r"`[^`\n]+`")
_DIGIT_RE = re.compile(r"\d")
_QUANTITY_RE = re.compile(
    r"\b\d+(?:[.,]\d+)?\s?(?:ms|s|sec|seconds|min|minutes|h|hours|KB|KiB|MB|MiB|GB|GiB|TB|TiB"
    r"|bytes|%|tokens|tok/s|t/s|req/s|rps|px|Hz|MHz|GHz|cores|threads|layers)\b"
    r"|\bv?\d+\.\d+(?:\.\d+)+\b|\b[A-Za-z][\w+-]*\s+v?\d+\.\d+\b"
)
#: snake_case, camelCase / CamelCase, obj.call( and call().
_IDENT_RE = re.compile(r"[a-z0-9]_[a-z0-9]|[a-z][A-Z]|\w\.\w+\(|\w\(\)")
_TRACE_HINTS = ("Traceback", "Error", "Exception", "panicked", "goroutine", "  at ", "\tat ")
_PROMPT_HINTS = ("$ ", "# ", ">>>", "PS>", "C:\\>")
_CODE_PUNCT = frozenset("{}()[];=<>|&$")


def message_text(message: Mapping[str, Any], *, with_tool_calls: bool = True) -> str:
    """The text of an OpenAI message: its content string or text parts, and its tool calls."""
    content = message.get("content")
    if isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = "\n".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, Mapping) and isinstance(p.get("text"), str)
        )
    else:
        text = ""
    calls = _tool_calls_text(message.get("tool_calls")) if with_tool_calls else []
    if calls:
        text = (text + "\n" if text else "") + "\n".join(calls)
    return text


def _tool_calls_text(tool_calls: Any) -> list[str]:
    """``name(arguments)`` for each function call of a message."""
    calls = []
    for call in tool_calls or ():
        fn = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(fn, Mapping):
            calls.append(f"{fn.get('name', '')}({fn.get('arguments', '')})")
    return calls


def _fenced_code(text: str, words: set[str]) -> bool:
    return ("```" in text or "~~~" in text) and _FENCE_RE.search(text) is not None


def _stack_trace(text: str, words: set[str]) -> bool:
    return any(h in text for h in _TRACE_HINTS) and _TRACE_RE.search(text) is not None


def _error_word(text: str, words: set[str]) -> bool:
    return bool(words & _ERROR_WORDS) or "timed out" in text.lower()


def _shell_command(text: str, words: set[str]) -> bool:
    hinted = bool(words & _SHELL_WORDS) or any(h in text for h in _PROMPT_HINTS)
    return hinted and _SHELL_RE.search(text) is not None


def _file_path(text: str, words: set[str]) -> bool:
    slashed = ("/" in text or "\\" in text) and _PATH_RE.search(text) is not None
    return slashed or _EXT_RE.search(text) is not None


def _url(text: str, words: set[str]) -> bool:
    return ("http" in text or "www." in text) and _URL_RE.search(text) is not None


def _inline_code(text: str, words: set[str]) -> bool:
    return "`" in text and _INLINE_CODE_RE.search(text) is not None


def _quantity(text: str, words: set[str]) -> bool:
    return _DIGIT_RE.search(text) is not None and _QUANTITY_RE.search(text) is not None


def _identifier(text: str, words: set[str]) -> bool:
    return _IDENT_RE.search(text) is not None


def _code_punctuation(text: str, words: set[str]) -> bool:
    stripped = len(text) - sum(text.count(c) for c in " \n\t\r")
    if stripped < 20:
        return False
    return sum(text.count(c) for c in _CODE_PUNCT) / stripped > 0.05


#: The technical features of the module docstring and their weights, each counted once; the
#: cheap substring checks in each test gate its regex.
_FEATURES: tuple[tuple[float, Callable[[str, set[str]], bool]], ...] = (
    (0.5, _fenced_code),
    (0.5, _stack_trace),
    (0.3, _error_word),
    (0.3, _shell_command),
    (0.2, _file_path),
    (0.2, _url),
    (0.2, _inline_code),
    (0.15, _quantity),
    (0.15, _identifier),
    (0.15, _code_punctuation),
)


def _feature_weight(text: str, words: set[str]) -> float:
    """The sum of the weights of the features ``text`` has (added in table order)."""
    weight = 0.0
    for feature_weight, present in _FEATURES:
        if present(text, words):
            weight += feature_weight
    return weight


def technical_score(text: str) -> float:
    """Score text from 0.0 (chatter) to 1.0 (technical); see the module docstring for the rule."""
    if not text or not any(c.isalnum() for c in text):
        return 0.0
    words = [w.lower() for w in _WORD_RE.findall(text)]
    features = _feature_weight(text, set(words))
    if features == 0 and len(words) <= 8:
        chatter = sum(1 for w in words if w in _CHATTER_WORDS)
        if chatter == len(words):
            return 0.0
        if chatter / len(words) >= 0.6:
            return 0.1
    prose = 0.2 + 0.2 * min(1.0, len(words) / 30)
    return round(min(1.0, prose + features), 4)


def score_message(message: Mapping[str, Any]) -> float:
    """Score an OpenAI message; tool calls and tool results count as technical (at least 0.5)."""
    score = technical_score(message_text(message))
    if message.get("tool_calls") or message.get("role") == "tool":
        score = max(score, 0.5)
    return score


def is_chatter(message: Mapping[str, Any] | str, threshold: float = CHATTER_THRESHOLD) -> bool:
    """True for messages like "ok", "thanks!", "lol", "got it": safe to drop first."""
    if isinstance(message, str):
        return technical_score(message) < threshold
    return score_message(message) < threshold
