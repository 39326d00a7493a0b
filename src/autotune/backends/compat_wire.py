"""Pure translation for OpenAI-compatible engines (LM Studio, llama-server, vLLM, SGLang,
mlx_lm): what each kind of server can do, the request bodies, the engines' stats and errors,
and llama.cpp's native infill stream as ``text_completion`` chunks. No I/O."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from autotune.ground.engines import COMPAT_KINDS, engine
from autotune.ground.errors import BackendError, InvalidRequest, ModelNotFound, UpstreamError
from autotune.ground.types import (
    Capabilities,
    ChatRequest,
    CompletionRequest,
    EngineStats,
    LoadSettings,
    ModelEntry,
    ModelMeta,
    RunningModel,
)

__all__ = [
    "ENGINE_LABELS",
    "KINDS",
    "START_HINTS",
    "capabilities_for",
    "chat_body",
    "closing",
    "completion_body",
    "config_matches",
    "detect_kind",
    "engine_error",
    "engine_stats_from_chunk",
    "error_text",
    "event_data",
    "final_stats",
    "infill_as_completions",
    "infill_body",
    "llamacpp_running",
    "lmstudio_entry",
    "lmstudio_load_body",
    "no_fim",
    "openai_entry",
]

#: What a probe can tell apart; ``mlx`` is only ever forced (it looks like a generic server).
KINDS = COMPAT_KINDS
ENGINE_LABELS = {kind: engine(kind).label for kind in KINDS}
START_HINTS = {kind: engine(kind).start_hint for kind in KINDS}

_MODEL_MISSING = re.compile(
    r"model\b.*\b(not found|does not exist|not exist|no such|not loaded|unknown)"
    r"|(unknown|invalid|no such) model",
    re.IGNORECASE | re.DOTALL,
)


def capabilities_for(kind: str, *, remote: bool = False) -> Capabilities:
    """What autotune may do with a server of this kind (as found by :meth:`probe`)."""
    if kind == "llamacpp":
        # Context, batch, flash attention and KV types are launch flags of whoever started it.
        caps = Capabilities(
            prefix_cache=True,
            reports_cached_tokens=True,
            tokenize=True,
            running_models=True,
            embeddings=False,  # only with `--embeddings`, which a chat server is rarely given
        )
    elif kind == "lmstudio":
        caps = Capabilities(
            load_control=True,  # POST /api/v1/models/load {model, context_length, …}
            flash_attention=True,
            prefix_cache=True,
            embeddings=True,
            running_models=True,
            keep_alive=True,  # per-request `ttl` seconds
            unload=True,
        )
    elif kind in ("vllm", "sglang"):
        # cached_tokens needs vLLM --enable-prompt-tokens-details / SGLang --enable-cache-report.
        caps = Capabilities(
            prefix_cache=True, reports_cached_tokens=True, embeddings=True, running_models=True
        )
    elif kind == "mlx":
        # mlx_lm grows its KV cache with the prompt: no preallocated context to reload for.
        caps = Capabilities(
            context_change_reloads=False, prefix_cache=True, reports_cached_tokens=True
        )
    else:
        caps = Capabilities(prefix_cache=False, embeddings=True)
    return dataclasses.replace(caps, remote=True) if remote else caps


def engine_stats_from_chunk(data: Mapping[str, Any]) -> EngineStats | None:
    """:class:`EngineStats` from a final chunk's ``usage``, llama.cpp ``timings`` or LM Studio
    ``stats``; ``None`` when the chunk carries none of them."""
    usage = data.get("usage") or None
    timings = data.get("timings") or None
    lms = data.get("stats") or None  # LM Studio /api/v0 responses
    if not (isinstance(usage, Mapping) or isinstance(timings, Mapping) or isinstance(lms, Mapping)):
        return None
    stats = EngineStats()
    if isinstance(usage, Mapping):
        _add_usage(stats, usage)
    if isinstance(timings, Mapping):
        _add_llamacpp_timings(stats, timings)
    if isinstance(lms, Mapping):
        _add_lmstudio_stats(stats, lms)
    return stats


def _add_usage(stats: EngineStats, usage: Mapping[str, Any]) -> None:
    stats.prompt_tokens = usage.get("prompt_tokens")
    stats.completion_tokens = usage.get("completion_tokens")
    details = usage.get("prompt_tokens_details")
    if isinstance(details, Mapping):
        stats.cached_tokens = details.get("cached_tokens")
    stats.raw["usage"] = dict(usage)


def _add_llamacpp_timings(stats: EngineStats, timings: Mapping[str, Any]) -> None:
    """Counts the usage left out, and the prompt and decode times."""
    # llama.cpp: prompt_n counts only the tokens it computed; cache_n those reused from cache,
    # so usage.prompt_tokens = prompt_n + cache_n.
    prompt_n, cache_n = timings.get("prompt_n"), timings.get("cache_n")
    if stats.cached_tokens is None and cache_n is not None:
        stats.cached_tokens = cache_n
    if stats.prompt_tokens is None and prompt_n is not None:
        stats.prompt_tokens = prompt_n + (cache_n or 0)
    if stats.completion_tokens is None:
        stats.completion_tokens = timings.get("predicted_n")
    stats.prompt_ms = timings.get("prompt_ms")
    stats.decode_ms = timings.get("predicted_ms")
    stats.raw["timings"] = dict(timings)


def _add_lmstudio_stats(stats: EngineStats, lms: Mapping[str, Any]) -> None:
    """The times llama.cpp timings left out, from LM Studio's seconds."""
    ttft, gen = lms.get("time_to_first_token"), lms.get("generation_time")
    if stats.prompt_ms is None and isinstance(ttft, (int, float)):
        stats.prompt_ms = ttft * 1000.0  # seconds; includes a JIT load when there was one
    if stats.decode_ms is None and isinstance(gen, (int, float)):
        stats.decode_ms = gen * 1000.0
    stats.raw["stats"] = dict(lms)


