"""GGUF metadata: the bundled model, small GGUFs written with ``gguf.GGUFWriter``, broken files.

The header reader is checked against ``gguf.GGUFReader``, the reference it replaces."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from autotune.ground.config import get_settings
from autotune.models.gguf import GGUFError, check_gguf, is_gguf, read_gguf_meta, split_parts
from autotune.models.gguf_header import read_header


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests inspect the metadata cache itself: give each a fresh one, not the shared one."""
    monkeypatch.setenv("AUTOTUNE_HOME", str(tmp_path / "private-home"))
    get_settings.cache_clear()


def write_gguf(
    path: Path,
    arch: str = "llama",
    *,
    kv: dict[str, Any] | None = None,
    tensors: dict[str, np.ndarray] | None = None,
    file_type: int | None = 1,
) -> Path:
    """A real, small GGUF: ``kv`` keys may use ``{arch}``; values pick their GGUF type."""
    writer = gguf.GGUFWriter(path, arch)
    if file_type is not None:
        writer.add_file_type(file_type)
    for key, value in (kv or {}).items():
        key = key.format(arch=arch)
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int) and value >= 2**32:
            writer.add_uint64(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, list(value))
    for name, array in (tensors or {"token_embd.weight": np.zeros((8, 64), np.float16)}).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


BASE = {
    "{arch}.block_count": 4,
    "{arch}.embedding_length": 256,
    "{arch}.attention.head_count": 4,
    "{arch}.context_length": 4096,
}


# --------------------------------------------------------------------------- the bundled model


def test_bundled_model_metadata(bundled_gguf: Path) -> None:
    meta = read_gguf_meta(bundled_gguf, "smollm2:135m")
    assert meta.name == "smollm2:135m"
    assert meta.architecture == "llama"
    assert meta.family == "llama"
    assert meta.block_count == 30
    assert meta.head_count == 9
    assert meta.head_count_kv == 3
    assert meta.embedding_length == 576
    assert (meta.key_length, meta.value_length) == (64, 64)  # 576 / 9, no explicit keys
    assert meta.context_length == 8192
    assert meta.vocab_size == 49152
    assert meta.quantization == "Q4_1"
    assert meta.size_bytes == bundled_gguf.stat().st_size
    assert meta.path == str(bundled_gguf)
    # No general.parameter_count in this file: the tensors' element counts are summed.
    assert meta.parameter_count == 134_515_008
    assert meta.sliding_window is None and meta.swa_layers is None
    assert meta.expert_count is None and meta.expert_used_count is None


def test_default_name_is_the_file_stem(bundled_gguf: Path) -> None:
    assert read_gguf_meta(bundled_gguf).name == bundled_gguf.stem


def test_is_gguf(bundled_gguf: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    assert is_gguf(bundled_gguf)
    assert not is_gguf(text)
    assert not is_gguf(tmp_path / "missing.gguf")
    assert not is_gguf(tmp_path)


def test_check_gguf_accepts_complete_files(bundled_gguf: Path, tmp_path: Path) -> None:
    assert check_gguf(bundled_gguf) is None
    assert check_gguf(write_gguf(tmp_path / "tiny.gguf", kv=BASE)) is None


# --------------------------------------------------------------------------- the header reader


def test_header_matches_gguf_reader_on_the_bundled_model(bundled_gguf: Path) -> None:
    """Every key GGUFReader decodes, with the same value; long arrays with the same length."""
    reader = gguf.GGUFReader(bundled_gguf)
    header = read_header(bundled_gguf)
    long_arrays = []
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):  # the reader's own entries for the fixed header
            continue
        if field.types[0] == gguf.GGUFValueType.ARRAY:
            assert header.array_lengths[key] == len(field.data), key
            if len(field.data) > 4096:
                long_arrays.append(key)
                assert key not in header.fields
                continue
        assert header.fields[key] == field.contents(), key
    assert sorted(long_arrays) == [
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.tokens",
    ]
    assert len(header.fields) + len(long_arrays) == len(reader.fields) - 3
    assert header.version == reader.fields["GGUF.version"].contents() == 3
    assert header.data_start == reader.data_offset
    assert [(t.name, t.dims, t.type, t.n_elements) for t in header.tensors] == [
        (t.name, tuple(t.shape.tolist()), int(t.tensor_type), t.n_elements) for t in reader.tensors
    ]
    assert [header.data_start + t.offset for t in header.tensors] == [
        t.data_offset for t in reader.tensors
    ]


