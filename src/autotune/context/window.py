"""Fits a conversation into a token budget, compacting rarely so the engine's prompt cache holds.

Engines reuse the longest identical token prefix of the previous prompt, so a sliding window
("last N turns") makes every turn of a long conversation a full re-prefill. This window is
append-only between **compactions**:

- The prompt is ``system (+ block) + kept + history[folded:]``: the system prompt, a facts or
  summary block, ``kept`` (compressed copies of some recent turns, often empty) and then the
  history verbatim from message ``folded`` on. What the last compaction decided (``folded``,
  the block, ``kept``) is a :class:`CompactionState` the caller carries to the next call, so
  the next prompt is the previous one plus the new messages, byte for byte.
- Fill is measured on the effective budget: ``(prompt tokens - system tokens) /
  (budget - system tokens)``. Only when the append-only prompt would pass the **high-water
  mark** (0.85) does a compaction run; it re-folds the history from scratch (a pure function
  of the history) down to the **low-water mark** (0.5), and from then on only appends again.
- A compaction takes the mildest **tier** that reaches the low-water mark:
  ``recent+facts`` folds the oldest whole turns into a facts block and keeps the rest
  verbatim (at least ``min_recent_turns`` earlier turns); ``compressed`` keeps up to
  ``compressed_turns`` recent turns lightly compressed, chatter turns dropped, plus a compact
  summary; ``emergency`` keeps the newest turn (and ``emergency_turns`` heavily compressed
  turns if they fit) plus a one-line summary, aiming at the low-water mark but accepting
  anything within the budget. ``full`` means nothing is folded. Between compactions the
  reported tier is the last compaction's.
- Folds happen only at turn starts (a user message), so a tool call and its tool replies are
  never separated, and the kept turns start with a user message.

Rules:

- The system prompt (the leading ``system``/``developer`` messages) keeps its text verbatim:
  the block is appended to the last system message's content after a blank line, so chat
  templates that accept one system message only still work (``block_in_system=False`` sends
  it as a system message of its own instead; with no system prompt it is the first message).
- The newest turn (the last user message and whatever follows it: the tool calls and the
  tool results they answer) is always sent verbatim, never compressed or cut. If the
  system prompt and the newest turn do not fit the budget, :class:`ContextOverflow` says how
  many tokens they need; the caller then grows the context or refuses with those numbers.
- If the history does not start with the messages the state says were folded (its
  fingerprint differs: the conversation was edited, or it is another one), or the system
  prompt changed, the state is dropped and the fit starts afresh.
- ``compacted`` is True exactly when this call's prompt is not the append-only continuation
  of the carried state, i.e. when the cached prefix is lost.
"""

from __future__ import annotations

import bisect
import copy
import hashlib
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from autotune.context.classify import is_chatter, message_text, score_message
from autotune.context.compress import compress_message
from autotune.context.facts import FactCollector, Facts, one_line_summary, render_facts

__all__ = [
    "COMPRESSED",
    "EMERGENCY",
    "FULL",
    "RECENT",
    "TIERS",
    "CompactionState",
    "ContextOverflow",
    "ContextWindow",
    "FitResult",
    "fingerprint",
    "sacred_part",
]

FULL = "full"
RECENT = "recent+facts"
COMPRESSED = "compressed"
EMERGENCY = "emergency"
TIERS = (FULL, RECENT, COMPRESSED, EMERGENCY)

Message = dict[str, Any]
Count = Callable[[list[dict[str, Any]]], int]

_SYSTEM_ROLES = ("system", "developer")
_HASHED_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")
#: Messages shorter than this are never compressed: there is too little to gain.
_SHORT = 160


def fingerprint(messages: Sequence[Mapping[str, Any]]) -> str:
    """A stable hash of messages' role, content, name and tool fields (other keys ignored)."""
    h = hashlib.sha256()
    for m in messages:
        content = m.get("content")
        if isinstance(content, str) and not any(m.get(k) for k in _HASHED_KEYS[2:]):
            h.update(f"{m.get('role')}\x1f{content}".encode(errors="surrogatepass"))
        else:
            canon = {k: m[k] for k in _HASHED_KEYS if m.get(k) is not None}
            h.update(
                json.dumps(canon, sort_keys=True, ensure_ascii=False, default=str).encode(
                    errors="surrogatepass"
                )
            )
        h.update(b"\x00")
    return h.hexdigest()[:32]