def error_text(status: int, text: str) -> str:
    try:
        payload = json.loads(text)
    except ValueError:
        return text.strip()[:500] or f"HTTP {status}"
    if isinstance(payload, Mapping):
        error = payload.get("error")
        if isinstance(error, Mapping) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str) and error:
            return error
        for key in ("message", "detail"):
            if payload.get(key):
                return str(payload[key])
    return text.strip()[:500] or f"HTTP {status}"


#: llama-server answers 500 to some requests it cannot serve (seen: an image or audio part
#: for a text-only model, "image input is not supported"; a text part without text, "Failed
#: to parse messages"): they are the client's to fix, so autotune answers 400.
_LLAMACPP_REQUEST_FAULT = re.compile(
    r"input is not supported|Failed to parse messages|unsupported content", re.IGNORECASE
)


def engine_error(
    status: int, text: str, model: str | None, *, kind: str, engine: str
) -> BackendError:
    """The error an engine's HTTP error answer means: a model it lacks (404), a request it
    cannot serve (llama-server's 500s that are the client's to fix: 400), or its own."""
    message = error_text(status, text)
    # vLLM: 404 "The model `x` does not exist."; a bare 404 is more likely a wrong URL.
    if model and status in (400, 404) and _MODEL_MISSING.search(message):
        return ModelNotFound(model)
    if status == 500 and kind == "llamacpp" and _LLAMACPP_REQUEST_FAULT.search(message):
        status = 400  # the request asked for something this server cannot do
    return UpstreamError(status, message, engine)


def detect_kind(
    props: Any, lms_models: Any, metrics: str | None, model_info: Any
) -> tuple[str, dict[str, Any]]:
    """A server's kind from its answers (JSON bodies, or None) on the paths only one kind of
    server has, and what it said there (for diagnostics)."""
    # llama-server: GET /props has default_generation_settings and total_slots.
    if isinstance(props, Mapping) and (
        "default_generation_settings" in props or "total_slots" in props
    ):
        return "llamacpp", {"props": dict(props)}
    # LM Studio: GET /api/v0/models lists models with their `state` (loaded / not-loaded).
    if isinstance(lms_models, Mapping) and isinstance(lms_models.get("data"), list):
        return "lmstudio", {"models": lms_models["data"]}
    # vLLM, SGLang and llama.cpp name their Prometheus metrics "vllm:…", "sglang:…" …
    for prefix, kind in (("vllm:", "vllm"), ("sglang:", "sglang"), ("llamacpp:", "llamacpp")):
        if metrics and prefix in metrics:
            return kind, {}
    # SGLang without --enable-metrics still answers GET /get_model_info {model_path, …}.
    if isinstance(model_info, Mapping) and "model_path" in model_info:
        return "sglang", {"model_info": dict(model_info)}
    return "openai", {}  # mlx_lm.server and anything else: only /v1/* and /health


