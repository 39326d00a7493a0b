"""Turns (request, snapshot) into the whole plan for one request, with no I/O.

The plan covers load-time settings and sampling defaults (:func:`autotune.tuning.planner.plan`),
the context fit (:class:`autotune.context.window.ContextWindow`) and the overflow policy:

* History may be compacted (facts, compression, a summary), rarely and in big steps.
* The newest turn — the user's message and the tool results it answers — is never
  compressed or cut. When it does not fit, the context grows through the sticky buckets,
  past the profile's cap if need be, within memory and the model's trained length.
* When even that cannot hold it: if its count was only an estimate and the engine can count
  exactly once the model is loaded, the answer is "count again" (:attr:`Decided.recount`);
  if the client opted in (``X-Autotune-Overflow: truncate-oldest``), the start of the
  message is cut and the plan says how much; otherwise a 400 ``context_length_exceeded``
  with the numbers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autotune.context.tokens import TokenTable
from autotune.context.window import CompactionState, ContextOverflow, ContextWindow, sacred_part
from autotune.ground.decision import Decision
from autotune.ground.errors import ContextLengthExceeded, InsufficientMemory, InvalidRequest
from autotune.ground.profiles import Profile
from autotune.models.estimate import load_estimate
from autotune.pipeline.gather import Snapshot
from autotune.pipeline.runaway import MIN_SPAN
from autotune.tuning.planner import (
    CONTEXT_MARGIN,
    DEFAULT_OUTPUT_RESERVE,
    Plan,
    PlanInput,
    context_need,
    plan,
)

__all__ = ["MIN_REPLY", "OVERFLOW_POLICIES", "RUNAWAY_WATCH", "Decided", "RequestFacts", "decide"]

#: Reply tokens that must fit beside the newest message (the rest of ``max_tokens`` is
#: welcome but not a reason to refuse: the engine stops at the context's end).
MIN_REPLY = 256
#: What to do when the newest message cannot fit: refuse (400), or cut its start.
OVERFLOW_POLICIES = ("refuse", "truncate-oldest")
#: An estimate can be this much above the engine's count (3 characters a token against
#: English's ~4.5, a token per byte of CJK): beyond it a recount cannot rescue the request.
_ESTIMATE_SLACK = 3.0
_CUT_MARK = "[… autotune cut {n} tokens from the start of this message to fit the context …]\n"
#: What a background request (not streamed, no token limit) is told.
BACKGROUND = "not streamed, no token limit: waits behind people's turns and yields its place"
#: Why a reply without a token limit (or with only a ceiling: an agent's max_tokens) is watched
#: (pipeline/runaway.py does the watching).
RUNAWAY_WATCH = "no token limit: a reply that repeats one text over {chars:,} characters is stopped"


@dataclass(frozen=True)
class RequestFacts:
    """What the client asked for, validated."""

    profile: Profile
    messages: Sequence[dict[str, Any]]
    params: Mapping[str, Any] = field(default_factory=dict)
    overflow: str = "refuse"
    #: The least context the client asked for: the planner's need is at least this.
    min_context: int | None = None
    #: The client's keep-alive in seconds (None: the setting's).
    keep_alive: float | None = None
    #: Background work (not streamed, no token limit): admitted after people's turns.
    background: bool = False
    #: Characters of repetition that stop a reply with no token limit (0: never).
    runaway_chars: int = MIN_SPAN
    #: ``max_tokens`` above what the context allows is capped to it (the plan says so)
    #: rather than refused.
    cap_max_tokens: bool = False
    #: A reply with no limit, or only a ceiling, gets at most this many tokens
    #: (AUTOTUNE_MAX_REPLY_TOKENS; 0: no such cap).
    max_reply_tokens: int = 0


@dataclass(frozen=True)
class Decided:
    """The whole plan: what to load and send, and what to remember for the next turn."""

    plan: Plan
    messages: list[dict[str, Any]]
    compaction: CompactionState | None
    #: Counts were estimates that decided a refusal: load, count exactly, decide again.
    recount: bool = False
    #: Client parameters replaced for the engine (a ``max_tokens`` capped to the context).
    capped: dict[str, Any] = field(default_factory=dict)


def decide(req: RequestFacts, snap: Snapshot, window: ContextWindow | None) -> Decided:
    """The plan for ``req`` given ``snap``; raises the 4xx/503 a refusal is."""
    _choices(req.params, snap)
    max_tokens = _max_tokens(req.params, snap, req.cap_max_tokens)
    # A ceiling (an agent's 32,000) sizes the context no more than a request without a limit
    # would (a small one, as it is); then it is capped to what the context leaves (_cap).
    sizing = max_tokens
    if req.cap_max_tokens and max_tokens:
        sizing = min(max_tokens, DEFAULT_OUTPUT_RESERVE)
    counts = snap.counts
    tools = _tool_tokens(req.params, counts)
    sacred = counts.count(sacred_part(req.messages)) + tools
    the_plan = plan(
        PlanInput(
            profile=req.profile,
            capabilities=snap.capabilities,
            meta=snap.meta,
            need_tokens=max(
                context_need(_with_headroom(counts.count(req.messages), window) + tools, sizing),
                req.min_context or 0,
            ),
            min_tokens=sacred + min(_reserve(sizing), MIN_REPLY) + CONTEXT_MARGIN,
            current=snap.current,
            loaded=snap.loaded,
            memory=snap.memory,
            client_params=req.params,
            keep_alive=snap.keep_alive if req.keep_alive is None else req.keep_alive,
            threads=snap.threads,
            concurrency=snap.concurrency,
            tuned=snap.tuned,
            estimator=load_estimate if snap.meta and snap.meta.block_count else None,
        )
    )
    if the_plan.refused:
        raise InsufficientMemory(the_plan.refused)
    unlimited = max_tokens is None or max_tokens <= 0 or req.cap_max_tokens
    if unlimited and req.runaway_chars > 0:  # a ceiling (an agent's 32,000) is no real limit
        why = RUNAWAY_WATCH.format(chars=req.runaway_chars)
        the_plan.decisions.append(Decision("runaway", "watch", why))
    if req.background:
        the_plan.decisions.append(Decision("priority", "background", BACKGROUND))
    limit = the_plan.context_limit or snap.engine_context
    capped = _cap(req, snap, the_plan, limit, max_tokens)
    if capped:
        max_tokens = next(iter(capped.values()))
    if window is None or limit is None:
        return Decided(the_plan, list(req.messages), None, capped=capped)
    decided = _fit(req, snap, window, the_plan, limit, _reserve(max_tokens))
    decided.capped.update(capped)
    return decided


def _cap(
    req: RequestFacts, snap: Snapshot, the_plan: Plan, limit: int | None, max_tokens: int | None
) -> dict[str, Any]:
    """The limit the engine is sent in place of the client's, with the plan saying why: a
    ceiling above what the planned context leaves beside the prompt is capped to that (at
    least :data:`MIN_REPLY`); a ceiling, or no limit at all, to AUTOTUNE_MAX_REPLY_TOKENS
    when it is set. Empty when the client's own limit stands."""
    name = _max_tokens_name(req.params)
    ceiling = req.cap_max_tokens and bool(max_tokens)
    if not max_tokens and req.max_reply_tokens:  # no limit asked
        why = f"no limit asked; AUTOTUNE_MAX_REPLY_TOKENS={req.max_reply_tokens:,}"
        the_plan.decisions.append(Decision("max_tokens", req.max_reply_tokens, why))
        return {name: req.max_reply_tokens}
    if not ceiling or not limit:
        return {}
    asked = int(req.params[name])
    prompt = snap.counts.count(req.messages) + _tool_tokens(req.params, snap.counts)
    room = max(MIN_REPLY, limit - prompt - CONTEXT_MARGIN)
    why = f"{asked:,} asked; the {limit:,}-token context leaves {room:,} beside the prompt"
    if req.max_reply_tokens and req.max_reply_tokens < room:
        room = req.max_reply_tokens
        why += f"; AUTOTUNE_MAX_REPLY_TOKENS={room:,}"
    if asked <= room:
        return {}
    the_plan.decisions.append(Decision("max_tokens", room, why))
    return {name: room}


