"""Turns what an engine says about its load (``/metrics``, ``/slots``, ``/api/ps``) into one
:class:`EngineLoad`, with pure parsers so every engine's format is tested from its documentation.

Which engine says what (see ``BACKENDS.md``):

- vLLM ``/metrics``: ``vllm:num_requests_waiting``, ``vllm:num_requests_running``,
  ``vllm:kv_cache_usage_perc`` (older releases: ``vllm:gpu_cache_usage_perc``),
  ``vllm:prefix_cache_hits`` / ``vllm:prefix_cache_queries`` counters (older:
  ``vllm:gpu_prefix_cache_hit_rate``).
- SGLang ``/metrics`` (only with ``--enable-metrics``): ``sglang:num_queue_reqs``,
  ``sglang:num_running_reqs``, ``sglang:token_usage``, ``sglang:cache_hit_rate``.
- llama.cpp ``/metrics`` (only with ``--metrics``): ``llamacpp:requests_deferred``,
  ``llamacpp:requests_processing``, ``llamacpp:prompt_tokens_total`` (computed) and
  ``llamacpp:prompt_tokens_cached_total``; older builds also ``llamacpp:kv_cache_usage_ratio``.
  Without ``--metrics``, ``/slots`` lists slots with ``is_processing``.
- Ollama ``/api/ps``: the loaded models, no queue figures.

Samples may carry labels (``model_name``, ``engine``, ``tp_rank``…): counts are summed over
label sets, fractions are not (a sum of two 0.6 usages is not 1.2 usage).

Counters (prefix-cache hits and lookups, generated tokens) count since the engine started, so
a ratio of two of them describes the engine's whole life, not now. They are kept as read, and
:func:`window_rates` turns a series of readings into rates over a recent window (as
Prometheus' ``increase()`` does, a counter that went down means the engine restarted).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "LOAD_PATHS",
    "EngineLoad",
    "Rates",
    "Samples",
    "load_paths",
    "parse_llamacpp_metrics",
    "parse_llamacpp_slots",
    "parse_load",
    "parse_ollama_ps",
    "parse_prometheus",
    "parse_sglang_metrics",
    "parse_vllm_metrics",
    "window_rates",
]

#: metric name → one (labels, value) pair per label set.
Samples = dict[str, list[tuple[dict[str, str], float]]]


@dataclass(frozen=True)
class EngineLoad:
    """One engine's load as last seen; ``None`` means the engine did not say (unknown)."""

    #: The engine answered (True), refused the connection (False), or was not asked (None).
    healthy: bool | None = None
    #: Requests queued inside the engine, not yet running.
    waiting: float | None = None
    #: Requests the engine is generating for now.
    running: float | None = None
    #: Fraction (0–1) of the KV cache in use.
    kv_usage: float | None = None
    #: Fraction (0–1) of prompt tokens served from the prefix cache, where the engine itself
    #: publishes it as a recent figure (SGLang, older vLLM); counters go to the fields below.
    prefix_hit_rate: float | None = None
    #: Counters since the engine started: prompt tokens found in the prefix cache, prompt
    #: tokens looked up there, tokens generated (rates come from :func:`window_rates`).
    prefix_hits: float | None = None
    prefix_queries: float | None = None
    generated_tokens: float | None = None
    #: Models resident in the engine (Ollama ``/api/ps``), when it says.
    loaded: tuple[str, ...] | None = None
    #: Where the figures came from (``/metrics``, ``/slots``, ``/api/ps``), or why there are none.
    source: str = ""

    @property
    def known(self) -> bool:
        """True when the engine reported any load figure at all."""
        return self.waiting is not None or self.running is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "waiting": self.waiting,
            "running": self.running,
            "kv_usage": self.kv_usage,
            "prefix_hit_rate": self.prefix_hit_rate,
            "prefix_hits": self.prefix_hits,
            "prefix_queries": self.prefix_queries,
            "generated_tokens": self.generated_tokens,
            "loaded": list(self.loaded) if self.loaded is not None else None,
            "source": self.source,
        }


# --------------------------------------------------------------------------- Prometheus text


def parse_prometheus(text: str, names: Collection[str] | None = None) -> Samples | None:
    """Samples from Prometheus text exposition; ``None`` when ``text`` holds no sample at all.

    Tolerant by design: each line goes through prometheus_client's parser on its own and a
    line it cannot read is skipped, so one odd line does not blind the router to an engine's
    whole load; a body that is not Prometheus text at all gives ``None``. Sample names stay as
    written (a counter keeps its ``_total``). With ``names``, only those metrics' lines are
    parsed: vLLM publishes hundreds of lines (histograms) of which the router reads six, and
    parsing all of them took ~0.1 s of the server's CPU per reading on this machine.
    """
    samples: Samples = {}
    seen = False
    for line in text.splitlines():
        name = _sample_name(line)
        if name is None:
            continue
        seen = True
        if names is not None and name not in names:
            continue
        for sample, labels, value in _line_samples(line):
            samples.setdefault(sample, []).append((labels, value))
    return samples if samples or (seen and names is not None) else None


