"""Reads the architecture facts of a GGUF file into a :class:`ModelMeta`, with an on-disk cache.

``gguf.GGUFReader`` parses every tokenizer array eagerly: 1.7 s for the bundled 49k-vocab
model on this machine, several seconds for 150k-vocab models. Results are therefore cached
in ``<home>/cache/gguf-meta.json``, keyed by the resolved path and checked against the
file's size and mtime, so listing many models stays fast after the first look.

Sliding-window (SWA) layers are worked out the way llama.cpp does it (``llama_hparams::
set_swa_pattern`` and each architecture's loader), from the keys the file actually has:

1. The window is ``<arch>.attention.sliding_window``; gemma2 (4096) and llama4 (8192,
   chunked attention) have a built-in default when the key is absent. No window, or 0: no SWA.
2. ``<arch>.attention.sliding_window_pattern`` as a bool array gives the layers directly
   (True = sliding). As an integer ``n`` it is a period: layer ``i`` slides when
   ``i % n < n - 1`` (every n-th layer is dense; ``n == 0`` means all layers slide).
3. Without that key, the architecture's period from llama.cpp's loaders is used
   (:data:`SWA_PATTERNS`: gemma2 2, gemma3 6, gemma3n 5, cohere2 4, gpt-oss 2, llama4 4…).
4. An architecture not in that table with a window but no pattern is treated as having no
   SWA: llama.cpp only applies a window where the architecture's code asks for it (it
   ignores phi3's, for one), and over-estimating memory is the safe side.

Layers without their own KV cache get 0 KV heads: hybrid models that mark recurrent layers
with ``<arch>.full_attention_interval`` (qwen3next: layer ``i`` has attention when
``(i + 1) % n == 0``), and gemma3n-style ``<arch>.attention.shared_kv_layers`` (the last N
layers reuse earlier layers' KV).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import mmap
import os
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.ground.types import ModelMeta

__all__ = [
    "GGUF_MAGIC",
    "SWA_PATTERNS",
    "GGUFError",
    "Vocabulary",
    "check_gguf",
    "is_gguf",
    "read_gguf_meta",
    "read_vocabulary",
    "split_parts",
    "vocabulary_mismatch",
]

GGUF_MAGIC = b"GGUF"

#: Architecture → (period, dense_first, default window or None), from llama.cpp's loaders
#: (``hparams.set_swa_pattern(period[, dense_first])`` in ``llama-model.cpp``).
SWA_PATTERNS: dict[str, tuple[int, bool, int | None]] = {
    "gemma2": (2, False, 4096),
    "gemma3": (6, False, None),
    "gemma3n": (5, False, None),
    "gemma-embedding": (6, False, None),
    "cohere2": (4, False, None),
    "gpt-oss": (2, False, None),
    "llama4": (4, False, 8192),  # chunked attention, window hard-coded to 8192 in llama.cpp
    "exaone4": (4, False, 4096),  # llama.cpp: only the 64-layer (32B) model uses SWA
    "afmoe": (4, False, None),
}

#: Bump when the parsing rules change, so cached entries from older rules are ignored.
_PARSER_VERSION = 1
_CACHE_NAME = "gguf-meta.json"
_CACHE_MAX_ENTRIES = 2000
_SPLIT_RE = re.compile(
    r"^(?P<prefix>.*)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE
)


class GGUFError(Exception):
    """A file that is not a readable GGUF model; the message names the file and the problem."""


def is_gguf(path: str | os.PathLike[str]) -> bool:
    """True when the file starts with the GGUF magic bytes (reads 4 bytes, never raises)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == GGUF_MAGIC
    except OSError:
        return False


#: Byte sizes of the fixed-size GGUF value types (``gguf.GGUFValueType``: 0–7, 10–12).
_VALUE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_STRING, _ARRAY = 8, 9


def check_gguf(path: str | os.PathLike[str]) -> str | None:
    """None when the file is a complete GGUF, else a short reason (never raises).

    Walks the header the way a loader would, without decoding values: magic, version,
    metadata lengths, the tensor table, and whether the file is long enough for every
    tensor's data. About 10 ms for a 49k-vocab model, so discovery can afford it.
    """
    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with open(path, "rb") as fh:
            head = fh.read(4)
            if head != GGUF_MAGIC:
                return f"not a GGUF file (starts with {head!r})"
            if size < 24:
                return f"truncated: {size} bytes, shorter than a GGUF header"
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _walk(mm, size)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    except (struct.error, ValueError, LookupError, OverflowError, MemoryError, RecursionError):
        return "truncated or corrupt: the header does not parse within the file"


