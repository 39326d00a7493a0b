"""Prompts for two kinds of work: answers that copy their input (an edit, a quote) and free chat.

Speculative decoding pays where the answer repeats text already in the prompt: n-gram drafts
come from the prompt and earlier output. ``autotune tune`` measures speculation on both kinds
and ``autotune proof`` shows them (its ``edit``, ``quote`` and ``chat`` scenarios). Every
prompt is distinct, so an engine's n-gram cache cannot learn one request's answer from an
earlier identical request; tune and proof use different instances of each kind.
"""

from __future__ import annotations

from typing import Any

__all__ = ["chat_prompts", "code_file", "edit_prompts", "quote_prompts"]

Messages = list[dict[str, Any]]

_ENTITIES = [
    ("invoice", "amount", "customer"),
    ("shipment", "weight", "carrier"),
    ("ticket", "priority", "assignee"),
    ("booking", "nights", "guest"),
    ("sensor", "reading", "location"),
    ("payment", "currency", "payer"),
    ("article", "words", "author"),
    ("order", "quantity", "buyer"),
]

_TOPICS = [
    "why the sky changes colour at sunset",
    "how a bicycle stays upright",
    "what makes bread rise",
    "how bees find flowers",
    "why the sea is salty",
    "how a compass works",
    "what causes thunder",
    "how plants drink water",
    "why cats purr",
    "how a rainbow forms",
]

_FACTS = [
    "Deliveries leave the warehouse at 06:00 and 14:00 on working days.",
    "Parcels above 30 kilograms need a two-person crew and are booked a day ahead.",
    "Refrigerated goods travel in sealed boxes checked every four hours.",
    "A driver may work at most nine hours a day and must rest 45 minutes after 4.5 hours.",
    "Damaged parcels are photographed, logged and returned to the sender within a week.",
    "Customers are told their delivery window by text message the evening before.",
    "Vans are charged overnight and inspected every Monday morning.",
    "Lost parcels are searched for during ten days before a claim is paid.",
]


def code_file(entity: str, number: str, party: str, functions: int = 5) -> str:
    """A small Python module about one kind of record, ~35 lines for five functions."""
    blocks = [f'"""Helpers for {entity} records."""\n']
    for i in range(functions):
        blocks.append(
            f"def {entity}_{number}_{i}(record):\n"
            f"    value = record.get('{number}_{i}')\n"
            f"    if value is None:\n"
            f"        raise ValueError('{entity} without {number}_{i}')\n"
            f"    return {{'{party}': record['{party}'], 'value': value * {i + 2}}}\n"
        )
    return "\n".join(blocks)


def edit_prompts(count: int, offset: int = 0) -> list[Messages]:
    """Code files with a small change asked for; the answer is the whole file, edited."""
    out = []
    for k in range(count):
        entity, number, party = _ENTITIES[(offset + k) % len(_ENTITIES)]
        source = code_file(entity, number, party)
        ask = (
            f"Here is a Python file:\n```python\n{source}```\n"
            f"Change the error message in {entity}_{number}_1 to say 'missing {number}'. "
            "Reply with the complete file, every function included, and nothing else."
        )
        out.append([{"role": "user", "content": ask}])
    return out


def quote_prompts(count: int, offset: int = 0) -> list[Messages]:
    """A pasted document and a request to quote part of it word for word."""
    out = []
    for k in range(count):
        start = (offset + k) % len(_FACTS)
        facts = _FACTS[start:] + _FACTS[:start]
        document = "\n".join(f"Rule {i + 1}. {fact}" for i, fact in enumerate(facts))
        ask = (
            f"Here are our delivery rules:\n\n{document}\n\n"
            "Quote rules 1 to 4 exactly as written, word for word, one per line."
        )
        out.append([{"role": "user", "content": ask}])
    return out


def chat_prompts(count: int, offset: int = 0) -> list[Messages]:
    """Free chat: explanations whose answers copy nothing from the prompt."""
    return [
        [
            {
                "role": "user",
                "content": f"Explain {_TOPICS[(offset + k) % len(_TOPICS)]}, "
                "in a friendly paragraph.",
            }
        ]
        for k in range(count)
    ]