def _tool_tokens(params: Mapping[str, Any], counts: TokenTable) -> int:
    """The tool definitions, as the template puts them in the prompt (counted as their JSON:
    an agent's tools are thousands of tokens the context must hold beside the messages)."""
    tools = params.get("tools")
    return counts.text(json.dumps(tools, ensure_ascii=False)) if tools else 0


def _with_headroom(prompt_tokens: int, window: ContextWindow | None) -> int:
    """The prompt as the context must hold it: the window compacts a history past its
    high-water mark, so a context sized to the prompt alone would be grown (a reload) and
    compacted (a new prefix) in the same request — the engine's cache thrown away twice.
    Asking for the headroom too lets the next turns append until the next bucket."""
    if window is None:
        return prompt_tokens
    return math.ceil(prompt_tokens / window.high_water)


def _max_tokens_name(params: Mapping[str, Any]) -> str:
    return "max_completion_tokens" if params.get("max_completion_tokens") else "max_tokens"


def _max_tokens(params: Mapping[str, Any], snap: Snapshot, ceiling: bool = False) -> int | None:
    """The client's output limit, refused before any load when no context could hold it
    (a ``ceiling`` is held to the model's whole context instead, and capped after planning)."""
    name = _max_tokens_name(params)
    value = params.get(name)
    if not value:
        return None
    trained = snap.meta.context_length if snap.meta else None
    if trained and int(value) > trained and ceiling:
        return trained
    if trained and int(value) > trained:
        raise InvalidRequest(
            f"{name} {value} is more than {snap.model}'s whole context of {trained:,} tokens.",
            param=name,
        )
    return int(value)


