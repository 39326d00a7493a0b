"""Shortens a message without breaking its meaning: whole sentences and log lines go, code stays.

Text is cut into segments whose concatenation is the original text, byte for byte:

- fenced code blocks (```` ``` ```` / ``~~~``, an unclosed fence runs to the end), indented
  code paragraphs and stack traces (Python tracebacks, Java/JS ``at …`` frames, Go panics)
  are single **protected** segments: kept whole, never cut;
- prose paragraphs become sentences (a boundary is ``.``/``!``/``?`` then whitespace then a
  character that is not lower-case, or a line break; known abbreviations such as "e.g."
  never end a sentence, so a doubtful boundary merges two sentences rather than splits one);
- lists, tables and key-value blocks become items / lines; error lines are protected.

**Prose** loses its least valuable sentences first (lowest :func:`technical_score`, with a
bonus for the first and last sentence, paragraph openers and questions); each run of dropped
sentences becomes ``[…]``. **Logs** (a ``tool`` message, or text whose lines are mostly log
lines) keep a head, every error line and a longer tail; each dropped run becomes
``[… 240 lines omitted …]``. The target is in characters, or in tokens with a ``count``
callable. When the protected parts alone exceed it the result is those parts and markers:
over the target, but never a broken code block.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from autotune.context.classify import ERROR_LINE_RE, technical_score, word_set

__all__ = [
    "LOG_MARK",
    "PROSE_MARK",
    "Segment",
    "compress",
    "compress_message",
    "is_log_like",
    "segments",
    "split_sentences",
]


#: Replaces each run of dropped sentences in prose.
PROSE_MARK = "[…]"
#: Replaces each run of dropped log lines; ``{n}`` is the number of lines.
LOG_MARK = "[… {n} lines omitted …]"

_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_PY_TRACE = re.compile(r"^\s*Traceback \(most recent call last\):?\s*$")
_FRAME = re.compile(
    r"^\s+at\s+\S.*(?:\(.*\)|:\d+(?::\d+)?\)?)\s*$|^\s*Caused by:\s|^\s+\.\.\. \d+ more\s*$"
)
_EXC_HEAD = re.compile(r"(?:Exception|Error|Throwable|Uncaught)\b")
_GO_PANIC = re.compile(r"^(?:panic: |goroutine \d+ \[)")
_LIST_ITEM = re.compile(r"^\s*(?:[-*+•]|\d{1,3}[.)])\s+\S")
_STRUCTURED = re.compile(r"^\s*(?:\||[\w .\-/]{1,40}:\s|[\w.-]+\s*=\s)")
_INDENTED = re.compile(r"^(?: {4}|\t)")
_SENT_END = re.compile(r"[.!?…]+[\"'”’)\]*_]*\s+")
_ABBREV = word_set(
    "e.g i.e etc vs v cf al approx ca fig no nos mr mrs ms dr prof st sr jr inc ltd co corp "
    "jan feb mar apr jun jul aug sep sept oct nov dec mon tue wed thu fri sat sun"
)
_LOG_LINE = re.compile(
    r"^\s*\[?\d{4}-\d{2}-\d{2}[ T]\d{1,2}:\d{2}"
    r"|^\s*\[?\d{1,2}:\d{2}:\d{2}"
    r"|^\s*\[?(?:TRACE|DEBUG|INFO|NOTICE|WARN|WARNING|ERROR|ERR|CRITICAL|FATAL|SEVERE)\b"
    r"|\b(?:TRACE|DEBUG|INFO|WARN|WARNING|ERROR|CRITICAL|FATAL)\b\s*[:\]|-]"
    r"|^\s*[\w./\\-]+:\d+(?::\d+)?:"
    r"|^\s*(?:PASSED|FAILED|FAIL|SKIPPED|ok|PASS)\b"
    r"|^\s*(?:npm|yarn|pnpm|pip|cargo|make|gcc|cc|ld)(?:\[\d+\])?(?: ERR!| WARN|:)"
    r"|^\s*(?:Collecting|Downloading|Installing|Building|Compiling|Running|Finished|Fetching"
    r"|Requirement already|Successfully|Step \d+)\b"
    r"|^\s*\d{1,3}%"
    r"|^\s*(?:\$|#|>) \S"
)


@dataclass(frozen=True)
class Segment:
    """A slice of the original text; joining every segment gives the text back exactly."""

    text: str
    #: "code" | "trace" | "sentence" | "line" | "blank"
    kind: str
    #: Never dropped: code blocks, stack traces, error lines.
    protected: bool
    #: Index of the paragraph (or block) the segment belongs to.
    para: int
    #: First segment of its paragraph.
    opener: bool = False


def is_log_like(text: str) -> bool:
    """True when at least half of six or more non-blank lines look like log or tool output."""
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 6:
        return False
    hits = sum(1 for line in lines if _LOG_LINE.search(line))
    return hits * 2 >= len(lines)


def _trace_end(lines: list[str], i: int) -> int:
    """Index just past the stack trace starting at line ``i``, or ``i`` when none starts."""
    line = lines[i]
    if _PY_TRACE.match(line):
        return _python_trace_end(lines, i + 1)
    if _FRAME.match(line) or (_EXC_HEAD.search(line) and _frame_follows(lines, i) and line.strip()):
        return _run_end(lines, i + 1, lambda text: _FRAME.match(text) is not None)
    if _GO_PANIC.match(line):
        return _run_end(lines, i + 1, lambda text: bool(text.strip()))
    return i


def _frame_follows(lines: list[str], i: int) -> bool:
    return i + 1 < len(lines) and _FRAME.match(lines[i + 1]) is not None


def _run_end(lines: list[str], j: int, belongs: Callable[[str], bool]) -> int:
    """Index of the first line from ``j`` on that does not belong to the run."""
    while j < len(lines) and belongs(lines[j]):
        j += 1
    return j


def _python_trace_end(lines: list[str], j: int) -> int:
    """Past a traceback's indented frames and the exception line that follows them."""
    j = _run_end(lines, j, lambda text: text[:1] in (" ", "\t") and bool(text.strip()))
    if j < len(lines) and lines[j].strip():
        j += 1  # the exception line
    return j


