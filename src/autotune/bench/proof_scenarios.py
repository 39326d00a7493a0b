"""The proof's scenarios: what each sends, as whole message histories (the way apps send them)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autotune.bench.texts import chat_prompts, edit_prompts, quote_prompts

__all__ = ["DEFAULT_SCENARIOS", "SCENARIOS", "Messages", "Scenario"]

Messages = list[dict[str, Any]]

_SYSTEM = (
    "You are the support assistant of Northwind Cloud, a hosting company. Policies you must "
    "follow: answer in at most two sentences; never promise refunds, route them to billing; "
    "for outages, point to status.northwind.example; servers are in Frankfurt, Dublin and "
    "Virginia; plans are Starter (2 vCPU, 4 GB), Pro (8 vCPU, 32 GB) and Scale (32 vCPU, 128 "
    "GB); backups run nightly at 02:00 UTC and are kept 14 days on Pro and 30 days on Scale; "
    "support hours are 24/7 for Scale and 08:00-20:00 CET for the others; escalate security "
    "incidents to security@northwind.example within one hour; IPv6 is available in every "
    "region; the API rate limit is 600 requests per minute per token; DNS changes propagate "
    "within 5 minutes; custom domains need a CNAME to edge.northwind.example. "
) * 3
_SHORT = [
    "What is the capital of France?",
    "Give me a synonym for quick.",
    "How many legs does a spider have?",
    "Name a prime number above 50.",
    "What colour is the sky on a clear day?",
    "Translate 'good morning' into Spanish.",
]
_TURNS = [
    ("Which regions do you have?", "We run servers in Frankfurt, Dublin and Virginia."),
    ("How long are backups kept on Pro?", "Backups on Pro are kept for 14 days."),
    ("Is IPv6 available?", "Yes, IPv6 is available in every region."),
    ("What is the API rate limit?", "The limit is 600 requests per minute per token."),
    ("When do backups run?", "Backups run nightly at 02:00 UTC."),
    ("Can I get a refund for last month?", "Refunds are handled by our billing team."),
]
_DOC_SENTENCES = [
    "The ingestion service reads events from the queue in batches of 500.",
    "Each batch is validated against the schema registry before it is written.",
    "Invalid events go to a dead-letter topic with the validation error attached.",
    "The writer flushes to object storage every 30 seconds or 64 megabytes, whichever is first.",
    "Compaction merges small files into 512 megabyte Parquet files every hour.",
    "Retention is 90 days for raw events and two years for the compacted tables.",
    "A watermark tracks the last fully written offset per partition.",
    "On restart the service resumes from the watermark, so events are never lost.",
    "Metrics are exported on port 9102 and scraped by Prometheus every 15 seconds.",
    "Alerts fire when the consumer lag exceeds 50,000 events for five minutes.",
]
_DOC = " ".join(
    f"Section {i // 10 + 1}.{i % 10 + 1}: {s}" for i, s in enumerate(_DOC_SENTENCES * 6)
)
_DOC_QUESTIONS = [
    "Summarise how the ingestion service avoids losing events.",
    "How often does compaction run, and how large are the files?",
    "When do alerts fire?",
]


def _short() -> list[Messages]:
    return [[{"role": "user", "content": q}] for q in _SHORT]


def _multiturn() -> list[Messages]:
    out: list[Messages] = []
    history: Messages = [{"role": "system", "content": _SYSTEM}]
    for question, answer in _TURNS:
        history = [*history, {"role": "user", "content": question}]
        out.append(history)
        history = [*history, {"role": "assistant", "content": answer}]
    return out


def _longdoc() -> list[Messages]:
    base = [{"role": "system", "content": "Answer from the document only.\n\n" + _DOC}]
    return [[*base, {"role": "user", "content": q}] for q in _DOC_QUESTIONS]


def _sustained() -> list[Messages]:
    topics = [
        "rivers",
        "volcanoes",
        "bridges",
        "comets",
        "forests",
        "deserts",
        "glaciers",
        "islands",
    ]
    return [[{"role": "user", "content": f"Write two sentences about {t}."}] for t in topics]


def _edit() -> list[Messages]:
    return edit_prompts(3, offset=4)  # other files than `autotune tune` measures on


def _quote() -> list[Messages]:
    return quote_prompts(3, offset=2)


def _chat() -> list[Messages]:
    return chat_prompts(4, offset=5)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    requests: Callable[[], list[Messages]]
    max_tokens: int = 16
    #: The verdict compares decoding speed (answers long enough for it to matter).
    decode: bool = False


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("short", "short prompts, one turn each", _short),
        Scenario("multiturn", "6-turn conversation behind a long system prompt", _multiturn),
        Scenario("longdoc", "a ~1,000-token document, then follow-up questions", _longdoc),
        Scenario("sustained", "8 back-to-back calls on different topics", _sustained, 24),
        Scenario("edit", "a code file with a small change; the whole file back", _edit, 192, True),
        Scenario("quote", "a pasted document; answer by quoting it", _quote, 128, True),
        Scenario("chat", "free chat: explanations that copy nothing", _chat, 128, True),
    )
}
#: What ``autotune proof`` runs when no scenario is named.
DEFAULT_SCENARIOS = ("short", "multiturn", "longdoc", "sustained")
