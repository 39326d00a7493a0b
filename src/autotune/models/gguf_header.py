"""Reads a GGUF file's header (metadata and tensor table) from its bytes, only counting long arrays.

Why: ``gguf.GGUFReader`` decodes every array eagerly, the tokenizer's included: 8.8 s for
Gemma-3-270M (262k tokens) and 1.9 s for the bundled SmolLM2 (49k tokens) on this machine,
so ``autotune ls`` on a fresh home took 12 s; walking over those arrays instead takes
milliseconds.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_ALIGNMENT", "GGUF_MAGIC", "Header", "HeaderError", "Tensor", "read_header"]

GGUF_MAGIC = b"GGUF"
#: Where tensor data starts when ``general.alignment`` does not say.
DEFAULT_ALIGNMENT = 32
#: ggml tensors have at most 4 dimensions; more than this is a corrupt table.
_MAX_DIMS = 8
_HEAD = 24  # magic, version, tensor count, key/value count

#: ``struct`` codes of the fixed-size value types (``gguf.GGUFValueType``: 0–7, 10–12).
_SCALARS = {
    **{0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?"},
    **{10: "Q", 11: "q", 12: "d"},
}
_STRING, _ARRAY = 8, 9

# The layout (little- or big-endian; a big-endian file shows a byte-swapped version): b"GGUF",
# u32 version, u64 tensor count, u64 key/value count; each key/value: a string key, a u32 value
# type, the value; each tensor: a string name, u32 dimension count, that many u64 dimensions,
# u32 ggml type, u64 data offset (from the aligned start of the tensor data). A string is a u64
# byte length and the bytes; an array a u32 item type, a u64 count and the items.

_CORRUPT = "truncated or corrupt: the header does not parse within the file"
_METADATA_PAST_END = "truncated: the metadata runs past the end of the file"
_TENSORS_PAST_END = "truncated: the tensor table runs past the end of the file"


class HeaderError(Exception):
    """The bytes are not a complete GGUF header; the message is the short reason."""


@dataclass(frozen=True)
class Tensor:
    """One entry of the tensor table (dimensions innermost first, as the file has them)."""

    name: str
    dims: tuple[int, ...]
    type: int  # a ggml type: ``gguf.GGMLQuantizationType``
    offset: int  # of its data, counted from :attr:`Header.data_start`

    @property
    def n_elements(self) -> int:
        return math.prod(self.dims)


@dataclass(frozen=True)
class Header:
    """A GGUF header as read by :func:`read_header`."""

    version: int
    #: Scalars as int/float/bool, strings as str, arrays of scalars or strings up to the
    #: limit as lists (``keep_strings`` keys: every item, as bytes). Longer arrays, and
    #: arrays of arrays (which llama.cpp does not load), are absent: see ``array_lengths``.
    fields: dict[str, Any]
    #: The length of every top-level array, decoded or not.
    array_lengths: dict[str, int]
    tensors: list[Tensor]
    #: Offset of the tensor data in the file (aligned by ``general.alignment``, default 32).
    data_start: int


class _PastEnd(Exception):
    """Something in the header claims bytes beyond the end of the file."""


def read_header(
    source: str | os.PathLike[str] | mmap.mmap | bytes,
    *,
    max_array: int = 4096,
    keep_strings: Collection[str] = (),
) -> Header:
    """The header of the GGUF file at a path, or in a mapped or loaded file's bytes.

    Arrays longer than ``max_array`` are only counted, except string arrays under the keys
    in ``keep_strings``, which are decoded in full as bytes (a tokenizer's tokens). Raises
    :class:`HeaderError` for anything that is not a complete GGUF header, ``OSError`` when
    the file cannot be read.
    """
    if isinstance(source, (mmap.mmap, bytes)):
        return _read_bytes(source, max_array, frozenset(keep_strings))
    with open(source, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            raise HeaderError("empty file")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return _read_bytes(mm, max_array, frozenset(keep_strings))


def _read_bytes(buf: mmap.mmap | bytes, max_array: int, keep: frozenset[str]) -> Header:
    if len(buf) == 0:
        raise HeaderError("empty file")
    if buf[:4] != GGUF_MAGIC:
        raise HeaderError(f"not a GGUF file (starts with {bytes(buf[:4])!r})")
    if len(buf) < _HEAD:
        raise HeaderError(f"truncated: {len(buf)} bytes, shorter than a GGUF header")
    try:
        return _Walker(buf, max_array, keep).header()
    except (
        _PastEnd,
        struct.error,
        ValueError,
        LookupError,
        OverflowError,
        MemoryError,
        RecursionError,
    ):
        raise HeaderError(_CORRUPT) from None


class _Walker:
    """One pass over the header bytes; offsets are checked against the end before reading."""

    def __init__(self, buf: mmap.mmap | bytes, max_array: int, keep: frozenset[str]) -> None:
        self.buf = buf
        self.size = len(buf)
        self.max_array = max_array
        self.keep = keep
        (raw,) = struct.unpack_from("<I", buf, 4)
        self.order = "<" if raw < 0x10000 else ">"  # a big-endian file shows a swapped version
        self._u32 = struct.Struct(self.order + "I").unpack_from
        self._u64 = struct.Struct(self.order + "Q").unpack_from

    # ------------------------------------------------------------------ primitives

    def _end(self, off: int, n: int) -> int:
        """``off + n``, when those ``n`` bytes lie within the file."""
        end = off + n
        if end > self.size:
            raise _PastEnd
        return end

    def u32(self, off: int) -> tuple[int, int]:
        end = self._end(off, 4)
        return self._u32(self.buf, off)[0], end

    def u64(self, off: int) -> tuple[int, int]:
        end = self._end(off, 8)
        return self._u64(self.buf, off)[0], end

    def raw_string(self, off: int) -> tuple[bytes, int]:
        n, off = self.u64(off)
        end = self._end(off, n)
        return bytes(self.buf[off:end]), end

    def string(self, off: int) -> tuple[str, int]:
        raw, end = self.raw_string(off)
        return raw.decode("utf-8", "replace"), end

    # ------------------------------------------------------------------ the header

    def header(self) -> Header:
        (version,) = struct.unpack_from(self.order + "I", self.buf, 4)
        if version < 2:
            raise HeaderError(f"GGUF version {version} is no longer supported by llama.cpp")
        n_tensors, off = self.u64(8)
        n_kv, off = self.u64(off)
        fields: dict[str, Any] = {}
        lengths: dict[str, int] = {}
        try:
            off = self._metadata(off, n_kv, fields, lengths)
        except _PastEnd:
            raise HeaderError(_METADATA_PAST_END) from None
        try:
            tensors, off = self._tensor_table(off, n_tensors)
        except _PastEnd:
            raise HeaderError(_TENSORS_PAST_END) from None
        alignment = fields.get("general.alignment")
        if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0:
            alignment = DEFAULT_ALIGNMENT
        return Header(version, fields, lengths, tensors, off + (-off % alignment))

    def _metadata(
        self, off: int, n_kv: int, fields: dict[str, Any], lengths: dict[str, int]
    ) -> int:
        keys: list[str] = []
        for _ in range(n_kv):
            key, off = self.string(off)
            keys.append(key)
            kind, off = self.u32(off)
            if kind == _ARRAY:
                value, lengths[key], off = self._array(off, key in self.keep)
            else:
                value, off = self._value(kind, off)
            if value is not None:
                fields[key] = value
        _refuse_duplicates("metadata key", keys)  # after the walk: a cut file reads as cut
        return off

    def _value(self, kind: int, off: int) -> tuple[Any, int]:
        if kind == _STRING:
            return self.string(off)
        code = self.order + _SCALARS[kind]
        end = self._end(off, struct.calcsize(code))
        return struct.unpack_from(code, self.buf, off)[0], end

    def _array(self, off: int, keep: bool) -> tuple[list[Any] | None, int, int]:
        """The items (or None when only counted), the count, and the offset after."""
        item, off = self.u32(off)
        count, off = self.u64(off)
        if item == _STRING and keep:
            return self._strings(off, count, raw=True)
        if count > self.max_array or item == _ARRAY:
            return None, count, self._skip_items(item, count, off)
        if item == _STRING:
            return self._strings(off, count, raw=False)
        code = f"{self.order}{count}{_SCALARS[item]}"
        end = self._end(off, struct.calcsize(code))
        return list(struct.unpack_from(code, self.buf, off)), count, end

    def _strings(self, off: int, count: int, *, raw: bool) -> tuple[list[Any], int, int]:
        buf, size, u64 = self.buf, self.size, self._u64  # locals: this loop runs per token
        items: list[Any] = []
        for _ in range(count):  # each item needs 8 bytes at least: a bad count hits the end
            if off + 8 > size:
                raise _PastEnd
            start = off + 8
            off = start + u64(buf, off)[0]
            if off > size:
                raise _PastEnd
            items.append(buf[start:off])
        if not raw:
            items = [item.decode("utf-8", "replace") for item in items]
        return items, count, off

    def _skip_items(self, item: int, count: int, off: int) -> int:
        if item == _STRING:
            buf, size, u64 = self.buf, self.size, self._u64  # locals: this loop runs per token
            for _ in range(count):
                if off + 8 > size:
                    raise _PastEnd
                off += 8 + u64(buf, off)[0]
            return self._end(off, 0)
        if item == _ARRAY:
            for _ in range(count):
                inner, off = self.u32(off)
                inner_count, off = self.u64(off)
                off = self._skip_items(inner, inner_count, off)
            return off
        return self._end(off, count * struct.calcsize(_SCALARS[item]))

    def _tensor_table(self, off: int, n_tensors: int) -> tuple[list[Tensor], int]:
        tensors: list[Tensor] = []
        for _ in range(n_tensors):
            name, off = self.string(off)
            n_dims, off = self.u32(off)
            if n_dims > _MAX_DIMS:
                raise HeaderError(f"corrupt tensor table ({n_dims} dimensions)")
            code = f"{self.order}{n_dims}QIQ"
            end = self._end(off, struct.calcsize(code))
            *dims, kind, offset = struct.unpack_from(code, self.buf, off)
            tensors.append(Tensor(name, tuple(dims), kind, offset))
            off = end
        _refuse_duplicates("tensor", [t.name for t in tensors])
        return tensors, off


def _refuse_duplicates(what: str, names: list[str]) -> None:
    """llama.cpp refuses a file that repeats a metadata key or a tensor name; so does this."""
    if len(set(names)) == len(names):
        return
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise HeaderError(f"duplicate {what} {name!r}")
        seen.add(name)
