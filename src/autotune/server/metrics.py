"""Prometheus metrics for the server: requests, queue, TTFT, tokens, reloads, prompt-cache hits."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from autotune.ground.records import RunRecord
from autotune.pipeline.admission import AdmissionQueue

__all__ = ["Metrics"]

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """One registry per app (so several apps can live in one process, as in the tests)."""

    def __init__(self, queue: AdmissionQueue, memory_fraction: Callable[[], float]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "autotune_requests",
            "Chat requests by outcome.",
            ["model", "backend", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "autotune_ttft_seconds",
            "Time to first token after admission.",
            ["model"],
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "autotune_queue_wait_seconds",
            "Time spent waiting for a slot.",
            buckets=_TTFT_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "autotune_tokens",
            "Tokens by kind (prompt, cached, completion).",
            ["model", "kind"],
            registry=r,
        )
        self.reloads = Counter(
            "autotune_model_loads",
            "Requests that (re)loaded their model.",
            ["model", "backend"],
            registry=r,
        )
        self.cache_hits = Counter(
            "autotune_prompt_cache_hits",
            "Requests whose prompt was partly served from the engine's cache.",
            ["model"],
            registry=r,
        )
        rejected = Gauge(
            "autotune_rejected_requests",
            "Requests refused by admission (429) since start.",
            registry=r,
        )
        rejected.set_function(lambda: queue.rejected)
        queued = Gauge("autotune_queue_depth", "Requests waiting for a slot.", registry=r)
        queued.set_function(lambda: queue.queued)
        running = Gauge("autotune_requests_running", "Requests holding a slot.", registry=r)
        running.set_function(lambda: queue.running)
        memory = Gauge("autotune_memory_used_ratio", "RAM in use (0-1).", registry=r)
        memory.set_function(memory_fraction)

    def observe(self, record: RunRecord) -> None:
        self.requests.labels(record.model, record.backend, record.status).inc()
        if record.ttft_ms is not None:
            self.ttft.labels(record.model).observe(record.ttft_ms / 1000)
        if record.queue_ms is not None:
            self.queue_wait.observe(record.queue_ms / 1000)
        for kind, value in (
            ("prompt", record.prompt_tokens),
            ("cached", record.cached_tokens),
            ("completion", record.completion_tokens),
        ):
            if value:
                self.tokens.labels(record.model, kind).inc(value)
        if record.reloaded:
            self.reloads.labels(record.model, record.backend).inc()
        if record.cached_tokens:
            self.cache_hits.labels(record.model).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
