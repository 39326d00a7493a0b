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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

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


@dataclass(frozen=True)
class PlanInput:
    """Everything the planner looks at; no I/O happens inside :func:`plan`."""

    profile: Profile
    capabilities: Capabilities
    meta: ModelMeta | None
    #: Tokens this request needs: prompt + output reserve + margin (see :func:`context_need`).
    need_tokens: int
    #: The sticky settings for this (engine, model), or None on the first plan.
    current: LoadSettings | None = None
    #: The model is resident with ``current`` right now.
    loaded: bool = False
    memory: MemoryState | None = None
    #: The OpenAI fields the client sent (only unset ones get profile defaults).
    client_params: Mapping[str, Any] = field(default_factory=dict)
    keep_alive: float | None = -1
    threads: int | None = None
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
        parts = [f"profile={self.profile}"]
        if self.load is not None:
            parts.append(f"ctx={self.load.n_ctx}")
            if self.load.cache_type_k:
                parts.append(f"kv={self.load.cache_type_k}")
            if self.load.flash_attn is not None:
                parts.append(f"flash_attn={'on' if self.load.flash_attn else 'off'}")
            if self.load.n_batch:
                parts.append(f"batch={self.load.n_batch}/{self.load.n_ubatch}")
        if "temperature" in self.params:
            parts.append(f"temperature={self.params['temperature']:g}")
        if self.keep_alive is not None:
            parts.append(
                "keep_alive=" + ("forever" if self.keep_alive < 0 else f"{self.keep_alive:g}s")
            )
        for key, value in sorted(self.env_advice.items()):
            parts.append(f"advise {key}={value}")
        tier = next((d for d in reversed(self.decisions) if d.key == "context"), None)
        if tier is not None:
            parts.append(f"context={tier.value}")
        ctx_reason = next(
            (d.reason.split(":", 1)[0] for d in reversed(self.decisions) if d.key == "ctx"), None
        )
        if ctx_reason:
            parts.append(f"ctx_rule={ctx_reason}")
        if self.reload_expected:
            parts.append("reload=yes")
        if self.refused:
            parts.append("refused")
        return "; ".join(parts)


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


def plan(inp: PlanInput) -> Plan:
    """Decide load-time settings, sampling defaults, keep-alive and advice for one request."""
    caps, profile, meta = inp.capabilities, inp.profile, inp.meta
    decisions: list[Decision] = []
    env_advice: dict[str, str] = {}
    params: dict[str, Any] = {}
    refused: str | None = None
    reload_expected = False

    def decide(key: str, value: Any, reason: str) -> None:
        decisions.append(Decision(key, value, reason))

    # -- sampling defaults: profile values fill only what the client left unset
    if "temperature" not in inp.client_params:
        params["temperature"] = profile.temperature
        decide("temperature", profile.temperature, f"profile: {profile.name} default")

    trained = meta.context_length if meta and meta.context_length else None
    cap = min(profile.context_cap, trained) if trained else profile.context_cap
    tier = pressure_tier(inp.memory.used_fraction) if inp.memory else Tier.NORMAL
    factor, force_q8, small_batch = _PRESSURE_RULES[tier]
    chooses_context = caps.load_control or caps.per_request_context
    load: LoadSettings | None = None
    context_limit: int | None = inp.current.n_ctx if inp.current else None

    if chooses_context:
        current = inp.current
        will_load = True
        if current is not None and inp.need_tokens <= current.n_ctx:
            n_ctx = current.n_ctx
            will_load = not inp.loaded
            decide(
                "ctx", n_ctx, f"sticky: {inp.need_tokens} tokens fit; unchanged to avoid a reload"
            )
        elif current is not None:
            n_ctx = max(bucket_for(inp.need_tokens, cap), current.n_ctx)  # never shrink
            if n_ctx > current.n_ctx:
                decide(
                    "ctx", n_ctx, f"grown: {inp.need_tokens} tokens need more than {current.n_ctx}"
                )
            else:
                decide("ctx", n_ctx, f"capped: {inp.need_tokens} tokens exceed the {cap} cap")
            will_load = n_ctx != current.n_ctx or not inp.loaded
        else:
            n_ctx = bucket_for(inp.need_tokens, cap)
            why = "first load" if n_ctx >= inp.need_tokens else "capped"
            decide(
                "ctx",
                n_ctx,
                f"{why}: sized to this request's {inp.need_tokens} tokens (profile cap {cap})",
            )
        if current is not None and inp.loaded and will_load and caps.context_change_reloads:
            reload_expected = True

        # Load-time settings: a loaded model keeps what it has; changes wait for the next load.
        if current is not None and not will_load:
            load = current
            if caps.kv_cache_type and (current.cache_type_k or "f16") != profile.kv_cache_type:
                decide(
                    "kv",
                    current.cache_type_k or "f16",
                    f"kept: profile {profile.name} wants {profile.kv_cache_type}, "
                    "applied at the next load to avoid a reload",
                )
        else:
            if factor < 1.0:
                shrunk = max(
                    _round_up(inp.need_tokens), _round_down(n_ctx * factor), min(MIN_CONTEXT, cap)
                )
                shrunk = min(shrunk, n_ctx)
                if shrunk < n_ctx:
                    decide(
                        "ctx",
                        shrunk,
                        f"pressure: RAM {tier.label}, next load "
                        f"{round((1 - factor) * 100)}% smaller",
                    )
                    n_ctx = shrunk
            load = _load_settings(inp, n_ctx, force_q8, small_batch, tier, decide, env_advice)
            if inp.estimator and meta and inp.memory and not caps.remote:
                load, refused = _guard(inp, load, decide)
        context_limit = load.n_ctx if load else context_limit
    else:
        decide("ctx", "engine", "engine-managed: this engine grows its KV cache with the prompt")
        _advise_env(inp, force_q8, tier, env_advice, decide)

    keep_alive = inp.keep_alive if caps.keep_alive else None
    if keep_alive is not None:
        decide(
            "keep_alive",
            "forever" if keep_alive < 0 else f"{keep_alive:g}s",
            "setting: resident while active, no cold reloads",
        )

    return Plan(
        profile=profile.name,
        load=load,
        params=params,
        keep_alive=keep_alive,
        nice=profile.nice,
        env_advice=env_advice,
        decisions=decisions,
        reload_expected=reload_expected and refused is None,
        context_limit=context_limit,
        refused=refused,
    )