def _sentence_spans(text: str) -> list[str]:
    """Split prose into sentences, each with its trailing whitespace; joins back to ``text``."""
    out: list[str] = []
    start = 0
    for m in _SENT_END.finditer(text):
        end = m.end()
        if end >= len(text):
            break
        nxt = text[end]
        newline = "\n" in m.group()
        if not newline and nxt.islower():
            continue
        word = text[max(start, m.start() - 40) : m.start() + 1].split()[-1:] or [""]
        stem = word[0].rstrip(".!?…").lstrip("(\"'“‘[").lower()
        if m.group()[0] == "." and not newline and (stem in _ABBREV or len(stem) == 1):
            continue
        out.append(text[start:end])
        start = end
    if start < len(text):
        out.append(text[start:])
    return out


def _list_items(lines: list[str]) -> list[str]:
    items: list[str] = []
    for line in lines:
        if items and not _LIST_ITEM.match(line):
            items[-1] += line  # a wrapped item continues
        else:
            items.append(line)
    return items


def _paragraph(lines: list[str], para: int, as_lines: bool) -> list[Segment]:
    text = "".join(lines)
    if all(_INDENTED.match(line) for line in lines):
        return [Segment(text, "code", True, para, True)]
    if as_lines:
        parts, kind = lines, "line"
    elif len(lines) > 1 and sum(1 for x in lines if _LIST_ITEM.match(x)) * 2 >= len(lines):
        parts, kind = _list_items(lines), "line"
    elif len(lines) > 1 and sum(1 for x in lines if _STRUCTURED.match(x)) * 2 >= len(lines):
        parts, kind = lines, "line"
    else:
        parts, kind = _sentence_spans(text), "sentence"
    return [
        Segment(p, kind, bool(ERROR_LINE_RE.search(p)), para, k == 0) for k, p in enumerate(parts)
    ]


