"""A GGUF file's chat template, read from its header, and what the template lets a chat do.

:func:`read_chat_template` walks the metadata the way :func:`autotune.models.gguf.check_gguf`
does (no tokenizer arrays decoded, milliseconds for any model) and returns
``tokenizer.chat_template``. :func:`template_capabilities` names what it supports in
Ollama's words (``/api/show`` ``capabilities``): ``completion`` always, ``tools`` when the
template renders a ``tools`` list (llama.cpp reports the same in ``/props``
``chat_template_caps.supports_tools``; it ignores tools a template cannot render), and
``thinking`` when it has a thinking switch or thinking tags.
"""

from __future__ import annotations

import mmap
import os
import re
import struct

__all__ = ["CHAT_TEMPLATE_KEY", "read_chat_template", "template_capabilities"]

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"
#: Byte sizes of the fixed-size GGUF value types (``gguf.GGUFValueType``: 0–7, 10–12).
_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9
_TOOLS = re.compile(r"\btools\b")
_THINKING = re.compile(r"enable_thinking|<think>|reasoning_content|\bthinking\b")


def read_chat_template(path: str | os.PathLike[str]) -> str | None:
    """The GGUF's chat template, or None (no template, not a GGUF, unreadable: never raises)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                return None
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _find_string(mm, CHAT_TEMPLATE_KEY.encode())
    except (OSError, ValueError, struct.error, OverflowError, IndexError):
        return None


def _find_string(mm: mmap.mmap, wanted: bytes) -> str | None:
    (version,) = struct.unpack_from("<I", mm, 4)
    order = "<" if version < 0x10000 else ">"
    u32 = struct.Struct(order + "I").unpack_from
    u64 = struct.Struct(order + "Q").unpack_from
    (n_kv,) = u64(mm, 16)
    off = 24
    size = len(mm)

    def skip(kind: int, at: int) -> int:
        if kind == _STRING:
            return at + 8 + u64(mm, at)[0]
        if kind == _ARRAY:
            item, count = u32(mm, at)[0], u64(mm, at + 4)[0]
            at += 12
            if item in _SIZES:
                return at + count * _SIZES[item]
            for _ in range(count):
                at = skip(item, at)
                if at > size:
                    break
            return at
        return at + _SIZES[kind]

    for _ in range(n_kv):
        (key_len,) = u64(mm, off)
        key = mm[off + 8 : off + 8 + key_len]
        off += 8 + key_len
        (kind,) = u32(mm, off)
        off += 4
        if key == wanted and kind == _STRING:
            (length,) = u64(mm, off)
            return mm[off + 8 : off + 8 + length].decode("utf-8", errors="replace")
        off = skip(kind, off)
        if off > size:
            return None
    return None


def template_capabilities(template: str | None) -> list[str]:
    """Ollama's capability names for a chat template: ``completion`` [, ``tools``, ``thinking``]."""
    capabilities = ["completion"]
    if template and _TOOLS.search(template):
        capabilities.append("tools")
    if template and _THINKING.search(template):
        capabilities.append("thinking")
    return capabilities