def _load_settings(
    inp: PlanInput,
    n_ctx: int,
    force_q8: bool,
    small_batch: bool,
    tier: Tier,
    decide: Callable[[str, Any, str], None],
    env_advice: dict[str, str],
) -> LoadSettings:
    caps, profile, tuned = inp.capabilities, inp.profile, inp.tuned
    settings = LoadSettings(n_ctx=n_ctx)
    if caps.kv_cache_type:
        kv = (
            "q8_0"
            if force_q8
            else (tuned.cache_type if tuned and tuned.cache_type else profile.kv_cache_type)
        )
        why = (
            f"pressure: RAM {tier.label}"
            if force_q8 and kv != profile.kv_cache_type
            else f"profile: {profile.name}"
        )
        settings = replace(settings, cache_type_k=kv, cache_type_v=kv)
        decide("kv", kv, why)
    else:
        _advise_env(inp, force_q8, tier, env_advice, decide)
    if caps.flash_attention:
        quantized_v = settings.cache_type_v not in (None, "f16", "f32", "bf16")
        if quantized_v:
            settings = replace(settings, flash_attn=True)
            decide("flash_attn", "on", "required: a quantized V cache needs flash attention")
        elif tuned and tuned.flash_attn is not None:
            settings = replace(settings, flash_attn=tuned.flash_attn)
            decide("flash_attn", "on" if tuned.flash_attn else "off", f"measured: {tuned.source}")
    if caps.load_control:
        if small_batch:
            settings = replace(settings, n_batch=_SMALL_BATCH[0], n_ubatch=_SMALL_BATCH[1])
            decide(
                "batch",
                f"{_SMALL_BATCH[0]}/{_SMALL_BATCH[1]}",
                f"pressure: RAM {tier.label}, smaller compute buffer",
            )
        elif tuned and (tuned.n_batch or tuned.n_ubatch):
            settings = replace(settings, n_batch=tuned.n_batch, n_ubatch=tuned.n_ubatch)
            decide("batch", f"{tuned.n_batch}/{tuned.n_ubatch}", f"measured: {tuned.source}")
        threads = tuned.n_threads if tuned and tuned.n_threads else inp.threads
        if threads:
            settings = replace(settings, n_threads=threads)
            decide(
                "threads",
                threads,
                "measured: autotune tune"
                if tuned and tuned.n_threads
                else "hardware: physical cores",
            )
    return settings


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
    available = inp.memory.available
    if inp.loaded and inp.current is not None:
        available += inp.estimator(inp.meta, inp.current)  # a reload frees the old instance
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