def segments(text: str, *, lines: bool = False) -> list[Segment]:
    """Cut ``text`` into segments (see the module docstring); ``lines`` splits prose by line."""
    raw = text.splitlines(keepends=True)
    out: list[Segment] = []
    buf: list[str] = []
    para = 0

    def flush() -> None:
        nonlocal para
        if buf:
            out.extend(_paragraph(buf, para, lines))
            para += 1
            buf.clear()

    i, n = 0, len(raw)
    while i < n:
        line = raw[i]
        fence = _FENCE_OPEN.match(line)
        if fence:
            flush()
            mark = fence.group(1)
            close = re.compile(r"^ {0,3}" + re.escape(mark[0]) + "{" + str(len(mark)) + r",}\s*$")
            j = i + 1
            while j < n and not close.match(raw[j]):
                j += 1
            end = min(j + 1, n)
            out.append(Segment("".join(raw[i:end]), "code", True, para, True))
            para += 1
            i = end
            continue
        end = _trace_end(raw, i)
        if end > i:
            flush()
            out.append(Segment("".join(raw[i:end]), "trace", True, para, True))
            para += 1
            i = end
            continue
        if not line.strip():
            flush()
            out.append(Segment(line, "blank", False, para))
            i += 1
            continue
        buf.append(line)
        i += 1
    flush()
    return out


def split_sentences(text: str) -> list[str]:
    """The prose sentences and list/log lines of ``text`` (stripped), without code or traces."""
    return [s.text.strip() for s in segments(text) if s.kind in ("sentence", "line")]


def _trailing_ws(text: str) -> str:
    return text[len(text.rstrip()) :]


def _next_content(segs: list[Segment]) -> list[int | None]:
    """For each segment, the index of the first non-blank segment after it (None at the end)."""
    out: list[int | None] = [None] * len(segs)
    nxt: int | None = None
    for i in range(len(segs) - 1, -1, -1):
        out[i] = nxt
        if segs[i].kind != "blank":
            nxt = i
    return out


def _render_prose(segs: list[Segment], dropped: set[int], nxt: list[int | None]) -> str:
    gone = set(dropped)
    # A blank line between two dropped segments (or a dropped one and an edge) goes with them.
    prev_dropped = True
    for i, seg in enumerate(segs):
        if seg.kind != "blank":
            prev_dropped = i in dropped
            continue
        after = nxt[i]
        if prev_dropped and (after is None or after in dropped):
            gone.add(i)
    out: list[str] = []
    run_last: int | None = None
    for i, seg in enumerate(segs):
        if i in gone:
            run_last = i
            continue
        if run_last is not None:
            out.append(PROSE_MARK + (_trailing_ws(segs[run_last].text) or " "))
            run_last = None
        out.append(seg.text)
    if run_last is not None:
        out.append(PROSE_MARK + _trailing_ws(segs[run_last].text))
    return "".join(out)


def _shrink_prose(segs: list[Segment], budget: int) -> str:
    content = [i for i, s in enumerate(segs) if s.kind != "blank"]
    if not content:
        return "".join(s.text for s in segs)
    first, last = content[0], content[-1]

    def value(i: int) -> float:
        s = segs[i]
        v = technical_score(s.text)
        v += 0.6 if i == first else 0.0
        v += 0.3 if i == last else 0.0
        v += 0.3 if s.opener else 0.0
        v += 0.15 if s.text.rstrip().endswith("?") else 0.0
        return v

    order = sorted((i for i in content if not segs[i].protected), key=lambda i: (value(i), -i))
    nxt = _next_content(segs)
    return _smallest_fit(
        lambda k: _render_prose(segs, set(order[:k]), nxt), len(order), budget, True
    )


