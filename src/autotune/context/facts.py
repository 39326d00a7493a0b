"""Extracts decisions, accomplishments, errors, key facts and topics from messages, without a model.

Everything is pattern matching on whole sentences and lines, so the same messages always give
the same facts. Chatter (see :mod:`autotune.context.classify`) and system messages are
skipped; tool output only contributes its errors. Each category keeps its most recent items
(a repeated item moves to the end), and :func:`render_facts` / :func:`one_line_summary`
bound the text they produce.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from autotune.context.classify import FILE_EXTENSIONS, is_chatter, message_text, word_set
from autotune.context.compress import split_sentences

__all__ = [
    "FACTS_HEADER",
    "FactCollector",
    "Facts",
    "extract_facts",
    "one_line_summary",
    "render_facts",
]


#: First words of a rendered facts block.
FACTS_HEADER = "Facts from earlier in this conversation"
#: Items kept per category while extracting (the most recent ones).
_KEEP = 40
_ITEM_CHARS = 140

_DECISION = re.compile(
    r"(?i)\b(?:we(?:'ll| will| should| shall| are going to|'re going to)|let'?s|let us"
    r"|i(?:'ll| will) (?:use|go|keep|switch|stick)|decided|decision|going with|go with"
    r"|settled on|agreed|we chose|i chose|opted for|switch(?:ed)? to|stick with|instead of)\b"
)
_ACCOMPLISHED = re.compile(
    r"(?i)\b(?:i|we|i've|we've|i have|we have|that|this|it)\s+(?:now\s+|just\s+|finally\s+)?"
    r"(?:fixed|added|implemented|resolved|updated|created|wrote|removed|refactored|merged"
    r"|deployed|installed|configured|finished|completed|migrated|renamed|moved|set up"
    r"|upgraded|built|solved|shipped)\b"
    r"|\b(?:works now|now works|working now|is working|it works|all tests pass(?:ed)?"
    r"|tests? pass(?:es|ed)?(?: now)?|fixed it|that fixed|that did it|done|solved|resolved)\b"
)
_EXCEPTION = re.compile(
    r"\b([A-Z][A-Za-z0-9_.]*(?:Error|Exception|Fault|Panic|Exit|Interrupt))\b(?::[ \t]*([^\n]*))?"
)
_ERROR_LINE = re.compile(
    r"(?im)^\s*(?:error|fatal|panic|E\d{3,5}|FAILED|ERR!?|\[error\])(?:\b|(?=[:!\[\s]))"
)
_ERROR_PHRASE = re.compile(
    r"(?i)\b(?:segmentation fault|core dumped|exit (?:code|status) [1-9]\d*|permission denied"
    r"|command not found|no such file or directory|connection refused|out of memory"
    r"|timed out|undefined reference|cannot find module|module not found)\b"
)
_URL = re.compile(r"\bhttps?://[^\s<>()\"'`]+")
_PATH = re.compile(
    r"(?<![\w/.@:-])((?:~|\.{1,2})?/?(?:[\w.-]+/)+[\w.-]+|[A-Za-z]:\\[\w\\.-]+"
    rf"|[\w-]+\.(?:{FILE_EXTENSIONS}))\b"
)
_VERSION = re.compile(r"\b([A-Za-z][\w+-]{1,24})\s+v?(\d+(?:\.\d+){1,3}(?:[-+][\w.]+)?)\b")
_QUANTITY = re.compile(
    r"(?:\b[\w-]+\s+){0,2}\b\d+(?:[.,]\d+)?\s?(?:ms|s|sec|secs|seconds|min|minutes|hours|days"
    r"|KB|KiB|MB|MiB|GB|GiB|TB|TiB|bytes|%|tokens|tok/s|t/s|req/s|rps|qps|px|Hz|kHz|MHz|GHz"
    r"|°C|°F|cores|threads|layers|GPUs?)(?![\w/])"
)
_NAME = re.compile(r"\b(?:named|called|my name is|name is)\s+([A-Z][\w-]+(?:\s+[A-Z][\w-]+)?)")
_INLINE = re.compile(r"`([^`\n]{2,40})`")
_DEFINITION = re.compile(
    r"^(?:The |A |An )?([A-Z`][\w`.\-/]*(?:\s+[\w`.\-/]+){0,3})\s+"
    r"(?:is|are|means|refers to|stands for)\s+\S.*$"
)
_PRONOUNS = word_set(
    "this that it there here what which who he she they we i you these those everything "
    "something nothing one"
)
_TERM = re.compile(r"[A-Za-z][A-Za-z0-9_+#-]{2,}")
_STOPWORDS = word_set(
    """
    about above after again against all also although always among and another any anyone
    anything are around because been before being below between both but can cannot could
    did does doing done down during each either else enough even ever every few first for
    from further get gets getting give given goes going gone got had has have having here
    hers herself him himself his how however into its itself just know last less let like
    likely made make makes many may maybe might mine more most much must myself need needs
    never next nor not now off often once one only onto other others our ours ourselves out
    over own per perhaps please put quite rather really right same see seem seems several
    shall she should show since some something still such sure take than that the their
    theirs them themselves then there these they thing things think this those though through
    thus too try under until upon use used uses using very want was way well were what when
    where whether which while who whom whose why will with within without would yes yet you
    your yours yourself yourselves okay thanks thank hello sorry actually basically probably
    want wants wanted looks look looking work works worked working tried trying able
    let's i'm i've i'll it's that's don't doesn't didn't can't won't isn't aren't wasn't
    you're we're they're there's here's what's
    """
)


@dataclass(frozen=True)
class Facts:
    """What a run of messages established, each category oldest first."""

    decisions: tuple[str, ...] = ()
    accomplishments: tuple[str, ...] = ()
    errors: tuple[str, ...] = ()
    key_facts: tuple[str, ...] = ()
    topics: tuple[str, ...] = ()
    #: How many messages the facts were taken from.
    messages: int = 0

    def is_empty(self) -> bool:
        return not (
            self.decisions or self.accomplishments or self.errors or self.key_facts or self.topics
        )


def _clip(text: str, limit: int = _ITEM_CHARS) -> str:
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"


class _Bucket:
    """Ordered, de-duplicated items; a repeated item moves to the end (most recent)."""

    def __init__(self) -> None:
        self.items: dict[str, str] = {}

    def add(self, item: str) -> None:
        item = _clip(item)
        if len(item) < 2:
            return
        key = item.lower().rstrip(".!…")
        self.items.pop(key, None)
        self.items[key] = item
        if len(self.items) > _KEEP:
            del self.items[next(iter(self.items))]

    def tuple(self) -> tuple[str, ...]:
        return tuple(self.items.values())


def _errors(text: str, bucket: _Bucket) -> None:
    for line in text.splitlines():
        found = False
        for m in _EXCEPTION.finditer(line):
            name, detail = m.group(1), (m.group(2) or "").strip()
            bucket.add(f"{name}: {_clip(detail, 90)}" if detail else name)
            found = True
        if found:
            continue
        if _ERROR_LINE.match(line) or _ERROR_PHRASE.search(line):
            bucket.add(_clip(line.strip(), 110))


def _key_facts(text: str, sentences: list[str], bucket: _Bucket) -> None:
    without_urls = _URL.sub(" ", text)
    for found in (
        _urls(text),
        _paths(without_urls),
        _versions(without_urls),
        (m.group(0).strip() for m in _QUANTITY.finditer(without_urls)),
        (f"name: {name}" for name in _NAME.findall(text)),
        (f"`{code.strip()}`" for code in _INLINE.findall(text)),
        _definitions(sentences),
    ):
        for item in found:
            bucket.add(item)


def _urls(text: str) -> Iterator[str]:
    for url in _URL.findall(text):
        yield url.rstrip(".,;:!?'\"")


def _paths(text: str) -> Iterator[str]:
    """File paths that look deliberate: rooted, with an extension, or two folders deep."""
    for path in _PATH.findall(text):
        tail = path.rsplit("/", 1)[-1].rsplit("\\", 1)[-1]
        rooted = path.startswith(("/", "~/", "./", "../")) or ":\\" in path
        if rooted or "." in tail.strip(".") or path.count("/") >= 2:
            yield path.rstrip(".")


def _versions(text: str) -> Iterator[str]:
    for name, version in _VERSION.findall(text):
        if name.lower() not in _STOPWORDS and not name.isdigit():
            yield f"{name} {version}"


def _definitions(sentences: list[str]) -> Iterator[str]:
    """Short statements of what something is ("X is …"), not questions, not "this is …"."""
    for s in sentences:
        m = _DEFINITION.match(s)
        if m and len(s) <= 120 and not s.endswith("?") and not _pronoun(m.group(1)):
            yield s


def _pronoun(subject: str) -> bool:
    return subject.split()[0].lower().strip("`") in _PRONOUNS


def _terms(text: str) -> Counter[str]:
    counts: Counter[str] = Counter()
    for word in _TERM.findall(text):
        low = word.lower().rstrip("-")
        acronym = word.isupper() and 2 <= len(word) <= 6
        if low in _STOPWORDS or (len(low) < 4 and not acronym):
            continue
        counts[low] += 1
    return counts


class FactCollector:
    """Collects facts message by message, so growing prefixes of a history cost one pass."""

    def __init__(self) -> None:
        self._decisions, self._done = _Bucket(), _Bucket()
        self._errors, self._keys = _Bucket(), _Bucket()
        self._df: Counter[str] = Counter()
        self._tf: Counter[str] = Counter()
        self._gist = ""
        self._n = 0

    def add(self, message: Mapping[str, Any]) -> None:
        """Take the facts of one more message (the next one in the conversation)."""
        self._n += 1
        role = message.get("role")
        if role == "system":
            return
        text = message_text(message, with_tool_calls=False)
        if role == "tool":
            _errors(text, self._errors)
            return
        if not text.strip() or (is_chatter(text) and not _ACCOMPLISHED.search(text)):
            return
        sentences = [" ".join(s.split()) for s in split_sentences(text)]
        self._statements(sentences, role == "user")
        _errors(text, self._errors)
        _key_facts(text, sentences, self._keys)
        counts = _terms(_INLINE.sub(" ", _PATH.sub(" ", _URL.sub(" ", " ".join(sentences)))))
        self._df.update(counts.keys())
        self._tf.update(counts)
        if role == "assistant" and sentences:
            self._gist = sentences[0]

    def _statements(self, sentences: list[str], from_user: bool) -> None:
        """Decisions and accomplishments; a question decides nothing."""
        for s in sentences:
            if s.endswith("?"):
                continue
            if _DECISION.search(s) and len(s.split()) >= 3:
                self._decisions.add(s)
            elif _ACCOMPLISHED.search(s):
                self._done.add(self._accomplishment(s, from_user))

    def _accomplishment(self, sentence: str, from_user: bool) -> str:
        """A user's bare "it works" names what works by the assistant's last answer."""
        if len(sentence.split()) < 4 and self._gist and from_user:
            return f"{sentence.rstrip('.!')} (after: {_clip(self._gist, 70)})"
        return sentence

    def facts(self) -> Facts:
        """The facts of every message added so far."""
        df, tf = self._df, self._tf
        ranked = sorted(df, key=lambda t: (-df[t], -tf[t], t))
        topics = tuple(t for t in ranked if df[t] >= 2 or tf[t] >= 3)[:12]
        return Facts(
            self._decisions.tuple(),
            self._done.tuple(),
            self._errors.tuple(),
            self._keys.tuple(),
            topics,
            self._n,
        )


def extract_facts(messages: Iterable[Mapping[str, Any]]) -> Facts:
    """Facts of ``messages`` (OpenAI-style dicts), deterministic; see the module docstring."""
    collector = FactCollector()
    for m in messages:
        collector.add(m)
    return collector.facts()


_SECTIONS = (
    ("Decisions", "decisions", 6, "; "),
    ("Done", "accomplishments", 6, "; "),
    ("Errors", "errors", 5, "; "),
    ("Key facts", "key_facts", 10, "; "),
    ("Topics", "topics", 8, ", "),
)


def render_facts(facts: Facts, max_chars: int = 1200) -> str:
    """The facts as a block of at most ``max_chars`` characters (newest items win).

    ``Facts from earlier in this conversation (N messages):`` then one ``- Label: …`` line
    per non-empty category. Items are dropped oldest first from the longest line until the
    block fits; a block that still does not fit is clipped at a word.
    """
    header = f"{FACTS_HEADER} ({facts.messages} messages):"
    caps = {attr: cap for _, attr, cap, _ in _SECTIONS}

    def build() -> tuple[str, dict[str, int]]:
        lines, sizes = [header], {}
        for label, attr, _, sep in _SECTIONS:
            items: tuple[str, ...] = getattr(facts, attr)
            shown = items[max(0, len(items) - caps[attr]) :] if caps[attr] > 0 else ()
            if attr == "topics":
                shown = items[: caps[attr]]  # topics are ranked, not chronological
            if shown:
                line = f"- {label}: {sep.join(i.rstrip('.') for i in shown)}"
                lines.append(line)
                sizes[attr] = len(line)
        return "\n".join(lines), sizes

    text, sizes = build()
    if not sizes:
        text = f"{FACTS_HEADER}: nothing notable in the {facts.messages} messages left out."
    while len(text) > max_chars and sizes:
        longest = max(sizes, key=lambda a: (sizes[a], a))
        caps[longest] = min(caps[longest], len(getattr(facts, longest))) - 1
        text, sizes = build()
    return text if len(text) <= max_chars else _clip(text, max_chars)


def one_line_summary(facts: Facts, max_chars: int = 200) -> str:
    """One line of at most ``max_chars``: message count, topics, latest decision and error."""
    base = f"Earlier in this conversation ({facts.messages} messages)"
    parts = []
    if facts.topics:
        parts.append("topics: " + ", ".join(facts.topics[:5]))
    if facts.decisions:
        parts.append("decided: " + _clip(facts.decisions[-1], 80).rstrip("."))
    if facts.errors:
        parts.append("error: " + _clip(facts.errors[-1], 60).rstrip("."))
    if facts.accomplishments:
        parts.append("done: " + _clip(facts.accomplishments[-1], 60).rstrip("."))
    line = base
    for part in parts:
        candidate = f"{line}; {part}" if line != base else f"{line}: {part}"
        if len(candidate) + 1 <= max_chars:
            line = candidate
    line += "."
    return line if len(line) <= max_chars else _clip(line, max_chars)
