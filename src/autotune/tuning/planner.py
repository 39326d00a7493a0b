"""The planner: a pure function from (profile, engine capabilities, model, memory) to a Plan.

It obeys the engine facts in BACKENDS.md, not the folklore:

* A context size (and batch) is a load-time setting: on Ollama a changed ``num_ctx`` reloads
  the model, on llama.cpp it is fixed at launch. So the context is *sticky* per (engine,
  model): chosen from coarse buckets, sized to the first request's need, grown to the next
  bucket only when a request would not fit, and never shrunk while the model is loaded.
* Flash attention and KV cache type are load-time settings too, and on Ollama they are
  server environment variables: they are applied where autotune performs the load and only
  *advised* (``env_advice``) where it does not. They are never sent as request options.
* Memory pressure and the no-swap guard shape the *next* load; a loaded model is left alone.
* Speculative decoding is a load-time setting on llama.cpp too: the mode ``autotune tune``
  measured best is applied where autotune performs the load (never a reload for it); a model
  never measured keeps the engine's default (none). A draft model is dropped before the
  context is shrunk or the request refused for memory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from autotune.ground.decision import Decision
from autotune.ground.profiles import Profile
from autotune.ground.tuned import TunedSettings
from autotune.ground.types import Capabilities, LoadSettings, ModelMeta
from autotune.ground.units import format_bytes
from autotune.hardware.pressure import Tier, pressure_tier

__all__ = [
    "CONTEXT_BUCKETS",
    "MIN_CONTEXT",
    "MemoryState",
    "Plan",
    "PlanInput",
    "bucket_for",
    "context_need",
    "plan",
]

CONTEXT_BUCKETS = (2048, 4096, 8192, 16384, 32768, 65536, 131072, 262144)
MIN_CONTEXT = 512
#: Tokens kept free beyond prompt + output, for the chat template and tokenizer drift.
CONTEXT_MARGIN = 256
#: Output reserved when the client sets no max_tokens.
DEFAULT_OUTPUT_RESERVE = 1024

#: Pressure tier → (context factor, force q8_0 KV, smaller batch) for the next load.
_PRESSURE_RULES: dict[Tier, tuple[float, bool, bool]] = {
    Tier.NORMAL: (1.0, False, False),
    Tier.ELEVATED: (0.90, False, False),
    Tier.HIGH: (0.75, True, False),
    Tier.CRITICAL: (0.50, True, True),
}
_SMALL_BATCH = (512, 256)  # n_batch, n_ubatch at critical pressure: a smaller compute buffer


@dataclass(frozen=True)
class MemoryState:
    """Live memory facts for the guard: bytes free for a new load, and the used fraction."""

    available: int
    used_fraction: float
    #: The most this model may hold under the memory budget: the budget less what other
    #: loaded models hold (None: no budget set).
    cap: int | None = None


@dataclass(frozen=True)
class PlanInput:
    """Everything the planner looks at; no I/O happens inside :func:`plan`."""

    profile: Profile
    capabilities: Capabilities
    meta: ModelMeta | None
    #: Tokens this request needs: prompt + output reserve + margin (see :func:`context_need`).
    need_tokens: int
    #: Tokens that must fit whatever the profile says: the system prompt and the newest turn,
    #: verbatim, plus a minimal reply. May take the context past the profile's cap.
    min_tokens: int = 0
    #: The sticky settings for this (engine, model), or None on the first plan.
    current: LoadSettings | None = None
    #: The model is resident with ``current`` right now.
    loaded: bool = False
    memory: MemoryState | None = None
    #: The OpenAI fields the client sent (only unset ones get profile defaults).
    client_params: Mapping[str, Any] = field(default_factory=dict)
    keep_alive: float | None = -1
    threads: int | None = None
    #: Requests the admission lets run at once: one slot each, where the engine has slots.
    concurrency: int = 1
    tuned: TunedSettings | None = None
    #: Bytes a load with these settings needs (weights + KV + compute + overhead).
    estimator: Callable[[ModelMeta, LoadSettings], int] | None = None


@dataclass
class Plan:
    """What to send or apply for one request, with a reason for each choice."""

    profile: str
    load: LoadSettings | None
    params: dict[str, Any]
    keep_alive: float | None
    nice: int
    env_advice: dict[str, str]
    decisions: list[Decision]
    reload_expected: bool
    #: Tokens the conversation may use (prompt + output) with this plan, when known.
    context_limit: int | None
    #: Set when the request cannot run without swapping: what was needed and what would fit.
    refused: str | None = None

    def summary(self) -> str:
        """A one-line header value: what is applied, e.g. ``profile=balanced; ctx=4096; kv=f16``."""
        parts = [f"profile={self.profile}", *self._load_parts(), *self._spec_parts()]
        if "temperature" in self.params:
            parts.append(f"temperature={self.params['temperature']:g}")
        if self.keep_alive is not None:
            parts.append(
                "keep_alive=" + ("forever" if self.keep_alive < 0 else f"{self.keep_alive:g}s")
            )
        parts += [f"advise {k}={v}" for k, v in sorted(self.env_advice.items())]
        parts += self._decision_parts()
        if self.reload_expected:
            parts.append("reload=yes")
        if self.refused:
            parts.append("refused")
        return "; ".join(parts)

    def last(self, key: str) -> Decision | None:
        """The last decision made about ``key`` (a later one overrides an earlier one)."""
        return next((d for d in reversed(self.decisions) if d.key == key), None)

    def _load_parts(self) -> list[str]:
        load = self.load
        if load is None:
            return []
        parts = [f"ctx={load.n_ctx}"]
        if load.cache_type_k:
            parts.append(f"kv={load.cache_type_k}")
        if load.flash_attn is not None:
            parts.append(f"flash_attn={'on' if load.flash_attn else 'off'}")
        if load.n_batch:
            parts.append(f"batch={load.n_batch}/{load.n_ubatch}")
        return parts

    def _spec_parts(self) -> list[str]:
        """``spec=<mode>`` when the load speculates; ``spec=none`` when it was measured not to
        pay (or dropped); nothing for a model never measured."""
        if self.load is not None and self.load.speculative:
            return [f"spec={self.load.speculative}"]
        spec = self.last("spec")
        return [f"spec={spec.value}"] if spec is not None else []

    def _decision_parts(self) -> list[str]:
        parts = []
        kv = self.last("kv")
        if kv is not None and kv.reason.startswith("kept: "):
            # A profile switch on a loaded model: its KV type applies at the next load.
            parts.append("kv_next=" + kv.reason.split(" wants ", 1)[1].split(",", 1)[0])
        for key in self.header_keys:
            decision = self.last(key)
            if decision is not None:
                parts.append(f"{key}={decision.value}")
        ctx = self.last("ctx")
        if ctx is not None and ":" in ctx.reason:
            parts.append(f"ctx_rule={ctx.reason.split(':', 1)[0]}")
        return parts

    #: Decisions made after planning (context fit, KV cache, overflow) shown by key.
    header_keys: ClassVar[tuple[str, ...]] = (
        "context",
        "overflow",
        "kv_cache",
        "kv_reused",
        "runaway",
        "priority",
        "max_tokens",
        "system",
        "tools",
        "accepted",
    )


def bucket_for(tokens: int, cap: int) -> int:
    """The smallest context bucket holding ``tokens``, capped at ``cap`` (at least 512 tokens,
    unless the cap itself is smaller)."""
    floor = min(MIN_CONTEXT, cap)  # a model trained on fewer than 512 tokens gets its own
    for size in CONTEXT_BUCKETS:
        if size >= tokens:
            return max(floor, min(size, cap))
    return max(floor, cap)


def context_need(prompt_tokens: int, max_tokens: int | None) -> int:
    """Prompt + output (the client's max_tokens, or a default reserve) + a small margin."""
    output = max_tokens if max_tokens and max_tokens > 0 else DEFAULT_OUTPUT_RESERVE
    return prompt_tokens + output + CONTEXT_MARGIN


def _round_down(n: float, step: int = 256) -> int:
    return int(n) // step * step


def _round_up(n: float, step: int = 256) -> int:
    return -(-int(n) // step) * step


class _Draft:
    """The choices made so far while planning one request, each with its reason."""

    def __init__(self) -> None:
        self.decisions: list[Decision] = []
        self.env_advice: dict[str, str] = {}

    def __call__(self, key: str, value: Any, reason: str) -> None:
        self.decisions.append(Decision(key, value, reason))


@dataclass(frozen=True)
class _Context:
    """The context choice: its size, whether a load happens, and the cap it obeyed."""

    n_ctx: int
    will_load: bool
    cap: int


def plan(inp: PlanInput) -> Plan:
    """Decide load-time settings, sampling defaults, keep-alive and advice for one request."""
    draft = _Draft()
    params = _sampling(inp, draft)
    tier = pressure_tier(inp.memory.used_fraction) if inp.memory else Tier.NORMAL
    load: LoadSettings | None = None
    limit = inp.current.n_ctx if inp.current else None
    reload_expected, refused = False, None
    if inp.capabilities.load_control or inp.capabilities.per_request_context:
        ctx = _context(inp, draft)
        load, refused = _load(inp, ctx, tier, draft)
        reload_expected = (
            inp.current is not None
            and inp.loaded
            and load != inp.current
            and inp.capabilities.context_change_reloads
        )
        limit = load.n_ctx
    else:
        draft("ctx", "engine", "engine-managed: this engine grows its KV cache with the prompt")
        _advise_env(inp, _PRESSURE_RULES[tier][1], tier, draft.env_advice, draft)
    return Plan(
        profile=inp.profile.name,
        load=load,
        params=params,
        keep_alive=_keep_alive(inp, draft),
        nice=inp.profile.nice,
        env_advice=draft.env_advice,
        decisions=draft.decisions,
        reload_expected=reload_expected and refused is None,
        context_limit=limit,
        refused=refused,
    )


def _sampling(inp: PlanInput, decide: _Draft) -> dict[str, Any]:
    """Profile sampling defaults, filling only what the client left unset."""
    if "temperature" in inp.client_params:
        return {}
    decide("temperature", inp.profile.temperature, f"profile: {inp.profile.name} default")
    return {"temperature": inp.profile.temperature}


def _cap(inp: PlanInput) -> int:
    """The largest context this request may load: the profile's cap (within the trained
    length), raised to hold the newest message when it alone needs more."""
    meta = inp.meta
    trained = meta.context_length if meta and meta.context_length else None
    cap = min(inp.profile.context_cap, trained) if trained else inp.profile.context_cap
    if inp.min_tokens > cap:
        # The newest message is never cut: it may take the context past the profile's cap,
        # up to what the model was trained on (the memory guard still has its say).
        cap = max(cap, bucket_for(inp.min_tokens, trained or inp.min_tokens))
    return cap


def _context(inp: PlanInput, decide: _Draft) -> _Context:
    """Sticky buckets: sized to the first need, grown in big steps, never shrunk while loaded."""
    cap, current, need = _cap(inp), inp.current, inp.need_tokens
    if current is None:
        n_ctx = bucket_for(need, cap)
        why = "first load" if n_ctx >= need else "capped"
        decide("ctx", n_ctx, f"{why}: sized to this request's {need} tokens (profile cap {cap})")
        return _Context(n_ctx, True, cap)
    if need <= current.n_ctx:
        decide("ctx", current.n_ctx, f"sticky: {need} tokens fit; unchanged to avoid a reload")
        return _Context(current.n_ctx, not inp.loaded, cap)
    n_ctx = max(bucket_for(need, cap), current.n_ctx)  # never shrink
    if n_ctx > current.n_ctx:
        decide("ctx", n_ctx, f"grown: {need} tokens need more than {current.n_ctx}")
    else:
        decide("ctx", n_ctx, f"capped: {need} tokens exceed the {cap} cap")
    return _Context(n_ctx, n_ctx != current.n_ctx or not inp.loaded, cap)


def _load(
    inp: PlanInput, ctx: _Context, tier: Tier, decide: _Draft
) -> tuple[LoadSettings, str | None]:
    """Load-time settings: a loaded model keeps what it has; changes wait for the next load."""
    current = inp.current
    if current is not None and not ctx.will_load:
        wanted = inp.profile.kv_cache_type
        if inp.capabilities.kv_cache_type and (current.cache_type_k or "f16") != wanted:
            decide(
                "kv",
                current.cache_type_k or "f16",
                f"kept: profile {inp.profile.name} wants {wanted}, "
                "applied at the next load to avoid a reload",
            )
        _kept_speculation(inp, current, decide)
        return current, None
    factor, force_q8, small_batch = _PRESSURE_RULES[tier]
    n_ctx = _pressure_shrink(inp, ctx, factor, tier, decide)
    load = _load_settings(inp, n_ctx, force_q8, small_batch, tier, decide, decide.env_advice)
    refused = None
    if inp.estimator and inp.meta and inp.memory and not inp.capabilities.remote:
        load = _drop_draft_if_short(inp, load, decide)
        load, refused = _guard(inp, load, decide)
    if current is not None and inp.loaded and refused is None and load.n_ctx <= current.n_ctx:
        # Memory allows no more than what is loaded: keep it, a reload would gain nothing.
        decide("ctx", current.n_ctx, "kept: memory allows no larger context than the loaded one")
        return current, None
    return load, refused


def _pressure_shrink(
    inp: PlanInput, ctx: _Context, factor: float, tier: Tier, decide: _Draft
) -> int:
    """Under memory pressure the next load is smaller, but never below this request's need."""
    if factor >= 1.0:
        return ctx.n_ctx
    floor = max(_round_up(inp.need_tokens), _round_up(inp.min_tokens), min(MIN_CONTEXT, ctx.cap))
    shrunk = min(max(floor, _round_down(ctx.n_ctx * factor)), ctx.n_ctx)
    if shrunk < ctx.n_ctx:
        decide(
            "ctx",
            shrunk,
            f"pressure: RAM {tier.label}, next load {round((1 - factor) * 100)}% smaller",
        )
    return shrunk


def _keep_alive(inp: PlanInput, decide: _Draft) -> float | None:
    if not inp.capabilities.keep_alive:
        return None
    keep_alive = inp.keep_alive
    if keep_alive is not None:
        decide(
            "keep_alive",
            "forever" if keep_alive < 0 else f"{keep_alive:g}s",
            "setting: resident while active, no cold reloads",
        )
    return keep_alive


def _load_settings(
    inp: PlanInput,
    n_ctx: int,
    force_q8: bool,
    small_batch: bool,
    tier: Tier,
    decide: Callable[[str, Any, str], None],
    env_advice: dict[str, str],
) -> LoadSettings:
    settings = LoadSettings(n_ctx=n_ctx)
    if inp.capabilities.kv_cache_type:
        settings = _kv_type(inp, settings, force_q8, tier, decide)
    else:
        _advise_env(inp, force_q8, tier, env_advice, decide)
    if inp.capabilities.flash_attention:
        settings = _flash_attention(inp, settings, decide)
    if inp.capabilities.load_control:
        settings = _batch(inp, settings, small_batch, tier, decide)
        settings = _threads(inp, settings, decide)
    if inp.capabilities.slots and inp.concurrency > 1:
        # One slot per request that may run at once, so concurrent conversations keep their
        # own KV (llama.cpp splits its context across slots; the worker multiplies n_ctx).
        why = f"admission: {inp.concurrency} requests run at once, each on its own slot"
        decide("slots", inp.concurrency, why)
        settings = replace(settings, n_parallel=inp.concurrency)
    if inp.capabilities.speculative:
        settings = _speculation(inp, settings, tier, decide)
    return settings


def _kv_type(
    inp: PlanInput,
    settings: LoadSettings,
    force_q8: bool,
    tier: Tier,
    decide: Callable[[str, Any, str], None],
) -> LoadSettings:
    profile, tuned = inp.profile, inp.tuned
    if force_q8:
        kv = "q8_0"
    else:
        kv = tuned.cache_type if tuned and tuned.cache_type else profile.kv_cache_type
    pressured = force_q8 and kv != profile.kv_cache_type
    decide("kv", kv, f"pressure: RAM {tier.label}" if pressured else f"profile: {profile.name}")
    return replace(settings, cache_type_k=kv, cache_type_v=kv)


def _flash_attention(
    inp: PlanInput, settings: LoadSettings, decide: Callable[[str, Any, str], None]
) -> LoadSettings:
    tuned = inp.tuned
    if settings.cache_type_v not in (None, "f16", "f32", "bf16"):
        # llama.cpp: a quantized V cache requires flash attention.
        decide("flash_attn", "on", "required: a quantized V cache needs flash attention")
        return replace(settings, flash_attn=True)
    if tuned and tuned.flash_attn is not None:
        decide("flash_attn", "on" if tuned.flash_attn else "off", f"measured: {tuned.source}")
        return replace(settings, flash_attn=tuned.flash_attn)
    return settings


def _batch(
    inp: PlanInput,
    settings: LoadSettings,
    small_batch: bool,
    tier: Tier,
    decide: Callable[[str, Any, str], None],
) -> LoadSettings:
    tuned = inp.tuned
    if small_batch:
        n_batch, n_ubatch = _SMALL_BATCH
        decide(
            "batch", f"{n_batch}/{n_ubatch}", f"pressure: RAM {tier.label}, smaller compute buffer"
        )
        return replace(settings, n_batch=n_batch, n_ubatch=n_ubatch)
    if tuned and (tuned.n_batch or tuned.n_ubatch):
        decide("batch", f"{tuned.n_batch}/{tuned.n_ubatch}", f"measured: {tuned.source}")
        return replace(settings, n_batch=tuned.n_batch, n_ubatch=tuned.n_ubatch)
    return settings


def _threads(
    inp: PlanInput, settings: LoadSettings, decide: Callable[[str, Any, str], None]
) -> LoadSettings:
    tuned = inp.tuned
    measured = bool(tuned and tuned.n_threads)
    threads = tuned.n_threads if tuned and tuned.n_threads else inp.threads
    if not threads:
        return settings
    decide(
        "threads", threads, "measured: autotune tune" if measured else "hardware: physical cores"
    )
    return replace(settings, n_threads=threads)


def _speculation(
    inp: PlanInput, settings: LoadSettings, tier: Tier, decide: Callable[[str, Any, str], None]
) -> LoadSettings:
    """The speculative mode ``autotune tune`` measured best; unmeasured models keep none."""
    tuned = inp.tuned
    if tuned is None or tuned.speculative is None:
        return settings  # never measured: the engine's default, as before
    gains = _spec_gains(tuned)
    if tuned.speculative == "none":
        decide("spec", "none", f"measured: does not pay here ({gains}); {tuned.source}")
        return settings
    if tuned.speculative == "draft" and tier in (Tier.HIGH, Tier.CRITICAL):
        decide("spec", "none", f"pressure: RAM {tier.label}, no room for a draft model")
        return settings
    decide("spec", tuned.speculative, f"measured: {gains}; {tuned.source}")
    draft = tuned.draft_path if tuned.speculative == "draft" else None
    return replace(settings, speculative=tuned.speculative, draft_path=draft)


def _spec_gains(tuned: TunedSettings) -> str:
    def pct(gain: float | None) -> str:
        return "unmeasured" if gain is None else f"{gain:+.0%}"

    return f"edits/quotes decode {pct(tuned.spec_copy_gain)}, chat {pct(tuned.spec_chat_gain)}"


def _kept_speculation(
    inp: PlanInput, current: LoadSettings, decide: Callable[[str, Any, str], None]
) -> None:
    """A loaded model keeps its speculative mode; a newly measured one waits for the next load."""
    tuned = inp.tuned
    if not inp.capabilities.speculative or tuned is None or tuned.speculative is None:
        return
    wanted = None if tuned.speculative == "none" else tuned.speculative
    if wanted != current.speculative:
        decide(
            "spec",
            current.speculative or "none",
            f"kept: measured {tuned.speculative}, applied at the next load to avoid a reload",
        )


def _drop_draft_if_short(
    inp: PlanInput, load: LoadSettings, decide: Callable[[str, Any, str], None]
) -> LoadSettings:
    """Speed is worth less than context: a draft model that does not fit beside this context
    is left out before the guard would shrink the context or refuse."""
    assert inp.estimator and inp.meta
    if not load.draft_path or inp.estimator(inp.meta, load) <= _available(inp):
        return load
    decide("spec", "none", "no-swap: the draft model does not fit beside this context")
    return replace(load, speculative=None, draft_path=None)


def _advise_env(
    inp: PlanInput,
    force_q8: bool,
    tier: Tier,
    env_advice: dict[str, str],
    decide: Callable[[str, Any, str], None],
) -> None:
    """Where KV type and flash attention are engine environment variables, say which to set."""
    if not inp.capabilities.env_load_settings:
        return
    kv = "q8_0" if force_q8 else inp.profile.kv_cache_type
    if kv != "f16":
        # Ollama: not request options (unknown `options` keys are ignored); global server env
        # vars, and a quantized KV cache needs flash attention.
        env_advice["OLLAMA_FLASH_ATTENTION"] = "1"
        env_advice["OLLAMA_KV_CACHE_TYPE"] = kv
        why = f"pressure: RAM {tier.label}" if force_q8 else f"profile: {inp.profile.name}"
        decide("kv", f"advise {kv}", f"{why}; set on the Ollama server, not per request")


def _guard(
    inp: PlanInput, load: LoadSettings, decide: Callable[[str, Any, str], None]
) -> tuple[LoadSettings, str | None]:
    """No-swap guard: shrink the context until weights + KV + overhead fit, or refuse."""
    assert inp.estimator and inp.meta and inp.memory
    available = _available(inp)
    needed = inp.estimator(inp.meta, load)
    if needed <= available:
        return load, None
    low, high, best = min(MIN_CONTEXT, load.n_ctx) // 256 or 1, load.n_ctx // 256, None
    while low <= high:  # largest multiple of 256 that fits
        mid = (low + high) // 2
        if inp.estimator(inp.meta, replace(load, n_ctx=mid * 256)) <= available:
            best, low = mid * 256, mid + 1
        else:
            high = mid - 1
    if best is None and load.n_parallel > 1:
        decide("slots", 1, f"no-swap: {load.n_parallel} slots do not fit; one slot")
        return _guard(inp, replace(load, n_parallel=1), decide)
    if best is None:
        smallest = inp.estimator(inp.meta, replace(load, n_ctx=MIN_CONTEXT))
        return load, (
            f"{inp.meta.name} needs about {format_bytes(smallest)} even at a {MIN_CONTEXT}-token "
            f"context, but only {format_bytes(available)} is available without swapping. "
            "Try a smaller quantisation or model, or free memory."
        )
    decide(
        "ctx",
        best,
        f"no-swap: {load.n_ctx} tokens need {format_bytes(needed)}, "
        f"{format_bytes(available)} available",
    )
    return replace(load, n_ctx=best), None


def _available(inp: PlanInput) -> int:
    """Bytes a new load may use: free memory (plus what a reload frees), within the budget."""
    assert inp.estimator and inp.meta and inp.memory
    available = inp.memory.available
    if inp.loaded and inp.current is not None:
        available += inp.estimator(inp.meta, inp.current)  # a reload frees the old instance
    if inp.memory.cap is not None:
        available = min(available, inp.memory.cap)
    return available
