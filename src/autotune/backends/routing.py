"""Which upstream serves a chat request, as pure functions of the request and the upstreams' states.

The order of the rules: an upstream must serve the model and be available; then the same
conversation goes back to the upstream that served it before, because that engine holds its
prompt prefix in cache (llama.cpp, Ollama, vLLM, SGLang and mlx_lm all reuse an identical token
prefix automatically, and only on the engine that computed it); otherwise the least busy
upstream wins, busy meaning autotune's own requests in flight there plus whatever the engine
reports queued or running for other clients, divided by the upstream's weight. Affinity yields
only when the pinned upstream is busier than the idlest one by more than a set margin.

Each upstream also has a limit on autotune's requests there at once, chosen by what the engine
is (:func:`upstream_limit`): vLLM and SGLang batch, so they hold many and queue the rest
themselves; llama-server runs one request per slot; Ollama runs ``OLLAMA_NUM_PARALLEL``. An
upstream at its limit is passed over; when every upstream of a model is, the request waits
in the router for room (:func:`choose_upstream` returns ``None`` and :func:`all_full` says so).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autotune.backends.metrics_adapters import EngineLoad

__all__ = [
    "BATCH_LIMIT",
    "Choice",
    "UpstreamView",
    "affinity_key",
    "all_full",
    "choose_upstream",
    "external_load",
    "model_name_on",
    "servers_of",
    "upstream_limit",
]

#: Requests sent at once to an engine that batches (vLLM, SGLang): vLLM's own default
#: ``max_num_seqs`` on most GPUs (128 on the CPU); beyond what it runs, it queues them itself.
BATCH_LIMIT = 256


@dataclass(frozen=True)
class UpstreamView:
    """What a routing decision may know about one upstream at one instant."""

    name: str
    #: Model names the upstream serves; ``None`` while not known (it then serves nothing).
    models: frozenset[str] | None
    weight: float = 1.0
    #: autotune's own requests sent there and not finished.
    in_flight: int = 0
    #: Requests the engine holds for other clients (see :func:`external_load`).
    external: float = 0.0
    #: Not marked down (a failure cools an upstream down until a probe finds it healthy).
    available: bool = True
    #: When this upstream was last chosen (a counter); the least recent wins a tie.
    last_pick: int = 0
    #: autotune's requests it may hold at once (see :func:`upstream_limit`).
    limit: int = BATCH_LIMIT

    @property
    def full(self) -> bool:
        return self.in_flight >= self.limit

    @property
    def load(self) -> float:
        return self.in_flight + self.external

    @property
    def score(self) -> float:
        # +1: an idle upstream with twice the weight is preferred, and takes twice the share.
        return (self.load + 1.0) / self.weight


@dataclass(frozen=True)
class Choice:
    """The upstream picked, the name that upstream knows the model by, and why."""

    upstream: str
    model: str
    reason: str


def model_name_on(models: Iterable[str] | None, model: str) -> str | None:
    """The name an upstream knows ``model`` by: exact, case-insensitive, or with ``:latest``
    (as Ollama does); ``None`` when it does not serve it."""
    if models is None:
        return None
    names = list(models)
    if model in names:
        return model
    wanted = {model.lower(), f"{model.lower()}:latest"}
    for name in names:
        if name.lower() in wanted:
            return name
    if model.lower().endswith(":latest"):
        bare = model.lower()[: -len(":latest")]
        for name in names:
            if name.lower() == bare:
                return name
    return None


def servers_of(model: str, views: Sequence[UpstreamView]) -> list[UpstreamView]:
    """Every upstream that serves ``model``, available or not."""
    return [v for v in views if model_name_on(v.models, model) is not None]


def external_load(load: EngineLoad, in_flight_at_scrape: int) -> float:
    """Requests the engine held for other clients when its load was read.

    The engine's own count (running + waiting) includes autotune's requests; subtracting the
    in-flight count at the moment of the reading leaves the others'. A stale reading is thus
    never counted twice against autotune's live in-flight count. Unknown figures count 0.
    """
    if not load.known:
        return 0.0
    engine_total = (load.running or 0.0) + (load.waiting or 0.0)
    return max(0.0, engine_total - in_flight_at_scrape)


def upstream_limit(
    kind: str,
    *,
    configured: int | None = None,
    slots: int | None = None,
    ollama_parallel: int | None = None,
) -> tuple[int, str]:
    """How many of autotune's requests an upstream holds at once, and why.

    ``configured`` is the router config's ``max_concurrent`` (it wins); ``slots`` what a
    llama-server says in ``/props`` (``total_slots``); ``ollama_parallel`` the
    ``OLLAMA_NUM_PARALLEL`` the Ollama host is known to run with.
    """
    if configured is not None:
        return configured, "max_concurrent in the router config"
    if kind in ("vllm", "sglang"):
        return BATCH_LIMIT, "batches; it queues what it cannot run yet"
    if kind == "llamacpp":
        if slots is not None and slots > 0:
            return slots, "its slots (/props total_slots)"
        return 1, "one until its slots are read from /props"
    if kind == "ollama":
        if ollama_parallel is not None and ollama_parallel > 0:
            return ollama_parallel, "OLLAMA_NUM_PARALLEL"
        return 1, "Ollama's default OLLAMA_NUM_PARALLEL (1)"
    return 1, "one at a time: the engine does not say how many it runs"


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return json.dumps(content, sort_keys=True, ensure_ascii=False, default=str)


def affinity_key(
    messages: Sequence[Mapping[str, Any]], conversation_id: str | None = None
) -> str | None:
    """What identifies a conversation across its turns: its id when the client gave one, else a
    hash of the system prompt and the first user message (both stay the same as the
    conversation grows); ``None`` when there is neither."""
    if conversation_id:
        return f"conv:{conversation_id}"
    system = next((m for m in messages if m.get("role") in ("system", "developer")), None)
    first_user = next((m for m in messages if m.get("role") == "user"), None)
    if system is None and first_user is None:
        return None
    digest = hashlib.sha256()
    for message in (system, first_user):
        digest.update(b"\x00" if message is None else _text_of(message.get("content")).encode())
        digest.update(b"\x1e")
    return "hash:" + digest.hexdigest()[:32]


def _least_busy(candidates: Sequence[UpstreamView]) -> UpstreamView:
    return min(candidates, key=lambda v: (v.score, v.load, v.last_pick, v.name))


def _candidates(
    model: str, views: Sequence[UpstreamView], exclude: Iterable[str]
) -> list[UpstreamView]:
    skip = set(exclude)
    return [
        v
        for v in views
        if v.available and v.name not in skip and model_name_on(v.models, model) is not None
    ]


def all_full(model: str, views: Sequence[UpstreamView], *, exclude: Iterable[str] = ()) -> bool:
    """True when some available upstream serves ``model`` and every such one is at its limit
    (the request should wait for room rather than fail)."""
    candidates = _candidates(model, views, exclude)
    return bool(candidates) and all(v.full for v in candidates)


def choose_upstream(
    model: str,
    views: Sequence[UpstreamView],
    *,
    pinned: str | None = None,
    exclude: Iterable[str] = (),
    max_imbalance: float = 4.0,
    limits: bool = True,
) -> Choice | None:
    """The upstream for one request, or ``None`` when no available upstream serves ``model``
    or (with ``limits``) every one that does is at its limit.

    ``pinned`` is where this conversation went last (its affinity); ``exclude`` holds
    upstreams already tried for this request. The pinned upstream keeps the conversation
    unless it is full or busier than the least busy candidate by more than ``max_imbalance``
    requests.
    """
    serving = _candidates(model, views, exclude)
    candidates = [v for v in serving if not (limits and v.full)]
    if not candidates:
        return None
    best = _least_busy(candidates)
    if pinned is not None:
        sticky = next((v for v in serving if v.name == pinned), None)
        if sticky is not None and sticky in candidates:
            if sticky.load - best.load <= max_imbalance:
                return Choice(sticky.name, _name(sticky, model), "affinity")
            return Choice(
                best.name,
                _name(best, model),
                f"affinity yielded: {sticky.name} had {sticky.load:g} requests, "
                f"{best.name} {best.load:g}",
            )
        if sticky is not None:
            return Choice(
                best.name,
                _name(best, model),
                f"affinity yielded: {sticky.name} was full ({sticky.in_flight} of {sticky.limit})",
            )
    return Choice(best.name, _name(best, model), "least busy")


def _name(view: UpstreamView, model: str) -> str:
    return model_name_on(view.models, model) or model