_NAME = re.compile(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{|\s)")


def _sample_name(line: str) -> str | None:
    """The metric name a sample line starts with; None for comments and what is no sample."""
    if line.lstrip().startswith("#"):
        return None
    match = _NAME.match(line)
    return match.group(1) if match else None


def _line_samples(line: str) -> list[tuple[str, dict[str, str], float]]:
    line = line.strip()
    if not line or line.startswith("#"):
        return []
    try:
        return [
            (sample.name, dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(line)
            for sample in family.samples
        ]
    except ValueError:
        return []


def _first_values(samples: Samples, names: tuple[str, ...]) -> list[float]:
    """The finite values (one per label set) of the first of ``names`` that has any."""
    for name in names:
        values = [v for _, v in samples.get(name, []) if math.isfinite(v)]
        if values:
            return values
    return []


def _total(samples: Samples, *names: str) -> float | None:
    """Sum over label sets (counts: requests, tokens)."""
    values = _first_values(samples, names)
    return sum(values) if values else None


def _highest(samples: Samples, *names: str) -> float | None:
    """The largest value over label sets (a fraction: the fullest engine is the bottleneck)."""
    values = _first_values(samples, names)
    return max(values) if values else None


def _mean(samples: Samples, *names: str) -> float | None:
    values = _first_values(samples, names)
    return sum(values) / len(values) if values else None


def _fraction(value: float | None) -> float | None:
    return None if value is None else max(0.0, min(1.0, value))


# --------------------------------------------------------------------------- per engine


_VLLM_NAMES = frozenset(
    f"vllm:{name}"
    for name in (
        "num_requests_waiting",
        "num_requests_running",
        "kv_cache_usage_perc",
        "gpu_cache_usage_perc",
        "gpu_prefix_cache_hit_rate",
        "prefix_cache_hits_total",
        "prefix_cache_hits",
        "prefix_cache_queries_total",
        "prefix_cache_queries",
        "generation_tokens_total",
        "generation_tokens",
    )
)
_SGLANG_NAMES = frozenset(
    f"sglang:{name}"
    for name in (
        "num_queue_reqs",
        "num_running_reqs",
        "token_usage",
        "cache_hit_rate",
        "generation_tokens_total",
        "generation_tokens",
    )
)
_LLAMACPP_NAMES = frozenset(
    f"llamacpp:{name}"
    for name in (
        "prompt_tokens_total",
        "prompt_tokens_cached_total",
        "requests_deferred",
        "requests_processing",
        "kv_cache_usage_ratio",
        "tokens_predicted_total",
    )
)


def parse_vllm_metrics(text: str) -> EngineLoad:
    """vLLM ``/metrics`` (V1 and older V0 names)."""
    samples = parse_prometheus(text, _VLLM_NAMES)
    if samples is None:
        return EngineLoad(healthy=True, source="/metrics: unreadable")
    # prometheus_client exposes a counter "x" as "x_total"; accept both spellings.
    return EngineLoad(
        healthy=True,
        waiting=_total(samples, "vllm:num_requests_waiting"),
        running=_total(samples, "vllm:num_requests_running"),
        kv_usage=_fraction(
            _highest(samples, "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
        ),
        prefix_hit_rate=_fraction(_mean(samples, "vllm:gpu_prefix_cache_hit_rate")),  # V0
        prefix_hits=_total(samples, "vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits"),
        prefix_queries=_total(
            samples, "vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries"
        ),
        generated_tokens=_total(samples, "vllm:generation_tokens_total", "vllm:generation_tokens"),
        source="/metrics",
    )


def parse_sglang_metrics(text: str) -> EngineLoad:
    """SGLang ``/metrics`` (served with ``--enable-metrics``)."""
    samples = parse_prometheus(text, _SGLANG_NAMES)
    if samples is None:
        return EngineLoad(healthy=True, source="/metrics: unreadable")
    return EngineLoad(
        healthy=True,
        waiting=_total(samples, "sglang:num_queue_reqs"),
        running=_total(samples, "sglang:num_running_reqs"),
        kv_usage=_fraction(_highest(samples, "sglang:token_usage")),
        prefix_hit_rate=_fraction(_mean(samples, "sglang:cache_hit_rate")),
        generated_tokens=_total(
            samples, "sglang:generation_tokens_total", "sglang:generation_tokens"
        ),
        source="/metrics",
    )


def parse_llamacpp_metrics(text: str) -> EngineLoad:
    """llama-server ``/metrics`` (served with ``--metrics``; the embedded engine turns it on)."""
    samples = parse_prometheus(text, _LLAMACPP_NAMES)
    if samples is None:
        return EngineLoad(healthy=True, source="/metrics: unreadable")
    # prompt_tokens_total counts only computed tokens ("excluding cached tokens").
    computed = _total(samples, "llamacpp:prompt_tokens_total")
    cached = _total(samples, "llamacpp:prompt_tokens_cached_total")
    looked_up = computed + cached if computed is not None and cached is not None else None
    return EngineLoad(
        healthy=True,
        waiting=_total(samples, "llamacpp:requests_deferred"),
        running=_total(samples, "llamacpp:requests_processing"),
        kv_usage=_fraction(_highest(samples, "llamacpp:kv_cache_usage_ratio")),
        prefix_hits=cached if looked_up is not None else None,
        prefix_queries=looked_up,
        generated_tokens=_total(samples, "llamacpp:tokens_predicted_total"),
        source="/metrics",
    )


def parse_llamacpp_slots(payload: Any) -> EngineLoad:
    """llama-server ``/slots``: a list of slots, each with ``is_processing``."""
    if not isinstance(payload, list) or not all(isinstance(s, Mapping) for s in payload):
        return EngineLoad(healthy=True, source="/slots: unreadable")
    busy = sum(1 for s in payload if s.get("is_processing"))
    # /slots does not show queued requests; with every slot busy the queue is simply unknown.
    return EngineLoad(healthy=True, running=float(busy), source="/slots")


def parse_ollama_ps(payload: Any) -> EngineLoad:
    """Ollama ``/api/ps``: the resident models (Ollama publishes no queue figures)."""
    models = payload.get("models") if isinstance(payload, Mapping) else None
    if not isinstance(models, list):
        return EngineLoad(healthy=True, source="/api/ps: unreadable")
    names = tuple(
        str(m.get("model") or m.get("name"))
        for m in models
        if isinstance(m, Mapping) and (m.get("model") or m.get("name"))
    )
    return EngineLoad(healthy=True, loaded=names, source="/api/ps")


def _json(parse: Callable[[Any], EngineLoad], source: str) -> Callable[[str], EngineLoad]:
    def run(body: str) -> EngineLoad:
        try:
            payload = json.loads(body)
        except ValueError:
            return EngineLoad(healthy=True, source=f"{source}: unreadable")
        return parse(payload)

    return run


#: Where each kind of engine publishes its load, in the order to try; empty = health only.
LOAD_PATHS: dict[str, tuple[tuple[str, Callable[[str], EngineLoad]], ...]] = {
    "vllm": (("/metrics", parse_vllm_metrics),),
    "sglang": (("/metrics", parse_sglang_metrics),),
    "llamacpp": (
        ("/metrics", parse_llamacpp_metrics),
        ("/slots", _json(parse_llamacpp_slots, "/slots")),
    ),
    "ollama": (("/api/ps", _json(parse_ollama_ps, "/api/ps")),),
}


def load_paths(kind: str) -> tuple[str, ...]:
    """The paths to GET for ``kind``'s load, in order (LM Studio, mlx_lm, generic: none)."""
    return tuple(path for path, _ in LOAD_PATHS.get(kind, ()))


def parse_load(kind: str, path: str, status: int, body: str) -> EngineLoad:
    """The load an engine of ``kind`` reported at ``path``. An engine that answers at all is
    healthy; a body that cannot be read gives an unknown load (never an exception)."""
    if status != 200:
        # llama-server answers 501 when started without --metrics / with --no-slots.
        return EngineLoad(healthy=True, source=f"{path}: HTTP {status}")
    for known, parse in LOAD_PATHS.get(kind, ()):
        if known == path:
            try:
                return parse(body)
            except Exception:  # a parser must never take the router down with it
                return EngineLoad(healthy=True, source=f"{path}: unreadable")
    return EngineLoad(healthy=True, source=f"{path}: not a load path for {kind}")


# --------------------------------------------------------------------------- recent rates


@dataclass(frozen=True)
class Rates:
    """Rates over the readings of a recent window; ``None`` where nothing was counted."""

    #: Prompt tokens served from the prefix cache ÷ prompt tokens looked up, in the window.
    prefix_hit_rate: float | None = None
    #: Tokens generated per second over the window.
    tokens_per_second: float | None = None
    #: Seconds between the first and last reading the rates come from (0: one reading).
    seconds: float = 0.0


def _increase(values: list[float | None]) -> float | None:
    """How much a counter grew over ``values`` (oldest first); a drop is a restart from 0."""
    total, previous, seen = 0.0, None, False
    for value in values:
        if value is None:
            continue
        if previous is not None:
            total += value - previous if value >= previous else value
            seen = True
        previous = value
    return total if seen else None


def window_rates(readings: list[tuple[float, EngineLoad]], window: float) -> Rates:
    """Rates from ``(seconds, load)`` readings, oldest first, over the last ``window`` seconds
    before the newest one (from the latest reading at or before the window's start)."""
    if len(readings) < 2:
        return Rates()
    newest = readings[-1][0]
    start = 0
    for i, (at, _) in enumerate(readings):
        if at <= newest - window:
            start = i
    span = readings[start:]
    seconds = span[-1][0] - span[0][0]
    if seconds <= 0:
        return Rates()
    hits = _increase([load.prefix_hits for _, load in span])
    queries = _increase([load.prefix_queries for _, load in span])
    tokens = _increase([load.generated_tokens for _, load in span])
    hit_rate = None
    if hits is not None and queries is not None and queries > 0:
        hit_rate = max(0.0, min(1.0, hits / queries))
    return Rates(
        prefix_hit_rate=hit_rate,
        tokens_per_second=None if tokens is None else tokens / seconds,
        seconds=seconds,
    )