def _walk(mm: mmap.mmap, size: int) -> str | None:
    (version,) = struct.unpack_from("<I", mm, 4)
    order = "<" if version < 0x10000 else ">"  # a big-endian file shows a byte-swapped version
    (version,) = struct.unpack_from(order + "I", mm, 4)
    if version < 2:
        return f"GGUF version {version} is no longer supported by llama.cpp"
    u32 = struct.Struct(order + "I").unpack_from
    u64 = struct.Struct(order + "Q").unpack_from
    (n_tensors,) = u64(mm, 8)
    (n_kv,) = u64(mm, 16)
    off = 24
    alignment = 32

    def skip_value(kind: int, off: int) -> int:
        if kind == _STRING:
            return off + 8 + u64(mm, off)[0]
        if kind == _ARRAY:
            item = u32(mm, off)[0]
            count = u64(mm, off + 4)[0]
            off += 12
            if item in _VALUE_SIZES:
                return off + count * _VALUE_SIZES[item]
            for _ in range(count):
                off = skip_value(item, off)
                if off > size:
                    break
            return off
        return off + _VALUE_SIZES[kind]

    for _ in range(n_kv):
        (key_len,) = u64(mm, off)
        key = mm[off + 8 : off + 8 + key_len]
        off += 8 + key_len
        (kind,) = u32(mm, off)
        off += 4
        if key == b"general.alignment" and kind == 4:
            (alignment,) = u32(mm, off)
        off = skip_value(kind, off)
        if off > size:
            return "truncated: the metadata runs past the end of the file"
    import gguf  # deferred: pulls in numpy

    data_end = 0
    for _ in range(n_tensors):
        (name_len,) = u64(mm, off)
        off += 8 + name_len
        (n_dims,) = u32(mm, off)
        if n_dims > 8:  # ggml tensors have at most 4 dimensions
            return f"corrupt tensor table ({n_dims} dimensions)"
        dims = struct.unpack_from(f"{order}{n_dims}Q", mm, off + 4)
        off += 4 + 8 * n_dims
        (kind,) = u32(mm, off)
        (offset,) = u64(mm, off + 4)
        off += 12
        try:
            block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
        except (KeyError, ValueError):
            continue  # a tensor type newer than this gguf package: its size is unknown
        elements = 1
        for dim in dims:
            elements *= dim
        data_end = max(data_end, offset + elements // block * type_size)
    if off > size:
        return "truncated: the tensor table runs past the end of the file"
    data_start = off + (-off % (alignment or 32))
    if data_start + data_end > size:
        return f"truncated: tensor data needs {data_start + data_end:,} bytes, file has {size:,}"
    return None


def split_parts(path: str | os.PathLike[str]) -> tuple[int, int] | None:
    """``(index, count)`` for a split GGUF shard named ``…-00001-of-00003.gguf``, else None."""
    match = _SPLIT_RE.match(Path(path).name)
    if not match:
        return None
    return int(match.group("index")), int(match.group("count"))


def read_gguf_meta(
    path: str | os.PathLike[str], name: str | None = None, *, use_cache: bool = True
) -> ModelMeta:
    """Architecture facts of the GGUF at ``path``; raises :class:`GGUFError` for a bad file."""
    path = Path(path)
    display = str(path)
    try:
        real = path.resolve(strict=True)
        stat = real.stat()
    except (OSError, RuntimeError) as exc:
        raise GGUFError(f"{display}: cannot read the file ({_one_line(exc)}).") from None
    if not real.is_file():
        raise GGUFError(f"{display}: not a regular file.")
    if stat.st_size == 0:
        raise GGUFError(f"{display}: empty file, not a GGUF model.")
    _check_magic(real, display)

    name = name or path.stem
    key = str(real)
    if use_cache:
        cached = _cache_get(key, stat.st_size, stat.st_mtime_ns)
        if cached is not None:  # only complete files are cached, and this one is unchanged
            return dataclasses.replace(cached, name=name, path=str(path))

    problem = check_gguf(real)
    if problem is not None:
        raise GGUFError(f"{display}: {problem}.")
    meta = _parse(real, display)
    meta = dataclasses.replace(meta, name=name, path=str(path))
    if use_cache:
        _cache_put(key, stat.st_size, stat.st_mtime_ns, meta)
    return meta


# --------------------------------------------------------------------------- parsing


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _check_magic(path: Path, display: str) -> None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise GGUFError(f"{display}: cannot read the file ({_one_line(exc)}).") from None
    if head != GGUF_MAGIC:
        raise GGUFError(f"{display}: not a GGUF file (starts with {head!r}, expected b'GGUF').")


def _open_reader(path: Path, display: str) -> Any:
    import gguf  # deferred: importing gguf pulls in numpy and costs ~0.2 s

    try:
        return gguf.GGUFReader(path)
    except Exception as exc:  # the reader raises struct/numpy/value errors on bad bytes
        raise GGUFError(
            f"{display}: unreadable GGUF file ({type(exc).__name__}: {_one_line(exc)})."
        ) from None


def _field(reader: Any, key: str) -> Any:
    """A scalar, string or list value of ``key``, or None when the key is absent."""
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.contents()
    if isinstance(value, list):
        return [v.item() if hasattr(v, "item") else v for v in value]
    return value.item() if hasattr(value, "item") else value


def _array_len(reader: Any, key: str) -> int | None:
    field = reader.fields.get(key)
    return None if field is None else len(field.data)


def _as_int(value: Any) -> int | None:
    if value is None or isinstance(value, (list, str)):
        return None
    return int(value)


def _per_layer(value: Any, n_layer: int | None) -> int | list[int] | None:
    """An int stays an int; an array becomes a list of ints (padded/trimmed to ``n_layer``)."""
    if value is None:
        return None
    if not isinstance(value, list):
        return int(value)
    values = [int(v) for v in value]
    if n_layer and values and len(values) != n_layer:
        values = (values + [values[-1]] * n_layer)[:n_layer]
    return values


def _swa_pattern(n_layer: int, period: int, dense_first: bool) -> list[bool]:
    """llama.cpp ``llama_hparams::set_swa_pattern``: True where layer ``i`` slides."""
    if dense_first:
        return [period == 0 or i % period != 0 for i in range(n_layer)]
    return [period == 0 or i % period < period - 1 for i in range(n_layer)]


def _sliding_window(
    reader: Any, arch: str, n_layer: int | None
) -> tuple[int | None, list[bool] | None]:
    """The window and per-layer SWA flags, following the rules in the module docstring."""
    known = SWA_PATTERNS.get(arch)
    window = _as_int(_field(reader, f"{arch}.attention.sliding_window"))
    if window is None and known is not None:
        window = known[2]
    if not window or not n_layer:
        return None, None
    if arch == "exaone4" and n_layer != 64:
        return None, None
    pattern = _field(reader, f"{arch}.attention.sliding_window_pattern")
    if isinstance(pattern, list):
        flags = [bool(v) for v in pattern]
        flags = (flags + [False] * n_layer)[:n_layer]
    elif pattern is not None:
        flags = _swa_pattern(n_layer, int(pattern), known[1] if known else False)
    elif known is not None:
        flags = _swa_pattern(n_layer, known[0], known[1])
    else:
        return None, None
    if not any(flags):
        return None, None
    return window, flags


def _quantization(reader: Any) -> str | None:
    import gguf

    file_type = _as_int(_field(reader, "general.file_type"))
    if file_type is not None:
        try:
            name = gguf.LlamaFileType(file_type).name
        except ValueError:
            return f"file_type {file_type}"
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    # No file type recorded: name the tensor type that holds most of the matrix weights.
    weights: Counter[str] = Counter()
    for tensor in reader.tensors:
        if len(tensor.shape) >= 2:
            weights[tensor.tensor_type.name] += int(tensor.n_elements)
    return weights.most_common(1)[0][0] if weights else None


def _shard_paths(path: Path, display: str) -> list[Path]:
    """All shards of a split model (the file itself when it is not split)."""
    parts = split_parts(path)
    if parts is None or parts[1] <= 1:
        return [path]
    match = _SPLIT_RE.match(path.name)
    assert match is not None
    prefix = match.group("prefix")
    shards = [
        path.with_name(f"{prefix}-{i:05d}-of-{parts[1]:05d}.gguf") for i in range(1, parts[1] + 1)
    ]
    missing = [p.name for p in shards if not p.is_file()]
    if missing:
        raise GGUFError(f"{display}: split model is missing {', '.join(missing)}.")
    return shards


def _parse(path: Path, display: str) -> ModelMeta:
    reader = _open_reader(path, display)
    try:
        return _meta_from_reader(reader, path, display)
    except GGUFError:
        raise
    except Exception as exc:
        raise GGUFError(
            f"{display}: unreadable GGUF metadata ({type(exc).__name__}: {_one_line(exc)})."
        ) from None
    finally:
        del reader


def _meta_from_reader(reader: Any, path: Path, display: str) -> ModelMeta:
    arch = _field(reader, "general.architecture")
    arch = arch if isinstance(arch, str) else None
    a = arch or ""

    n_layer = _as_int(_field(reader, f"{a}.block_count"))
    head_count, head_count_kv = _head_counts(reader, a, n_layer)
    embedding_length = _as_int(_field(reader, f"{a}.embedding_length"))
    default_head_dim = embedding_length // head_count if embedding_length and head_count else None
    key_length = _as_int(_field(reader, f"{a}.attention.key_length")) or default_head_dim
    value_length = _as_int(_field(reader, f"{a}.attention.value_length")) or default_head_dim
    window, swa_layers = _sliding_window(reader, a, n_layer)

    shards = _shard_paths(path, display)
    size_bytes = sum(p.stat().st_size for p in shards)
    parameter_count = _parameter_count(reader, shards)
    vocab_size = _as_int(_field(reader, f"{a}.vocab_size")) or _array_len(
        reader, "tokenizer.ggml.tokens"
    )
    return ModelMeta(
        name=path.stem,
        architecture=arch,
        parameter_count=parameter_count,
        block_count=n_layer,
        head_count=head_count,
        head_count_kv=head_count_kv,
        embedding_length=embedding_length,
        key_length=key_length,
        value_length=value_length,
        sliding_window=window,
        swa_layers=swa_layers,
        context_length=_as_int(_field(reader, f"{a}.context_length")),
        vocab_size=vocab_size,
        expert_count=_as_int(_field(reader, f"{a}.expert_count")) or None,
        expert_used_count=_as_int(_field(reader, f"{a}.expert_used_count")) or None,
        quantization=_quantization(reader),
        size_bytes=size_bytes,
        path=str(path),
        family=arch,
    )


def _head_counts(
    reader: Any, arch: str, n_layer: int | None
) -> tuple[int | None, int | list[int] | None]:
    """The model-wide attention head count, and the KV heads (one number, or per layer)."""
    head_count_raw = _per_layer(_field(reader, f"{arch}.attention.head_count"), n_layer)
    head_count_kv = _per_layer(_field(reader, f"{arch}.attention.head_count_kv"), n_layer)
    # The model-wide head count is the largest per-layer value (OpenELM varies it by layer).
    if isinstance(head_count_raw, list):
        head_count = max(head_count_raw) if head_count_raw else None
    else:
        head_count = head_count_raw
    if head_count_kv is None:
        head_count_kv = head_count_raw  # llama.cpp: n_head_kv defaults to n_head
    return head_count, _without_cacheless_layers(reader, arch, n_layer, head_count_kv)


def _without_cacheless_layers(
    reader: Any, arch: str, n_layer: int | None, head_count_kv: int | list[int] | None
) -> int | list[int] | None:
    """KV heads with 0 for the layers that keep no KV cache of their own (recurrent layers
    between full-attention ones, layers that share an earlier layer's KV)."""
    full_every = _as_int(_field(reader, f"{arch}.full_attention_interval"))
    shared_kv = _as_int(_field(reader, f"{arch}.attention.shared_kv_layers"))
    if not (n_layer and head_count_kv is not None and (full_every or shared_kv)):
        return head_count_kv
    per_layer = (
        list(head_count_kv) if isinstance(head_count_kv, list) else [head_count_kv] * n_layer
    )
    if full_every:
        per_layer = [h if (i + 1) % full_every == 0 else 0 for i, h in enumerate(per_layer)]
    if shared_kv and 0 < shared_kv < n_layer:
        per_layer = per_layer[: n_layer - shared_kv] + [0] * shared_kv
    return per_layer


def _parameter_count(reader: Any, shards: list[Path]) -> int:
    """``general.parameter_count``, else the elements of every tensor in every shard."""
    recorded = _as_int(_field(reader, "general.parameter_count"))
    if recorded is not None:
        return recorded
    total = sum(int(t.n_elements) for t in reader.tensors)
    for shard in shards[1:]:
        other = _open_reader(shard, str(shard))
        total += sum(int(t.n_elements) for t in other.tensors)
        del other
    return total


# --------------------------------------------------------------------------- cache


def _cache_path() -> Path:
    from autotune.ground.config import get_settings

    return get_settings().home / "cache" / _CACHE_NAME


#: Parsed cache file per path, reused while the file's mtime is unchanged (one read per `ls`).
_loaded: dict[Path, tuple[int, dict[str, Any]]] = {}


def _cache_load(file: Path) -> dict[str, Any]:
    try:
        mtime_ns = file.stat().st_mtime_ns
        seen = _loaded.get(file)
        if seen is not None and seen[0] == mtime_ns:
            return dict(seen[1])
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _PARSER_VERSION:
        return {}
    entries = data.get("entries")
    if not isinstance(entries, dict):
        return {}
    _loaded[file] = (mtime_ns, entries)
    return dict(entries)


def _cache_get(key: str, size: int, mtime_ns: int) -> ModelMeta | None:
    entry = _cache_load(_cache_path()).get(key)
    if (
        not isinstance(entry, dict)
        or entry.get("size") != size
        or entry.get("mtime_ns") != mtime_ns
    ):
        return None
    known = {f.name for f in dataclasses.fields(ModelMeta)} - {"name", "path"}
    values = entry.get("meta")
    if not isinstance(values, dict):
        return None
    try:
        return ModelMeta(name="", **{k: v for k, v in values.items() if k in known})
    except TypeError:
        return None


def _cache_put(key: str, size: int, mtime_ns: int, meta: ModelMeta) -> None:
    """Best effort: a cache that cannot be written only costs speed, never an error."""
    file = _cache_path()
    entries = _cache_load(file)
    entries.pop(key, None)
    values = dataclasses.asdict(meta)
    values.pop("name", None)
    values.pop("path", None)
    entries[key] = {"size": size, "mtime_ns": mtime_ns, "meta": values}
    while len(entries) > _CACHE_MAX_ENTRIES:
        entries.pop(next(iter(entries)))
    tmp = file.with_name(f"{file.name}.{os.getpid()}.tmp")
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"version": _PARSER_VERSION, "entries": entries}), "utf-8")
        os.replace(tmp, file)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