def chat_body(request: ChatRequest, *, ttl: bool) -> dict[str, Any]:
    """The streamed ``/v1/chat/completions`` body, usage asked for; ``ttl``: the server takes
    an idle time-to-live in seconds (LM Studio)."""
    body: dict[str, Any] = {"model": request.model, "messages": request.messages}
    body.update(request.params)
    body["stream"] = True
    options = body.get("stream_options")
    body["stream_options"] = {**(options if isinstance(options, Mapping) else {})}
    body["stream_options"]["include_usage"] = True
    keep = request.keep_alive
    if ttl and keep is not None and keep >= 0:
        # LM Studio's idle TTL is whole seconds; "forever" is simply no ttl.
        body["ttl"] = max(1, math.ceil(keep))
    return body


def completion_body(request: CompletionRequest) -> dict[str, Any]:
    """The streamed ``/v1/completions`` body, usage asked for."""
    body: dict[str, Any] = {"model": request.model, "prompt": request.prompt}
    body.update(request.params)
    if request.suffix is not None:
        body["suffix"] = request.suffix
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    return body


def event_data(kind: str, text: str, engine: str) -> dict[str, Any]:
    """One event's chunk; an unreadable event or an error event raises UpstreamError."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise UpstreamError(502, f"unreadable event: {text[:120]!r}", engine) from None
    if not isinstance(data, dict):
        raise UpstreamError(502, f"unexpected event: {text[:120]!r}", engine)
    if kind == "error" or ("error" in data and "choices" not in data):
        error = data.get("error", data)
        message = error.get("message") if isinstance(error, Mapping) else error
        raise UpstreamError(500, str(message), engine)
    return data


def lmstudio_load_body(model: str, settings: LoadSettings | None) -> dict[str, Any]:
    """LM Studio's ``/api/v1/models/load`` body: flat (its docs), not nested under config."""
    body: dict[str, Any] = {"model": model}
    if settings is not None:
        body["context_length"] = settings.n_ctx
        if settings.n_batch is not None:
            body["eval_batch_size"] = settings.n_batch
        if settings.flash_attn is not None:
            body["flash_attention"] = settings.flash_attn
    return body


def closing(data: Mapping[str, Any], final: dict[str, Any]) -> bool:
    """Whether a chunk closes the reply (stats or a finish reason); its stats go to ``final``."""
    closing = False
    for key in ("usage", "timings", "stats"):
        if data.get(key):
            final[key] = data[key]
            closing = True
    return closing or any(c.get("finish_reason") for c in data.get("choices") or ())


def final_stats(
    final: Mapping[str, Any], loaded: dict[str, Any] | bool | None
) -> EngineStats | None:
    """The stats of the closing chunks, with what the LM Studio load step did (when it ran)."""
    stats = engine_stats_from_chunk(final)
    if loaded is None:
        return stats
    stats = stats or EngineStats()
    stats.reloaded = loaded is not False
    if isinstance(loaded, dict):
        seconds = loaded.get("load_time_seconds")
        if isinstance(seconds, (int, float)):
            stats.load_ms = seconds * 1000.0
        stats.raw["load"] = loaded
    return stats


#: OpenAI completion fields under llama.cpp's native (/completion, /infill) names.
_NATIVE_NAMES = {"max_tokens": "n_predict", "logprobs": "n_probs"}


def infill_body(request: CompletionRequest) -> dict[str, Any]:
    """llama.cpp ``/infill``: prefix and suffix; the other options of ``/completion``."""
    body: dict[str, Any] = {
        "input_prefix": request.prompt,
        "input_suffix": request.suffix or "",
        "stream": True,
    }
    for key, value in request.params.items():
        body[_NATIVE_NAMES.get(key, key)] = value
    return body


