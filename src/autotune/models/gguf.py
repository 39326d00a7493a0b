"""Reads the architecture facts of a GGUF file into a :class:`ModelMeta`, with an on-disk cache.

The header is read by :mod:`autotune.models.gguf_header`, which only counts the tokenizer's
arrays: tens of milliseconds even for a 262k vocabulary (``gguf.GGUFReader``, which decodes
them, took 1.9 s for the bundled SmolLM2 and 8.8 s for Gemma-3-270M). Results are still
cached in ``<home>/cache/gguf-meta.json``, keyed by the resolved path and checked against
the file's size and mtime: a listing of many models then opens no model file at all, and a
split model's other shards are not read again.

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
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autotune.ground.types import ModelMeta
from autotune.models.gguf_header import GGUF_MAGIC, Header, HeaderError, read_header

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


def check_gguf(path: str | os.PathLike[str]) -> str | None:
    """None when the file is a complete GGUF, else a short reason (never raises).

    Reads the header the way a loader would (magic, version, metadata, the tensor table,
    tokenizer arrays only counted) and checks that the file is long enough for every
    tensor's data. About 10 ms for a 49k-vocab model, so discovery can afford it.
    """
    try:
        _checked_header(path)
    except HeaderError as exc:
        return str(exc)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    return None


def _checked_header(path: str | os.PathLike[str]) -> Header:
    """The header of a complete GGUF file; :class:`HeaderError` names what is wrong."""
    size = os.path.getsize(path)
    header = read_header(path)
    data_end = _data_end(header)
    if header.data_start + data_end > size:
        raise HeaderError(
            f"truncated: tensor data needs {header.data_start + data_end:,} bytes, "
            f"file has {size:,}"
        )
    return header


def _data_end(header: Header) -> int:
    """Where the last tensor's data ends, counted from the start of the tensor data."""
    import gguf  # deferred: pulls in numpy

    data_end = 0
    for tensor in header.tensors:
        try:
            block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(tensor.type)]
        except (KeyError, ValueError):
            continue  # a tensor type newer than this gguf package: its size is unknown
        data_end = max(data_end, tensor.offset + tensor.n_elements // block * type_size)
    return data_end


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

    try:
        header = _checked_header(real)
    except HeaderError as exc:
        raise GGUFError(f"{display}: {exc}.") from None
    except OSError as exc:
        raise GGUFError(f"{display}: cannot read: {exc.strerror or exc}.") from None
    meta = _parse(header, real, display)
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


def _open_header(path: Path, display: str) -> Header:
    try:
        return read_header(path)
    except HeaderError as exc:
        raise GGUFError(f"{display}: {exc}.") from None
    except OSError as exc:
        raise GGUFError(f"{display}: cannot read the file ({_one_line(exc)}).") from None


def _field(header: Header, key: str) -> Any:
    """A scalar, string or (short) list value of ``key``, or None when the key is absent."""
    return header.fields.get(key)


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
    header: Header, arch: str, n_layer: int | None
) -> tuple[int | None, list[bool] | None]:
    """The window and per-layer SWA flags, following the rules in the module docstring."""
    known = SWA_PATTERNS.get(arch)
    window = _as_int(_field(header, f"{arch}.attention.sliding_window"))
    if window is None and known is not None:
        window = known[2]
    if not window or not n_layer:
        return None, None
    if arch == "exaone4" and n_layer != 64:
        return None, None
    pattern = _field(header, f"{arch}.attention.sliding_window_pattern")
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


def _quantization(header: Header) -> str | None:
    import gguf

    file_type = _as_int(_field(header, "general.file_type"))
    if file_type is not None:
        try:
            name = gguf.LlamaFileType(file_type).name
        except ValueError:
            return f"file_type {file_type}"
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    # No file type recorded: name the tensor type that holds most of the matrix weights.
    weights: Counter[str] = Counter()
    for tensor in header.tensors:
        if len(tensor.dims) >= 2:
            weights[_type_name(tensor.type)] += tensor.n_elements
    return weights.most_common(1)[0][0] if weights else None


def _type_name(kind: int) -> str:
    """A ggml tensor type's name (``Q4_K``), or ``type N`` for one newer than this gguf."""
    import gguf

    try:
        return str(gguf.GGMLQuantizationType(kind).name)
    except ValueError:
        return f"type {kind}"


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


def _parse(header: Header, path: Path, display: str) -> ModelMeta:
    try:
        return _meta_from_header(header, path, display)
    except GGUFError:
        raise
    except Exception as exc:
        raise GGUFError(
            f"{display}: unreadable GGUF metadata ({type(exc).__name__}: {_one_line(exc)})."
        ) from None