def _smallest_fit(render: Callable[[int], str], top: int, budget: int, more_is_less: bool) -> str:
    """Binary search the step ``k`` in ``0..top`` whose rendering fits ``budget``.

    ``more_is_less``: rendering shrinks as ``k`` grows (prose drops) and the smallest fitting
    ``k`` wins; otherwise it grows (log lines kept) and the largest fitting ``k`` wins.
    """
    fits = {}

    def ok(k: int) -> bool:
        if k not in fits:
            fits[k] = len(render(k)) <= budget
        return fits[k]

    if more_is_less:
        lo, hi = 0, top
        if not ok(hi):
            return render(top)
        while lo < hi:
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid + 1
        return render(lo)
    lo, hi = 0, top
    if ok(hi):
        return render(hi)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return render(lo)


def _render_log(segs: list[Segment], keep: set[int]) -> str:
    out: list[str] = []
    run: list[int] = []

    def close_run() -> None:
        if run:
            lines = sum(max(1, segs[j].text.count("\n")) for j in run)
            newline = "\n" if segs[run[-1]].text.endswith("\n") else ""
            out.append(LOG_MARK.format(n=lines) + newline)
            run.clear()

    for i, seg in enumerate(segs):
        if i in keep:
            close_run()
            out.append(seg.text)
        else:
            run.append(i)
    close_run()
    return "".join(out)


def _shrink_log(segs: list[Segment], budget: int) -> str:
    n = len(segs)
    protected = {i for i, s in enumerate(segs) if s.protected}

    def render(k: int) -> str:
        head = k // 3  # a third from the top, two thirds from the bottom, where errors land
        tail = k - head
        keep = protected | set(range(head)) | set(range(n - tail, n))
        return _render_log(segs, keep)

    return _smallest_fit(render, n, budget, False)


def compress(
    text: str,
    target: int,
    count: Callable[[str], int] | None = None,
    *,
    log: bool | None = None,
) -> str:
    """Shorten ``text`` to at most ``target`` characters (or tokens, by ``count``).

    ``log`` forces log mode (head + error lines + tail) or prose mode; by default it is
    chosen by :func:`is_log_like`. Text already within the target comes back unchanged.
    """
    measure = count or len
    if measure(text) <= target:
        return text
    as_log = is_log_like(text) if log is None else log
    segs = segments(text, lines=as_log)

    def shrink(chars: int) -> str:
        return _shrink_log(segs, chars) if as_log else _shrink_prose(segs, chars)

    if count is None:
        return shrink(max(0, target))
    chars = len(text) * target / max(1, measure(text))
    for _ in range(8):
        out = shrink(max(0, int(chars)))
        got = measure(out)
        if got <= target:
            return out
        if chars < 1:
            break
        chars = chars * target / got * 0.95
    return shrink(0)


def compress_message(
    message: Mapping[str, Any], target: int, count: Callable[[str], int] | None = None
) -> dict[str, Any]:
    """A copy of ``message`` with its text compressed to ``target`` (characters or tokens).

    A ``tool`` message is compressed as a log. Text parts of a list content share the target
    in proportion to their length; other parts, tool calls and every other key are kept.
    """
    out = dict(message)
    log = True if message.get("role") == "tool" else None
    content = message.get("content")
    if isinstance(content, str):
        out["content"] = compress(content, target, count, log=log)
    elif isinstance(content, list):
        texts = [p for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
        total = sum(len(p["text"]) for p in texts) or 1
        parts: list[Any] = []
        for p in content:
            if isinstance(p, Mapping) and isinstance(p.get("text"), str):
                share = max(0, target * len(p["text"]) // total)
                parts.append({**p, "text": compress(p["text"], share, count, log=log)})
            else:
                parts.append(p)
        out["content"] = parts
    return out