def no_fim(model: str, detail: str) -> InvalidRequest:
    return InvalidRequest(
        f"{model} has no fill-in-the-middle tokens, so 'suffix' cannot be honoured "
        f"(the engine said: {detail.strip()}). Use a code model trained for infill "
        "(Qwen2.5-Coder, StarCoder2, CodeGemma …), or leave 'suffix' out.",
        param="suffix",
        code="fim_not_supported",
    )


async def infill_as_completions(
    events: AsyncIterator[tuple[str, str]], model: str
) -> AsyncIterator[tuple[str, str]]:
    """llama.cpp's native stream (``{"content", "stop", …}``) as ``text_completion`` chunks:
    the last one with ``usage`` and ``timings``, as its OpenAI-compatible routes send them."""
    created = int(time.time())
    async for kind, text in events:
        if not text or text == "[DONE]":
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            yield kind, text  # event_data reports it
            continue
        if not isinstance(data, dict) or "content" not in data:
            yield kind, text  # an error event: event_data raises it
            continue
        yield kind, json.dumps(_native_chunk(data, model, created))


def _native_chunk(data: Mapping[str, Any], model: str, created: int) -> dict[str, Any]:
    finish = None
    if data.get("stop"):
        finish = "length" if data.get("stop_type") == "limit" else "stop"
    choice: dict[str, Any] = {
        "index": 0,
        "text": data.get("content", ""),
        "logprobs": None,
        "finish_reason": finish,
    }
    probs = data.get("completion_probabilities")
    if probs:
        choice["logprobs"] = {"content": probs}
    chunk: dict[str, Any] = {
        "id": "cmpl-" + str(data.get("id_slot", 0)) + "-" + str(created),
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
    }
    if data.get("stop"):
        prompt, cached = data.get("tokens_evaluated"), data.get("tokens_cached")
        completion = data.get("tokens_predicted")
        if prompt is not None:
            chunk["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": completion or 0,
                "total_tokens": prompt + (completion or 0),
                "prompt_tokens_details": {"cached_tokens": cached or 0},
            }
        if data.get("timings"):
            chunk["timings"] = data["timings"]
    return chunk


def config_matches(config: Mapping[str, Any], settings: LoadSettings) -> bool:
    if config.get("context_length") != settings.n_ctx:
        return False
    if settings.n_batch is not None and config.get("eval_batch_size") != settings.n_batch:
        return False
    return settings.flash_attn is None or config.get("flash_attention") == settings.flash_attn


def lmstudio_entry(m: Mapping[str, Any], backend: str) -> ModelEntry:
    """One model of LM Studio's ``/api/v0/models``."""
    name = str(m.get("id", ""))
    meta = ModelMeta(
        name=name,
        architecture=m.get("arch"),
        context_length=m.get("max_context_length"),
        quantization=m.get("quantization"),
    )
    return ModelEntry(
        name=name,
        backend=backend,
        quantization=m.get("quantization"),
        family=m.get("arch"),
        meta=meta,
    )


def openai_entry(m: Mapping[str, Any], backend: str) -> ModelEntry:
    """One model of ``/v1/models`` (llama.cpp adds ``meta`` {n_ctx_train, n_params, n_embd,
    n_vocab, size}; vLLM ``max_model_len``)."""
    name = str(m.get("id", ""))
    meta_field = m.get("meta")
    extra: Mapping[str, Any] = meta_field if isinstance(meta_field, Mapping) else {}
    meta = ModelMeta(
        name=name,
        context_length=extra.get("n_ctx_train") or m.get("max_model_len"),
        parameter_count=extra.get("n_params"),
        embedding_length=extra.get("n_embd"),
        vocab_size=extra.get("n_vocab"),
        size_bytes=extra.get("size"),
    )
    return ModelEntry(name=name, backend=backend, size_bytes=extra.get("size"), meta=meta)


def llamacpp_running(props: Mapping[str, Any], models: list[Any], backend: str) -> RunningModel:
    """The model a llama-server holds, from its ``/props`` and ``/v1/models``."""
    path = str(props.get("model_path") or "")
    name = models[0].get("id") if models else os.path.basename(path)
    settings = props.get("default_generation_settings") or {}
    return RunningModel(
        name=str(name),
        backend=backend,
        # llama-server reports the context of one slot (n_ctx / parallel slots).
        context_length=settings.get("n_ctx"),
        settings={"n_parallel": props.get("total_slots"), "model_path": path},
    )