def _choices(params: Mapping[str, Any], snap: Snapshot) -> None:
    """``n`` within what the engine answers at once, refused in autotune's own words."""
    n, limit = params.get("n") or 1, snap.capabilities.max_choices
    if limit is not None and int(n) > limit:
        raise InvalidRequest(
            f"n={n}: the {snap.engine} engine answers at most {limit} choice"
            f"{'s' if limit != 1 else ''} per request here; send {n} requests instead.",
            param="n",
        )


def _reserve(max_tokens: int | None) -> int:
    return max_tokens if max_tokens and max_tokens > 0 else DEFAULT_OUTPUT_RESERVE


def _fit(
    req: RequestFacts,
    snap: Snapshot,
    window: ContextWindow,
    the_plan: Plan,
    limit: int,
    reserve: int,
) -> Decided:
    """Fit the conversation into ``limit`` with the cache-stable window."""
    counts = snap.counts
    sacred = counts.count(sacred_part(req.messages))
    limit -= _tool_tokens(req.params, counts)  # the tools' part of the prompt is not cut
    budget = max(256, limit - reserve - CONTEXT_MARGIN)
    if sacred > budget:  # the newest message first; the reply may have less room
        budget = max(budget, limit - MIN_REPLY - CONTEXT_MARGIN)
    messages = list(req.messages)
    try:
        result = window.fit(messages, budget, counts.count, snap.compaction)
    except ContextOverflow as exc:
        return _overflow(req, snap, the_plan, limit, budget, exc.needed)
    if result.compacted and _could_recount(req.messages, snap):
        # A compaction throws the prompt cache away: never on an estimate the engine could
        # replace with its own count (estimates lean high; a resumed conversation is long).
        return Decided(the_plan, messages, None, recount=True)
    how = "compacted now" if result.compacted else "append-only"
    the_plan.decisions.append(
        Decision("context", result.tier, f"{how}: {result.tokens} of {budget} prompt tokens")
    )
    return Decided(the_plan, result.messages, result.state)


