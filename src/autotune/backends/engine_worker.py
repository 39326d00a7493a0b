"""A child process that serves one GGUF model with llama.cpp (xllamacpp) on a loopback port.

Why a child process and not a thread: ``xllamacpp.Server()`` holds the GIL for the whole
model load (measured: a 5 ms ticker thread stalled 0.35 s while the 135M bundled model
loaded; an 8B model takes seconds), and a GGML assertion aborts the whole process. In a
child, a load never freezes autotune's API, a crash only ends that model (the parent sees
it and reports an unexpected unload), and the child's RSS is that model's true footprint.

Protocol: the parent starts ``python -m autotune.backends.engine_worker '<json>'``; the child
prints one JSON line on stdout, ``{"url": ..., "pid": ...}`` or ``{"error": ...}``, then
serves until its stdin closes (so it never outlives its parent) or it gets SIGTERM. When the
spec names an ``api_key_file``, the child reads the key from it, deletes the file, and
llama-server then asks every request for that key (``/health`` and ``/v1/models`` excepted).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from typing import Any

__all__ = ["build_params", "main"]

_KV_TYPES = {
    "f32": "F32",
    "f16": "F16",
    "bf16": "BF16",
    "q8_0": "Q8_0",
    "q4_0": "Q4_0",
    "q4_1": "Q4_1",
    "q5_0": "Q5_0",
    "q5_1": "Q5_1",
    "iq4_nl": "IQ4_NL",
}

#: autotune's speculative modes → xllamacpp ``common_speculative_type`` members.
_SPEC_TYPES = {
    "ngram_simple": "NGRAM_SIMPLE",
    "ngram_map_k": "NGRAM_MAP_K",
    "ngram_map_k4v": "NGRAM_MAP_K4V",
    "ngram_mod": "NGRAM_MOD",
    "ngram_cache": "NGRAM_CACHE",
    "draft": "DRAFT_SIMPLE",
}


def build_params(spec: dict[str, Any], api_key: str | None = None) -> Any:
    """Turn a load spec (path, alias and :class:`LoadSettings` fields) into ``CommonParams``;
    with ``api_key``, llama-server refuses requests that do not carry it (401)."""
    import xllamacpp as x

    p = x.CommonParams()
    if api_key:
        p.api_keys = [api_key]
    p.model.path = spec["path"]
    p.model_alias = {spec["alias"]}
    n_parallel = int(spec.get("n_parallel") or 1)
    if spec.get("n_ctx"):
        # llama-server splits -c across its slots (seen: n_ctx 512 with 2 slots gives 256 each),
        # unlike Ollama, which multiplies; autotune's n_ctx is per conversation: multiply here.
        p.n_ctx = int(spec["n_ctx"]) * n_parallel
        p.n_parallel = n_parallel
    # else: llama.cpp's own defaults (n_ctx 0 = the trained context, fitted to free memory)
    if spec.get("n_batch"):
        p.n_batch = int(spec["n_batch"])
    if spec.get("n_ubatch"):
        p.n_ubatch = int(spec["n_ubatch"])
    if spec.get("n_threads"):
        p.cpuparams.n_threads = int(spec["n_threads"])
        p.cpuparams_batch.n_threads = int(spec["n_threads"])
    flash = spec.get("flash_attn")
    kinds = x.llama_flash_attn_type
    p.flash_attn_type = (
        kinds.LLAMA_FLASH_ATTN_TYPE_AUTO
        if flash is None
        else kinds.LLAMA_FLASH_ATTN_TYPE_ENABLED
        if flash
        else kinds.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    for key in ("cache_type_k", "cache_type_v"):
        if spec.get(key):
            setattr(p, key, getattr(x.ggml_type, "GGML_TYPE_" + _KV_TYPES[spec[key]]))
    if spec.get("cache_ram_mib") is not None:
        # llama-server keeps finished prompts' KV in host RAM for reuse (--cache-ram,
        # default 8192 MiB): it counts against memory, so the plan bounds it.
        p.cache_ram_mib = int(spec["cache_ram_mib"])
    if spec.get("slot_save_path"):
        # llama.cpp joins this folder and a slot file's name by plain concatenation (seen: a
        # folder without a trailing separator saved "…/kva.bin" beside it, not "…/kv/a.bin");
        # llama-server's --slot-save-path adds the separator, CommonParams does not.
        p.slot_save_path = os.path.join(str(spec["slot_save_path"]), "")
    if spec.get("embedding"):
        # An embedding model: /v1/embeddings on, pooled as its GGUF says (llama_pooling_type).
        p.embedding = True
        if spec.get("pooling") is not None:
            p.pooling_type = x.llama_pooling_type(int(spec["pooling"]))
    _speculative(p, spec, x)
    p.port = 0  # a free loopback port, chosen by the OS
    p.endpoint_metrics = True
    p.ui = False
    p.verbosity = int(spec.get("verbosity", 1))  # 1 keeps llama.cpp to warnings and errors
    return p


def _read_key(path: str | None) -> str | None:
    """The API key in ``path`` (then deleted: it is needed once), or None without a path."""
    if not path:
        return None
    with open(path, encoding="utf-8") as file:
        key = file.read().strip()
    with contextlib.suppress(OSError):
        os.unlink(path)
    if not key:
        raise ValueError("the API key file is empty")
    return key


def _speculative(p: Any, spec: dict[str, Any], x: Any) -> None:
    """Speculative decoding, a load-time setting: n-gram drafts need no second model; a draft
    model (``draft_path``) is loaded beside the target, with the same threads."""
    mode = spec.get("speculative")
    if not mode or mode == "none":
        return
    kind = getattr(x.common_speculative_type, "COMMON_SPECULATIVE_TYPE_" + _SPEC_TYPES[mode])
    p.speculative.types = [kind]
    if mode == "draft":
        if not spec.get("draft_path"):
            raise ValueError("speculative mode 'draft' needs a draft model (draft_path)")
        draft = p.speculative.draft
        draft.mparams.path = spec["draft_path"]
        if spec.get("n_threads"):
            draft.cpuparams.n_threads = int(spec["n_threads"])
            draft.cpuparams_batch.n_threads = int(spec["n_threads"])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    if spec.get("nice"):
        with contextlib.suppress(OSError):
            os.nice(int(spec["nice"]))
    try:
        api_key = _read_key(spec.get("api_key_file"))
        import xllamacpp as x

        server = x.Server(build_params(spec, api_key))
    except Exception as exc:  # the engine reports load failures as a bare RuntimeError
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}), flush=True)
        return 1
    print(json.dumps({"url": server.listening_address, "pid": os.getpid()}), flush=True)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    def watch_parent() -> None:
        sys.stdin.read()  # returns at EOF: the parent closed the pipe or died
        stop.set()

    threading.Thread(target=watch_parent, daemon=True).start()
    try:
        while not stop.wait(1.0):  # a timed wait lets the SIGTERM handler run
            pass
    except KeyboardInterrupt:
        pass
    del server
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