def test_header_counts_long_arrays_and_decodes_the_strings_asked_for(tmp_path: Path) -> None:
    words = [f"w{i}" for i in range(50)]
    kv = {**BASE, "tokenizer.ggml.tokens": words, "x.ids": list(range(5000)), "x.on": [True]}
    path = write_gguf(tmp_path / "t.gguf", kv=kv)
    header = read_header(path, max_array=10)
    assert header.array_lengths == {"tokenizer.ggml.tokens": 50, "x.ids": 5000, "x.on": 1}
    assert "tokenizer.ggml.tokens" not in header.fields and "x.ids" not in header.fields
    assert header.fields["x.on"] == [True]
    assert header.fields["llama.block_count"] == 4
    assert header.fields["general.architecture"] == "llama"
    kept = read_header(path, max_array=10, keep_strings={"tokenizer.ggml.tokens"})
    assert kept.fields["tokenizer.ggml.tokens"] == [w.encode() for w in words]
    assert "x.ids" not in read_header(path).fields  # 5,000 is over the default limit too


def test_big_endian_header_reads_like_little_endian(tmp_path: Path) -> None:
    kv = {**BASE, "{arch}.attention.head_count_kv": [1, 2, 1, 2], "x.rope": 0.5, "x.n": 2**40}
    little = read_header(write_gguf(tmp_path / "le.gguf", kv=kv))
    big_path = tmp_path / "be.gguf"
    writer = gguf.GGUFWriter(big_path, "llama", endianess=gguf.GGUFEndian.BIG)
    writer.add_file_type(1)
    for key, value in little.fields.items():
        if key not in ("general.architecture", "general.file_type"):
            kind = gguf.GGUFValueType.get_type(value)
            if isinstance(value, int) and not isinstance(value, bool):
                kind = gguf.GGUFValueType.UINT64 if value >= 2**32 else gguf.GGUFValueType.UINT32
            writer.add_key_value(key, value, kind)
    writer.add_tensor("token_embd.weight", np.zeros((8, 64), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    big = read_header(big_path)
    assert big.fields == little.fields
    assert big.tensors == little.tensors
    assert check_gguf(big_path) is None
    assert read_gguf_meta(big_path).head_count_kv == [1, 2, 1, 2]


def test_header_problems_are_named(tmp_path: Path) -> None:
    tiny = write_gguf(tmp_path / "v.gguf", kv={**BASE, "x.a": 1, "x.b": 2})
    data = tiny.read_bytes()
    (tmp_path / "v1.gguf").write_bytes(data[:4] + (1).to_bytes(4, "little") + data[8:])
    assert check_gguf(tmp_path / "v1.gguf") == "GGUF version 1 is no longer supported by llama.cpp"
    name = b"token_embd.weight"
    at = data.index(name) + len(name)  # the tensor's dimension count
    corrupt = tmp_path / "dims.gguf"
    corrupt.write_bytes(data[:at] + (9).to_bytes(4, "little") + data[at + 4 :])
    assert check_gguf(corrupt) == "corrupt tensor table (9 dimensions)"
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: at + 6])
    assert check_gguf(cut) == "truncated: the tensor table runs past the end of the file"
    twice = tmp_path / "twice.gguf"
    twice.write_bytes(data.replace(b"x.b", b"x.a"))
    assert check_gguf(twice) == "duplicate metadata key 'x.a'"
    with pytest.raises(GGUFError, match="duplicate metadata key"):
        read_gguf_meta(twice)


# --------------------------------------------------------------------------- broken files


def _truncated(bundled: Path, dest: Path, n: int) -> Path:
    with open(bundled, "rb") as src:
        dest.write_bytes(src.read(n))
    return dest


@pytest.mark.parametrize("length", [1000, 3_000_000])
def test_truncated_gguf_raises_gguf_error(bundled_gguf: Path, tmp_path: Path, length: int) -> None:
    path = _truncated(bundled_gguf, tmp_path / "cut.gguf", length)
    assert is_gguf(path)  # the magic survives: only a structural check can tell
    assert "truncated" in (check_gguf(path) or "")
    with pytest.raises(GGUFError) as err:
        read_gguf_meta(path)
    message = str(err.value)
    assert str(path) in message and "truncated" in message
    assert "\n" not in message