def _overflow(
    req: RequestFacts, snap: Snapshot, the_plan: Plan, limit: int, budget: int, needed: int
) -> Decided:
    """The newest message does not fit the largest context this request may have."""
    sacred = sacred_part(req.messages)
    estimated = not snap.counts.is_exact(sacred)
    could_fit = needed / _ESTIMATE_SLACK <= budget or req.overflow == "truncate-oldest"
    if could_fit and _could_recount(sacred, snap):
        return Decided(the_plan, list(req.messages), None, recount=True)  # exact counts first
    if req.overflow == "truncate-oldest":
        cut = _truncate_oldest(sacred, budget, snap.counts)
        if cut is not None:
            messages, n = cut
            the_plan.decisions.append(
                Decision("overflow", f"cut {n} tokens", "client asked: truncate-oldest")
            )
            return Decided(the_plan, messages, None)
    counted = "estimated: the tokenizer was not at hand" if estimated else "counted by the engine"
    raise ContextLengthExceeded(
        f"This request needs about {needed + MIN_REPLY + CONTEXT_MARGIN:,} tokens (the system "
        f"prompt and the newest message: {needed:,}, {counted}; the reply and template: "
        f"{MIN_REPLY + CONTEXT_MARGIN}), but at most {limit:,} fit here: {_why(snap, limit)}. "
        "Shorten the message, or send 'X-Autotune-Overflow: truncate-oldest' to have its "
        "start cut.",
        needed=needed + MIN_REPLY + CONTEXT_MARGIN,
        possible=limit,
    )


def _could_recount(messages: Sequence[dict[str, Any]], snap: Snapshot) -> bool:
    """The counts are estimates the engine can replace with its own once the model loads."""
    return snap.can_count and not snap.loaded and not snap.counts.is_exact(messages)


def _why(snap: Snapshot, limit: int) -> str:
    trained = snap.meta.context_length if snap.meta else None
    if trained and limit >= trained:
        return f"{snap.model} was trained on {trained:,} tokens"
    if snap.engine_context and limit == snap.engine_context:
        return f"the engine holds a {limit:,}-token context for {snap.model}"
    return "that is what memory allows without swapping"


def _truncate_oldest(
    sacred: list[dict[str, Any]], budget: int, counts: TokenTable
) -> tuple[list[dict[str, Any]], int] | None:
    """The system prompt and the newest turn with the start of its user message cut (at a
    word boundary) so the prompt fits ``budget``, and the tokens cut; None when even an empty
    message would not fit.

    The part kept is counted at the message's own tokens-per-character (exact when the engine
    counted it), with 2 % to spare: re-estimating a cut text would over-cut it."""
    at = max((i for i, m in enumerate(sacred) if m.get("role") == "user"), default=None)
    if at is None or not isinstance(sacred[at].get("content"), str) or not sacred[at]["content"]:
        return None
    text: str = sacred[at]["content"]
    total = counts.text(text)
    mark = _CUT_MARK.format(n=f"{total:,}")
    rest = counts.count([*sacred[:at], {**sacred[at], "content": mark}, *sacred[at + 1 :]])
    per_char = total / len(text) * 1.02
    keep = int((budget - rest) / per_char)
    if keep <= 0:
        return None
    cut = len(text) - keep
    while 0 < cut < len(text) and not text[cut - 1].isspace():
        cut += 1  # keep words whole
    removed = total - int((len(text) - cut) * total / len(text))
    content = _CUT_MARK.format(n=f"{removed:,}") + text[cut:]
    return [*sacred[:at], {**sacred[at], "content": content}, *sacred[at + 1 :]], removed