def _meta_from_header(header: Header, path: Path, display: str) -> ModelMeta:
    arch = _field(header, "general.architecture")
    arch = arch if isinstance(arch, str) else None
    a = arch or ""

    n_layer = _as_int(_field(header, f"{a}.block_count"))
    head_count, head_count_kv = _head_counts(header, a, n_layer)
    embedding_length = _as_int(_field(header, f"{a}.embedding_length"))
    default_head_dim = embedding_length // head_count if embedding_length and head_count else None
    key_length = _as_int(_field(header, f"{a}.attention.key_length")) or default_head_dim
    value_length = _as_int(_field(header, f"{a}.attention.value_length")) or default_head_dim
    window, swa_layers = _sliding_window(header, a, n_layer)

    shards = _shard_paths(path, display)
    size_bytes = sum(p.stat().st_size for p in shards)
    parameter_count = _parameter_count(header, shards)
    vocab_size = _as_int(_field(header, f"{a}.vocab_size")) or header.array_lengths.get(
        "tokenizer.ggml.tokens"
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
        context_length=_as_int(_field(header, f"{a}.context_length")),
        vocab_size=vocab_size,
        expert_count=_as_int(_field(header, f"{a}.expert_count")) or None,
        expert_used_count=_as_int(_field(header, f"{a}.expert_used_count")) or None,
        quantization=_quantization(header),
        size_bytes=size_bytes,
        path=str(path),
        family=arch,
    )


def _head_counts(
    header: Header, arch: str, n_layer: int | None
) -> tuple[int | None, int | list[int] | None]:
    """The model-wide attention head count, and the KV heads (one number, or per layer)."""
    head_count_raw = _per_layer(_field(header, f"{arch}.attention.head_count"), n_layer)
    head_count_kv = _per_layer(_field(header, f"{arch}.attention.head_count_kv"), n_layer)
    # The model-wide head count is the largest per-layer value (OpenELM varies it by layer).
    if isinstance(head_count_raw, list):
        head_count = max(head_count_raw) if head_count_raw else None
    else:
        head_count = head_count_raw
    if head_count_kv is None:
        head_count_kv = head_count_raw  # llama.cpp: n_head_kv defaults to n_head
    return head_count, _without_cacheless_layers(header, arch, n_layer, head_count_kv)


def _without_cacheless_layers(
    header: Header, arch: str, n_layer: int | None, head_count_kv: int | list[int] | None
) -> int | list[int] | None:
    """KV heads with 0 for the layers that keep no KV cache of their own (recurrent layers
    between full-attention ones, layers that share an earlier layer's KV)."""
    full_every = _as_int(_field(header, f"{arch}.full_attention_interval"))
    shared_kv = _as_int(_field(header, f"{arch}.attention.shared_kv_layers"))
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


def _parameter_count(header: Header, shards: list[Path]) -> int:
    """``general.parameter_count``, else the elements of every tensor in every shard."""
    recorded = _as_int(_field(header, "general.parameter_count"))
    if recorded is not None:
        return recorded
    total = sum(t.n_elements for t in header.tensors)
    for shard in shards[1:]:
        total += sum(t.n_elements for t in _open_header(shard, str(shard)).tensors)
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

_TOKENS = "tokenizer.ggml.tokens"


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
        fields = read_header(path, keep_strings=(_TOKENS,)).fields
    except OSError as exc:
        raise GGUFError(f"{display}: cannot read the file ({_one_line(exc)}).") from None
    except HeaderError as exc:
        raise GGUFError(f"{display}: {exc}.") from None
    tokens = fields.get(_TOKENS)
    model = fields.get("tokenizer.ggml.model")
    return Vocabulary(
        model=model if isinstance(model, str) else None,
        tokens=tuple(tokens) if isinstance(tokens, list) and _all_bytes(tokens) else (),
        bos=_token_id(fields.get("tokenizer.ggml.bos_token_id")),
        eos=_token_id(fields.get("tokenizer.ggml.eos_token_id")),
        add_bos=_flag(fields.get("tokenizer.ggml.add_bos_token")),
        add_eos=_flag(fields.get("tokenizer.ggml.add_eos_token")),
    )


def _all_bytes(items: list[Any]) -> bool:
    """Whether a GGUF array holds strings read as bytes (its items all have one type)."""
    return not items or isinstance(items[0], bytes)


def _token_id(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _flag(value: Any) -> bool | None:
    return bool(value) if isinstance(value, (bool, int)) else None


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