# --------------------------------------------------------------------------- vocabulary

#: llama.cpp (``common_speculative_are_compatible``): a draft's vocabulary may differ in size
#: from the target's by at most this many tokens, and token texts are compared from this id on
#: (the first ids are control tokens that may legitimately differ).
VOCAB_MAX_SIZE_DIFFERENCE = 128
VOCAB_CHECK_START_ID = 5

_TOKENIZER_KEYS = {
    b"tokenizer.ggml.model": "model",
    b"tokenizer.ggml.tokens": "tokens",
    b"tokenizer.ggml.bos_token_id": "bos",
    b"tokenizer.ggml.eos_token_id": "eos",
    b"tokenizer.ggml.add_bos_token": "add_bos",
    b"tokenizer.ggml.add_eos_token": "add_eos",
}


@dataclass(frozen=True)
class Vocabulary:
    """A GGUF model's tokenizer, as far as speculative decoding cares: a draft model must
    produce the same token ids for the same text as the model it drafts for."""

    model: str | None
    tokens: tuple[bytes, ...]
    bos: int | None = None
    eos: int | None = None
    add_bos: bool | None = None
    add_eos: bool | None = None

    @property
    def size(self) -> int:
        return len(self.tokens)


def read_vocabulary(path: str | os.PathLike[str]) -> Vocabulary:
    """The tokenizer facts of the GGUF at ``path`` (the first shard of a split model).

    Reads only the header through mmap (tens of milliseconds even for a 262k vocabulary);
    raises :class:`GGUFError` for a file that is not a readable GGUF.
    """
    display = str(path)
    _check_magic(Path(path), display)
    try:
        with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            found = _tokenizer_values(mm, len(mm))
    except OSError as exc:
        raise GGUFError(f"{display}: cannot read the file ({_one_line(exc)}).") from None
    except (struct.error, ValueError, LookupError, OverflowError, MemoryError):
        raise GGUFError(f"{display}: truncated or corrupt GGUF header.") from None
    tokens = found.get("tokens")
    model = found.get("model")
    return Vocabulary(
        model=model.decode("utf-8", "replace") if isinstance(model, bytes) else None,
        tokens=tuple(tokens) if isinstance(tokens, list) else (),
        bos=found.get("bos"),
        eos=found.get("eos"),
        add_bos=None if found.get("add_bos") is None else bool(found["add_bos"]),
        add_eos=None if found.get("add_eos") is None else bool(found["add_eos"]),
    )