def test_truncated_tensor_data_names_the_sizes(bundled_gguf: Path, tmp_path: Path) -> None:
    path = _truncated(bundled_gguf, tmp_path / "half.gguf", 3_000_000)
    size = bundled_gguf.stat().st_size
    assert check_gguf(path) == f"truncated: tensor data needs {size:,} bytes, file has 3,000,000"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty file"),
        (b"hello, this is not a model", "not a GGUF file"),
        (b"GG", "not a GGUF file"),
        (b"GGUF\x03\x00\x00\x00", "truncated"),
    ],
)
def test_non_gguf_files_raise_gguf_error(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(content)
    assert expected in (check_gguf(path) or "")
    with pytest.raises(GGUFError, match=expected) as err:
        read_gguf_meta(path)
    assert str(path) in str(err.value)


def test_missing_file_and_directory_raise_gguf_error(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="cannot read"):
        read_gguf_meta(tmp_path / "nope.gguf")
    with pytest.raises(GGUFError, match="not a regular file"):
        read_gguf_meta(tmp_path)


def test_corrupt_metadata_is_a_gguf_error_not_a_numpy_error(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "ok.gguf", kv=BASE)
    data = bytearray(path.read_bytes())
    data[16:24] = (10**6).to_bytes(8, "little")  # claim a million metadata entries
    path.write_bytes(bytes(data))
    with pytest.raises(GGUFError):
        read_gguf_meta(path)


# --------------------------------------------------------------------------- metadata rules


def test_per_layer_kv_heads_are_kept_as_a_list(tmp_path: Path) -> None:
    path = write_gguf(
        tmp_path / "hybrid.gguf",
        "jamba",
        kv={**BASE, "{arch}.attention.head_count_kv": [0, 2, 0, 2]},
    )
    meta = read_gguf_meta(path)
    assert meta.head_count_kv == [0, 2, 0, 2]
    assert meta.key_length == 64  # 256 / 4 heads


def test_missing_kv_heads_default_to_head_count(tmp_path: Path) -> None:
    meta = read_gguf_meta(write_gguf(tmp_path / "mha.gguf", kv=BASE))
    assert meta.head_count_kv == 4


def test_explicit_key_and_value_lengths(tmp_path: Path) -> None:
    kv = {**BASE, "{arch}.attention.key_length": 192, "{arch}.attention.value_length": 128}
    meta = read_gguf_meta(write_gguf(tmp_path / "mla.gguf", "deepseek2", kv=kv))
    assert (meta.key_length, meta.value_length) == (192, 128)


def test_gemma3_uses_llama_cpp_pattern_of_six(tmp_path: Path) -> None:
    kv = {**BASE, "{arch}.block_count": 12, "{arch}.attention.sliding_window": 1024}
    meta = read_gguf_meta(write_gguf(tmp_path / "g3.gguf", "gemma3", kv=kv))
    assert meta.sliding_window == 1024
    # set_swa_pattern(6): five sliding layers, then one dense.
    assert meta.swa_layers == [True] * 5 + [False] + [True] * 5 + [False]


def test_gemma2_window_defaults_to_4096(tmp_path: Path) -> None:
    meta = read_gguf_meta(write_gguf(tmp_path / "g2.gguf", "gemma2", kv=BASE))
    assert meta.sliding_window == 4096
    assert meta.swa_layers == [True, False, True, False]


def test_integer_pattern_key_overrides_the_architecture(tmp_path: Path) -> None:
    kv = {
        **BASE,
        "{arch}.attention.sliding_window": 128,
        "{arch}.attention.sliding_window_pattern": 4,
    }
    meta = read_gguf_meta(write_gguf(tmp_path / "p.gguf", "gemma3", kv=kv))
    assert meta.swa_layers == [True, True, True, False]


def test_bool_array_pattern_is_taken_as_is(tmp_path: Path) -> None:
    kv = {
        **BASE,
        "{arch}.attention.sliding_window": 512,
        "{arch}.attention.sliding_window_pattern": [True, False, False, True],
    }
    meta = read_gguf_meta(write_gguf(tmp_path / "arr.gguf", "gemma4", kv=kv))
    assert meta.sliding_window == 512
    assert meta.swa_layers == [True, False, False, True]


def test_window_on_an_unknown_architecture_is_not_assumed(tmp_path: Path) -> None:
    # llama.cpp ignores phi3's sliding_window; full KV is the safe estimate.
    kv = {**BASE, "{arch}.attention.sliding_window": 2047}
    meta = read_gguf_meta(write_gguf(tmp_path / "phi3.gguf", "phi3", kv=kv))
    assert meta.sliding_window is None and meta.swa_layers is None


def test_full_attention_interval_zeroes_recurrent_layers(tmp_path: Path) -> None:
    kv = {**BASE, "{arch}.attention.head_count_kv": 2, "{arch}.full_attention_interval": 4}
    meta = read_gguf_meta(write_gguf(tmp_path / "q3n.gguf", "qwen3next", kv=kv))
    assert meta.head_count_kv == [0, 0, 0, 2]


def test_shared_kv_layers_hold_no_cache(tmp_path: Path) -> None:
    kv = {
        **BASE,
        "{arch}.attention.head_count_kv": 2,
        "{arch}.attention.shared_kv_layers": 1,
        "{arch}.attention.sliding_window": 512,
    }
    meta = read_gguf_meta(write_gguf(tmp_path / "g3n.gguf", "gemma3n", kv=kv))
    assert meta.head_count_kv == [2, 2, 2, 0]
    assert meta.swa_layers == [True, True, True, True]  # period 5 over 4 layers


def test_parameter_count_key_and_moe_counts(tmp_path: Path) -> None:
    kv = {
        **BASE,
        "general.parameter_count": 30_532_122_624,
        "{arch}.expert_count": 128,
        "{arch}.expert_used_count": 8,
        "{arch}.vocab_size": 151_936,
    }
    meta = read_gguf_meta(write_gguf(tmp_path / "moe.gguf", "qwen3moe", kv=kv, file_type=15))
    assert meta.parameter_count == 30_532_122_624
    assert (meta.expert_count, meta.expert_used_count) == (128, 8)
    assert meta.vocab_size == 151_936
    assert meta.quantization == "Q4_K_M"


@pytest.mark.parametrize(
    ("file_type", "name"), [(0, "F32"), (1, "F16"), (7, "Q8_0"), (30, "IQ4_XS")]
)
def test_file_type_names(tmp_path: Path, file_type: int, name: str) -> None:
    path = write_gguf(tmp_path / "q.gguf", kv=BASE, file_type=file_type)
    assert read_gguf_meta(path).quantization == name


def test_quantization_guessed_from_tensors_without_file_type(tmp_path: Path) -> None:
    tensors = {
        "token_embd.weight": np.zeros((16, 64), np.float32),
        "blk.0.attn_q.weight": np.zeros((64, 64), np.float16),
        "blk.0.attn_k.weight": np.zeros((64, 64), np.float16),
        "output_norm.weight": np.zeros(64, np.float32),
    }
    path = write_gguf(tmp_path / "nt.gguf", kv=BASE, tensors=tensors, file_type=None)
    meta = read_gguf_meta(path)
    assert meta.quantization == "F16"  # 8,192 f16 matrix weights outweigh 1,024 f32
    assert meta.parameter_count == 16 * 64 + 2 * 64 * 64 + 64


def test_split_model_sums_shards(tmp_path: Path) -> None:
    first = write_gguf(
        tmp_path / "big-00001-of-00002.gguf",
        kv={**BASE, "split.count": 2},
        tensors={"a.weight": np.zeros((10, 32), np.float16)},
    )
    second = write_gguf(
        tmp_path / "big-00002-of-00002.gguf",
        tensors={"b.weight": np.zeros((20, 32), np.float16)},
    )
    assert split_parts(first) == (1, 2)
    meta = read_gguf_meta(first)
    assert meta.parameter_count == 10 * 32 + 20 * 32
    assert meta.size_bytes == first.stat().st_size + second.stat().st_size
    second.unlink()
    with pytest.raises(GGUFError, match=r"missing big-00002-of-00002\.gguf"):
        read_gguf_meta(first, use_cache=False)


# --------------------------------------------------------------------------- cache


def _cache_file() -> Path:
    return get_settings().home / "cache" / "gguf-meta.json"


def test_cache_is_written_under_home_and_used(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "c.gguf", kv=BASE)
    first = read_gguf_meta(path, "c")
    cache = _cache_file()
    assert cache.is_file()
    data = json.loads(cache.read_text())
    (entry,) = data["entries"].values()
    # Prove the cache is consulted: a doctored entry comes back while size and mtime match.
    entry["meta"]["block_count"] = 99
    cache.write_text(json.dumps(data))
    assert read_gguf_meta(path, "other").block_count == 99
    assert read_gguf_meta(path, "other").name == "other"
    # A changed file (new mtime) is read again.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    again = read_gguf_meta(path, "c")
    assert again.block_count == first.block_count == 4


def test_rewritten_file_is_not_served_from_cache(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", kv=BASE)
    assert read_gguf_meta(path).block_count == 4
    write_gguf(path, kv={**BASE, "{arch}.block_count": 6, "general.name": "a longer name"})
    assert read_gguf_meta(path).block_count == 6


def test_corrupt_cache_file_is_ignored(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", kv=BASE)
    cache = _cache_file()
    cache.parent.mkdir(parents=True)
    cache.write_text("{not json")
    assert read_gguf_meta(path).block_count == 4
    assert json.loads(cache.read_text())["entries"]  # rewritten with the new entry


def test_unwritable_cache_is_only_slower(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the home folder should be")
    monkeypatch.setenv("AUTOTUNE_HOME", str(blocker))
    get_settings.cache_clear()
    path = write_gguf(tmp_path / "m.gguf", kv=BASE)
    assert read_gguf_meta(path).block_count == 4
