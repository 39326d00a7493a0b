"""What a conversation id may be, wherever one is given: one pattern for every face."""

from __future__ import annotations

import re
import uuid

__all__ = [
    "CONVERSATION_ID_PATTERN",
    "CONVERSATION_ID_RULE",
    "is_conversation_id",
    "new_conversation_id",
]

#: 1 to 128 ASCII letters, digits and ``_ . : -``: safe in a URL path, a header, a file name.
CONVERSATION_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
#: The rule in words, for error messages and help text.
CONVERSATION_ID_RULE = "1 to 128 letters, digits and '_', '.', ':' or '-'"

_ID = re.compile(CONVERSATION_ID_PATTERN)


def is_conversation_id(value: str) -> bool:
    """True when ``value`` is an id a new conversation may have."""
    return bool(_ID.fullmatch(value))


def new_conversation_id() -> str:
    return "conv_" + uuid.uuid4().hex[:16]