def _tokenizer_values(mm: mmap.mmap, size: int) -> dict[str, Any]:
    """The tokenizer keys' values from the metadata header (strings as bytes)."""
    (version,) = struct.unpack_from("<I", mm, 4)
    order = "<" if version < 0x10000 else ">"
    u32 = struct.Struct(order + "I").unpack_from
    u64 = struct.Struct(order + "Q").unpack_from
    scalars = {4: order + "I", 5: order + "i", 7: "B", 10: order + "Q", 11: order + "q"}
    (n_kv,) = u64(mm, 16)
    off = 24
    found: dict[str, Any] = {}

    def string(off: int) -> tuple[bytes, int]:
        (n,) = u64(mm, off)
        if off + 8 + n > size:
            raise ValueError("string past the end of the file")
        return bytes(mm[off + 8 : off + 8 + n]), off + 8 + n

    def skip(kind: int, off: int) -> int:
        if kind == _STRING:
            return string(off)[1]
        if kind == _ARRAY:
            item, count = u32(mm, off)[0], u64(mm, off + 4)[0]
            off += 12
            if item in _VALUE_SIZES:
                return off + count * _VALUE_SIZES[item]
            for _ in range(count):
                off = skip(item, off)
            return off
        return off + _VALUE_SIZES[kind]

    for _ in range(n_kv):
        key, off = string(off)
        (kind,) = u32(mm, off)
        off += 4
        name = _TOKENIZER_KEYS.get(key)
        if name == "tokens" and kind == _ARRAY and u32(mm, off)[0] == _STRING:
            count, off = u64(mm, off + 4)[0], off + 12
            items = []
            for _ in range(count):
                text, off = string(off)
                items.append(text)
            found[name] = items
            continue
        if name == "model" and kind == _STRING:
            found[name] = string(off)[0]
        elif name is not None and kind in scalars:
            found[name] = struct.unpack_from(scalars[kind], mm, off)[0]
        off = skip(kind, off)
    return found