class ContextOverflow(ValueError):
    """The system prompt and the newest turn, verbatim, do not fit the budget."""

    def __init__(self, needed: int, budget: int) -> None:
        self.needed = needed
        self.budget = budget
        super().__init__(
            f"the system prompt and the newest message need about {needed} tokens but the "
            f"context budget is {budget}: shorten the message or use a larger context"
        )


@dataclass(frozen=True)
class CompactionState:
    """What the last compaction decided; carry it to the next call of the same conversation."""

    #: Leading history messages (after the system prompt) replaced by ``block`` and ``kept``.
    folded: int
    #: :func:`fingerprint` of those ``folded`` messages, to detect an edited history.
    fingerprint: str
    #: The exact facts/summary text added to the system prompt ("" for none).
    block: str = ""
    #: The exact messages sent after the block in place of the folded ones (compressed turns).
    kept: tuple[dict[str, Any], ...] = field(default=(), hash=False)
    #: The tier of the compaction.
    tier: str = RECENT
    #: :func:`fingerprint` of the system prompt the block was made for.
    system: str = ""

    VERSION: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` gives an equal state back."""
        return {
            "version": self.VERSION,
            "folded": self.folded,
            "fingerprint": self.fingerprint,
            "block": self.block,
            "kept": [copy.deepcopy(m) for m in self.kept],
            "tier": self.tier,
            "system": self.system,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompactionState:
        """Rebuild a state from :meth:`to_dict` output; ValueError when it is not one."""
        if data.get("version") != cls.VERSION:
            raise ValueError(f"unknown compaction state version {data.get('version')!r}")
        folded, kept, tier = data.get("folded"), data.get("kept", []), data.get("tier")
        if not isinstance(folded, int) or isinstance(folded, bool) or folded < 0:
            raise ValueError("compaction state: 'folded' must be a non-negative integer")
        if not isinstance(kept, list) or not all(isinstance(m, dict) for m in kept):
            raise ValueError("compaction state: 'kept' must be a list of messages")
        if tier not in TIERS:
            raise ValueError(f"compaction state: unknown tier {tier!r}")
        for key in ("fingerprint", "block", "system"):
            if not isinstance(data.get(key, ""), str):
                raise ValueError(f"compaction state: {key!r} must be a string")
        return cls(
            folded=folded,
            fingerprint=str(data.get("fingerprint", "")),
            block=str(data.get("block", "")),
            kept=tuple(copy.deepcopy(m) for m in kept),
            tier=tier,
            system=str(data.get("system", "")),
        )


@dataclass(frozen=True)
class FitResult:
    """The messages to send and what to remember for the next call."""

    #: What to send: OpenAI-style messages.
    messages: list[dict[str, Any]]
    #: Carry to the next call for this conversation (None: nothing folded).
    state: CompactionState | None
    #: "full" | "recent+facts" | "compressed" | "emergency"
    tier: str
    #: True when this call changed the prompt prefix (a compaction happened).
    compacted: bool
    #: Counted tokens of ``messages``.
    tokens: int


@dataclass
class _Conv:
    system: list[Message]
    history: list[Message]
    #: Index in ``history`` where the newest turn starts.
    tail: int
    #: Turns before the newest one, as (start, end) history indices, oldest first.
    turns: list[tuple[int, int]]


def _split(messages: Sequence[Mapping[str, Any]]) -> _Conv:
    msgs = [dict(m) for m in messages]
    n_sys = 0
    while n_sys < len(msgs) and msgs[n_sys].get("role") in _SYSTEM_ROLES:
        n_sys += 1
    system, history = msgs[:n_sys], msgs[n_sys:]
    users = [i for i, m in enumerate(history) if m.get("role") == "user"]
    tail = users[-1] if users else _last_turn_start(history)
    split_pair = _inside_tool_pairs(history)
    cuts = sorted({0, *(i for i in users if i < tail and i not in split_pair)})
    bounds = [c for c in cuts if c < tail] + [tail]
    turns = [(a, b) for a, b in itertools.pairwise(bounds) if a < b]
    return _Conv(system, history, tail, turns)


def _last_turn_start(history: list[Message]) -> int:
    """With no user message: the last message that is not a tool reply."""
    tail = len(history) - 1
    while tail > 0 and history[tail].get("role") == "tool":
        tail -= 1
    return max(tail, 0)


def _inside_tool_pairs(history: list[Message]) -> set[int]:
    """Indices a fold must not start at: between a tool call and one of its replies."""
    owner: dict[str, int] = {}
    caller: int | None = None
    inside: set[int] = set()
    for j, m in enumerate(history):
        if m.get("tool_calls"):
            caller = j
            for call in m.get("tool_calls") or ():
                if isinstance(call, Mapping) and call.get("id"):
                    owner[str(call["id"])] = j
        elif m.get("role") == "tool":
            a = owner.get(str(m.get("tool_call_id")), caller)
            if a is not None and a < j:
                inside.update(range(a + 1, j + 1))
    return inside


def sacred_part(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The messages never compacted: the system prompt and the newest turn (the last user
    message and what follows it: tool calls and the tool results they answer)."""
    conv = _split(messages)
    return conv.system + conv.history[conv.tail :]


def _append_text(content: Any, block: str) -> Any:
    if isinstance(content, list):
        return [*content, {"type": "text", "text": "\n\n" + block}]
    if not content:
        return block
    return f"{content}\n\n{block}"


class _FactsUpTo:
    """Facts of growing prefixes of one history, collected in a single pass."""

    def __init__(self, history: list[Message]) -> None:
        self.history = history
        self.collector = FactCollector()
        self.pos = 0

    def __call__(self, end: int) -> Facts | None:
        if end <= 0:
            return None
        if end < self.pos:
            self.collector, self.pos = FactCollector(), 0
        for m in self.history[self.pos : end]:
            self.collector.add(m)
        self.pos = end
        return self.collector.facts()


@dataclass
class _Plan:
    messages: list[Message]
    state: CompactionState | None
    tokens: int


class ContextWindow:
    """Fits conversations into a token budget with rare, cache-friendly compactions."""

    def __init__(
        self,
        *,
        high_water: float = 0.85,
        low_water: float = 0.5,
        min_recent_turns: int = 2,
        compressed_turns: int = 3,
        emergency_turns: int = 1,
        facts_chars: int = 1600,
        summary_chars: int = 600,
        line_chars: int = 200,
        block_share: float = 0.2,
        block_in_system: bool = True,
    ) -> None:
        if not 0 < low_water < high_water <= 1:
            raise ValueError("water marks must satisfy 0 < low_water < high_water <= 1")
        if not 0 < block_share < 1:
            raise ValueError("block_share must be between 0 and 1")
        self.high_water = high_water
        self.low_water = low_water
        self.min_recent_turns = max(0, min_recent_turns)
        self.compressed_turns = max(1, compressed_turns)
        self.emergency_turns = max(0, emergency_turns)
        self.facts_chars = facts_chars
        self.summary_chars = summary_chars
        self.line_chars = line_chars
        self.block_share = block_share
        self.block_in_system = block_in_system

    # ------------------------------------------------------------------ public

    def fit(
        self,
        messages: list[dict[str, Any]],
        budget: int,
        count: Callable[[list[dict[str, Any]]], int],
        state: CompactionState | None = None,
    ) -> FitResult:
        """Messages to send within ``budget`` tokens (by ``count``), and the state to carry.

        Raises :class:`ContextOverflow` when the system prompt and the newest turn, verbatim,
        do not fit, and ValueError for a budget below one token.
        """
        if budget < 1:
            raise ValueError("budget must be at least one token")
        conv = _split(messages)
        sys_tokens = count(conv.system) if conv.system else 0
        if sys_tokens >= budget:
            raise ContextOverflow(sys_tokens, budget)
        effective = budget - sys_tokens
        high = sys_tokens + int(self.high_water * effective)
        low = sys_tokens + int(self.low_water * effective)
        sys_fp = fingerprint(conv.system)
        if state is not None and not self._matches(state, conv, sys_fp):
            state = None  # edited or different conversation: start afresh
        if state is None:
            out = self._render(conv.system, "", (), conv.history)
        else:
            out = self._render(conv.system, state.block, state.kept, conv.history[state.folded :])
        tokens = count(out)
        # BACKENDS.md: engines reuse the longest byte-identical prompt prefix, so below the
        # high-water mark the prompt only grows by the new messages.
        if tokens <= high:
            return FitResult(out, state, state.tier if state else FULL, False, tokens)
        plan = self._compact(conv, budget, low, sys_tokens, count)
        tier = plan.state.tier if plan.state else FULL
        return FitResult(plan.messages, plan.state, tier, plan.messages != out, plan.tokens)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _matches(state: CompactionState, conv: _Conv, sys_fp: str) -> bool:
        return (
            state.system == sys_fp
            and state.folded <= len(conv.history)
            and fingerprint(conv.history[: state.folded]) == state.fingerprint
        )

    def _render(
        self,
        system: list[Message],
        block: str,
        kept: Sequence[Mapping[str, Any]],
        rest: Sequence[Mapping[str, Any]],
    ) -> list[Message]:
        head = [dict(m) for m in system]
        if block:
            if self.block_in_system and head:
                head[-1]["content"] = _append_text(head[-1].get("content"), block)
            else:
                head.append({"role": "system", "content": block})
        return head + [copy.deepcopy(dict(m)) for m in kept] + [dict(m) for m in rest]

    def _plan(
        self,
        conv: _Conv,
        folded: int,
        block: str,
        kept: Sequence[Message],
        tier: str,
        out: list[Message],
        tokens: int,
    ) -> _Plan:
        if not folded and not block and not kept:
            return _Plan(out, None, tokens)
        state = CompactionState(
            folded=folded,
            fingerprint=fingerprint(conv.history[:folded]),
            block=block,
            kept=tuple(copy.deepcopy(m) for m in kept),
            tier=tier,
            system=fingerprint(conv.system),
        )
        return _Plan(out, state, tokens)

    @staticmethod
    def _fits(count: Count, messages: list[Message], limit: int) -> tuple[bool, int]:
        tokens = count(messages)
        return tokens <= limit, tokens

    def _block(self, facts: Facts | None, max_chars: int, cap: int, count: Count) -> str:
        """The facts block, shrunk until it costs at most ``cap`` tokens ("" for no facts)."""
        if facts is None:
            return ""
        chars = max_chars
        while chars >= 80:
            text = render_facts(facts, chars)
            if count([{"role": "system", "content": text}]) <= cap:
                return text
            chars = chars * 2 // 3
        return self._line(facts, cap, count)

    def _line(self, facts: Facts | None, cap: int, count: Count) -> str:
        """A one-line summary costing at most ``cap`` tokens, or ""."""
        if facts is None:
            return ""
        line = one_line_summary(facts, self.line_chars)
        return line if count([{"role": "system", "content": line}]) <= cap else ""

    @staticmethod
    def _shrink(message: Message, ratio: float, tool_cap: int) -> Message:
        """A compressed copy of ``message`` at ``ratio`` of its characters (tool output capped)."""
        size = len(message_text(message, with_tool_calls=False))
        if size <= _SHORT:
            return dict(message)
        target = max(int(size * ratio), _SHORT)  # keep at least about a sentence
        if message.get("role") == "tool":
            target = min(target, tool_cap)
        return compress_message(message, target)

    @staticmethod
    def _chatter_turn(history: list[Message], turn: tuple[int, int]) -> bool:
        msgs = history[turn[0] : turn[1]]
        if any(m.get("tool_calls") or m.get("role") == "tool" for m in msgs):
            return False
        users = [m for m in msgs if m.get("role") == "user"]
        return bool(users) and all(
            is_chatter(m) if m.get("role") == "user" else score_message(m) < 0.45 for m in msgs
        )

    # ------------------------------------------------------------------ compaction

    def _compact(self, conv: _Conv, budget: int, low: int, sys_tokens: int, count: Count) -> _Plan:
        """Re-fold the whole history with the mildest tier that reaches the low-water mark."""
        effective = budget - sys_tokens
        facts = _FactsUpTo(conv.history)
        # Chatter turns ("thanks!" / "you're welcome") are not recent context worth keeping.
        turns = [t for t in conv.turns if not self._chatter_turn(conv.history, t)]
        plan = self._recent_facts(conv, turns, low, sys_tokens, effective, count, facts)
        if plan is None:
            plan = self._compressed(conv, turns, low, effective, count, facts)
        if plan is None:
            plan = self._emergency(conv, turns, budget, low, effective, count, facts)
        return plan

    def _recent_facts(
        self,
        conv: _Conv,
        turns: list[tuple[int, int]],
        low: int,
        sys_tokens: int,
        effective: int,
        count: Count,
        facts: _FactsUpTo,
    ) -> _Plan | None:
        """Fold the fewest oldest turns into facts so the prompt lands at the low-water mark."""
        h, tail = conv.history, conv.tail
        costs = [count([m]) for m in h]
        suffix = [0] * (len(h) + 1)
        for i in range(len(h) - 1, -1, -1):
            suffix[i] = suffix[i + 1] + costs[i]
        starts = [a for a, _ in conv.turns] + [tail]
        recent = [a for a, _ in turns if h[a].get("role") == "user"]
        need = min(self.min_recent_turns, len(recent))
        cap = int(self.block_share * effective)
        block_cost = 0
        for cut in starts:
            if len(recent) - bisect.bisect_left(recent, cut) < need:
                break
            if sys_tokens + suffix[cut] + block_cost > low:
                continue
            block = self._block(facts(cut), self.facts_chars, cap, count)
            out = self._render(conv.system, block, (), h[cut:])
            ok, tokens = self._fits(count, out, low)
            if ok:
                return self._plan(conv, cut, block, (), RECENT, out, tokens)
            block_cost = max(block_cost, tokens - sys_tokens - suffix[cut])
        return None

    def _compressed(
        self,
        conv: _Conv,
        turns: list[tuple[int, int]],
        low: int,
        effective: int,
        count: Count,
        facts: _FactsUpTo,
    ) -> _Plan | None:
        """Keep a few recent turns lightly compressed (chatter dropped) plus a compact summary."""
        h, tail = conv.history, conv.tail
        cap = int(self.block_share / 2 * effective)
        for k in range(min(self.compressed_turns, len(turns)), 0, -1):
            chosen = turns[-k:]
            start = chosen[0][0]
            kept = [self._shrink(h[j], 0.5, 1500) for a, b in chosen for j in range(a, b)]
            block = self._block(facts(start), self.summary_chars, cap, count)
            out = self._render(conv.system, block, kept, h[tail:])
            ok, tokens = self._fits(count, out, low)
            if ok:
                return self._plan(conv, tail, block, kept, COMPRESSED, out, tokens)
        return None

    def _emergency(
        self,
        conv: _Conv,
        turns: list[tuple[int, int]],
        budget: int,
        low: int,
        effective: int,
        count: Count,
        facts: _FactsUpTo,
    ) -> _Plan:
        """The newest turn verbatim and a one-line summary (and one heavily compressed turn)."""
        h, tail = conv.history, conv.tail
        line = self._line(facts(tail), int(self.block_share / 4 * effective) or 1, count)
        for k in range(min(self.emergency_turns, len(turns)), 0, -1):
            kept = [self._shrink(h[j], 0.25, 600) for a, b in turns[-k:] for j in range(a, b)]
            out = self._render(conv.system, line, kept, h[tail:])
            ok, tokens = self._fits(count, out, low)
            if ok:
                return self._plan(conv, tail, line, kept, EMERGENCY, out, tokens)
        for block in dict.fromkeys((line, "")):
            out = self._render(conv.system, block, (), h[tail:])
            ok, tokens = self._fits(count, out, budget)
            if ok:
                tier = EMERGENCY if tail or block else FULL
                return self._plan(conv, tail, block, (), tier, out, tokens)
        # The newest turn (the user's message and the tool results it answers) is never cut:
        # when it does not fit, the caller grows the context or refuses with the numbers.
        raise ContextOverflow(count(self._render(conv.system, "", (), h[tail:])), budget)
