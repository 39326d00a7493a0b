"""Which upstream serves a chat request, as pure functions of the request and the upstreams' states.

The order of the rules: an upstream must serve the model and be available; then the same
conversation goes back to the upstream that served it before, because that engine holds its
prompt prefix in cache (llama.cpp, Ollama, vLLM, SGLang and mlx_lm all reuse an identical token
prefix automatically, and only on the engine that computed it); otherwise the least busy
upstream wins, busy meaning autotune's own requests in flight there plus whatever the engine
reports queued or running for other clients, divided by the upstream's weight. Affinity yields
only when the pinned upstream is busier than the idlest one by more than a set margin.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autotune.backends.metrics_adapters import EngineLoad

__all__ = [
    "Choice",
    "UpstreamView",
    "affinity_key",
    "choose_upstream",
    "external_load",
    "model_name_on",
    "servers_of",
]


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


def choose_upstream(
    model: str,
    views: Sequence[UpstreamView],
    *,
    pinned: str | None = None,
    exclude: Iterable[str] = (),
    max_imbalance: float = 4.0,
) -> Choice | None:
    """The upstream for one request, or ``None`` when no available upstream serves ``model``.

    ``pinned`` is where this conversation went last (its affinity); ``exclude`` holds
    upstreams already tried for this request. The pinned upstream keeps the conversation
    unless it is busier than the least busy candidate by more than ``max_imbalance`` requests.
    """
    skip = set(exclude)
    candidates = [
        v
        for v in views
        if v.available and v.name not in skip and model_name_on(v.models, model) is not None
    ]
    if not candidates:
        return None
    best = _least_busy(candidates)
    if pinned is not None:
        sticky = next((v for v in candidates if v.name == pinned), None)
        if sticky is not None:
            if sticky.load - best.load <= max_imbalance:
                return Choice(sticky.name, _name(sticky, model), "affinity")
            return Choice(
                best.name,
                _name(best, model),
                f"affinity yielded: {sticky.name} had {sticky.load:g} requests, "
                f"{best.name} {best.load:g}",
            )
    return Choice(best.name, _name(best, model), "least busy")


def _name(view: UpstreamView, model: str) -> str:
    return model_name_on(view.models, model) or model