def vocabulary_mismatch(target: Vocabulary, draft: Vocabulary) -> str | None:
    """Why ``draft`` cannot draft tokens for ``target``, or None when it can.

    llama.cpp's own rule for a draft model (``common_speculative_are_compatible``): the same
    tokenizer type and special tokens, vocabulary sizes within 128 tokens of each other, and
    the same text for every token id from 5 up to the smaller size.
    """
    if not target.tokens or not draft.tokens:
        return "one of the two files has no tokenizer vocabulary"
    if target.model != draft.model or abs(target.size - draft.size) > VOCAB_MAX_SIZE_DIFFERENCE:
        return (
            f"its vocabulary differs ({draft.model} tokenizer, {draft.size:,} tokens vs "
            f"{target.model}, {target.size:,})"
        )
    if (target.bos, target.eos) != (draft.bos, draft.eos):
        return (
            f"its special tokens differ (BOS/EOS {draft.bos}/{draft.eos} vs "
            f"{target.bos}/{target.eos})"
        )
    if (target.add_bos, target.add_eos) != (draft.add_bos, draft.add_eos):
        return "it adds BOS/EOS tokens differently"
    shared = min(target.size, draft.size)
    for i in range(VOCAB_CHECK_START_ID, shared):
        if target.tokens[i] != draft.tokens[i]:
            return (
                f"its vocabulary differs (token {i} is {draft.tokens[i]!r}, "
                f"not {target.tokens[i]!r})"
            )
    return None
