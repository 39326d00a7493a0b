"""A small, cited catalog of open models people run locally, and the pure ``recommend`` ranking.

The numbers live in ``catalog.json`` beside this module, read on first use. Every number is
a :class:`Sourced` value (or a :class:`Benchmark`) naming where it comes from; ``verified``
says whether it was read in that source (or a verbatim copy of it) when the catalog was
compiled on :data:`LOOKED_UP`, as opposed to recalled from the published page. File sizes
not found in a published listing are computed from the parameter count and the
quantisation's bits per weight, and say so ("estimate: …"). An honest gap is ``None``: no
benchmark is made up to fill one.

``recommend`` is a pure function of plain numbers (a byte budget, a bandwidth and its
source); memory comes from the shared estimator (:mod:`autotune.models.estimate`) and the
verdicts from :mod:`autotune.models.fit`, so ``recommend`` and ``ls`` never disagree.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from typing import Any

from autotune.ground.types import ModelMeta
from autotune.models.estimate import estimate_memory

__all__ = [
    "DEFAULT_CONTEXT",
    "FIT_COMFORTABLE",
    "FIT_NO",
    "FIT_SWAP",
    "FIT_TIGHT",
    "LOOKED_UP",
    "QUALITY_BENCHMARK",
    "QUANT_BITS",
    "SPEED_EXPONENT",
    "SPEED_TARGET_TPS",
    "Benchmark",
    "CatalogModel",
    "Recommendation",
    "Sourced",
    "catalog",
    "catalog_meta",
    "file_size",
    "fit_class",
    "quality_score",
    "recommend",
    "speed_bound_tps",
]

#: The day the numbers below were looked up.
LOOKED_UP = "2026-11-25"

#: Tokens of context the memory estimate plans for (capped at the model's trained length).
DEFAULT_CONTEXT = 8192

#: The benchmark the quality score is read from: MMLU (57 subjects, 4-way multiple choice) is
#: the one published for the most catalog entries. Settings differ between publishers (base vs
#: instruct checkpoint, 5-shot vs CoT), so gaps of a few points are within that noise.
QUALITY_BENCHMARK = "MMLU"

#: Decoding speed (tokens/s) beyond which more speed adds nothing to the ranking: well above
#: reading speed, so on fast hardware the ranking is decided by quality alone.
SPEED_TARGET_TPS = 25.0

#: Ranking blend: score = quality × min(1, speed bound / SPEED_TARGET_TPS) ** SPEED_EXPONENT.
#: Multiplicative, so a model twice as good but four times slower scores the same, and on
#: hardware fast enough for every model the ranking is by quality alone.
SPEED_EXPONENT = 0.5

#: Heuristic, not a measurement: published scores are for 16-bit weights; Q4_K_M is scored a
#: little lower than Q8_0 so the larger quantisation wins once speed stops mattering.
QUANT_QUALITY_FACTOR = {"Q8_0": 1.0, "Q4_K_M": 0.98}

#: Bits per weight of each GGUF quantisation. Q8_0 stores 32 weights in 34 bytes (ggml's
#: block_q8_0: one f16 scale + 32 int8), i.e. 8.5 bits. Q4_K_M mixes Q4_K and Q6_K tensors;
#: 4.9 is its effective rate in bartowski's Qwen3 files (4B: 2.50 GB / 4.02 B params = 4.98;
#: 14B: 9.00 GB / 14.8 B = 4.87).
QUANT_BITS = {"Q4_K_M": 4.9, "Q8_0": 8.5}

FIT_COMFORTABLE = "fits comfortably"
FIT_TIGHT = "tight"
FIT_SWAP = "swap risk"
FIT_NO = "will not fit"
_FIT_ORDER = {FIT_COMFORTABLE: 0, FIT_TIGHT: 1, FIT_SWAP: 2, FIT_NO: 3}


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Sourced:
    """A number and where it comes from; ``verified`` = read in that source on LOOKED_UP."""

    value: float
    source: str
    verified: bool = True
    note: str = ""


@dataclass(frozen=True)
class Benchmark:
    """One published score (percent) with the checkpoint and setting it was measured on."""

    name: str
    score: float
    setting: str
    source: str
    verified: bool = True
    #: True when measured on this model or on the base checkpoint it was tuned from.
    quality_eligible: bool = True
    note: str = ""


@dataclass(frozen=True)
class CatalogModel:
    """One model as Ollama names it, with the numbers a memory and speed estimate needs."""

    name: str  # Ollama name, e.g. "qwen3:8b"
    family: str
    hf_id: str
    params_total: Sourced
    params_active: Sourced
    context_trained: Sourced
    layers: Sourced
    kv_heads: Sourced
    head_dim: Sourced
    sizes: dict[str, Sourced] = field(default_factory=dict)  # quant -> file bytes, as published
    benchmarks: tuple[Benchmark, ...] = ()
    #: Sliding-window attention: window length and "every Nth layer is global" (Gemma 3: 1024, 6).
    sliding_window: Sourced | None = None
    global_layer_every: Sourced | None = None
    ollama_tags: dict[str, str] = field(default_factory=dict)  # quant -> exact tag, where known
    notes: str = ""

    @property
    def is_moe(self) -> bool:
        return self.params_active.value < self.params_total.value


@dataclass(frozen=True)
class Recommendation:
    """One (model, quantisation) judged against a memory budget and a bandwidth."""

    name: str
    tag: str | None
    family: str
    quant: str
    params_total: float
    params_active: float
    context_tokens: int
    weights_bytes: int
    weights_source: str
    kv_bytes: int
    overhead_bytes: int
    memory_bytes: int
    budget_bytes: int
    fit: str
    quality: float | None  # 0–1, chance-corrected MMLU × quantisation factor
    quality_source: Benchmark | None
    tokens_per_s_max: float
    bandwidth_gbs: float
    bandwidth_source: str
    score: float | None
    rank: int = 0
    labels: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def fits(self) -> bool:
        return self.fit in (FIT_COMFORTABLE, FIT_TIGHT)

    @property
    def speed_text(self) -> str:
        """The decoding bound as text, e.g. ``"≤ 12 tok/s"``: an upper bound, never a promise."""
        tps = self.tokens_per_s_max
        return f"≤ {tps:.1f} tok/s" if tps < 10 else f"≤ {tps:.0f} tok/s"


# --------------------------------------------------------------------------- catalog data

_DATA = "catalog.json"


def _sourced(raw: dict[str, Any], sources: dict[str, str]) -> Sourced:
    source = str(raw["source"])
    return Sourced(
        value=float(raw["value"]),
        source=sources.get(source, source),
        verified=bool(raw.get("verified", True)),
        note=str(raw.get("note", "")),
    )


def _benchmark(raw: dict[str, Any], sources: dict[str, str]) -> Benchmark:
    source = str(raw["source"])
    return Benchmark(
        name=str(raw["name"]),
        score=float(raw["score"]),
        setting=str(raw["setting"]),
        source=sources.get(source, source),
        verified=bool(raw.get("verified", True)),
        quality_eligible=bool(raw.get("quality_eligible", True)),
        note=str(raw.get("note", "")),
    )


def _model(raw: dict[str, Any], sources: dict[str, str]) -> CatalogModel:
    def num(key: str) -> Sourced:
        return _sourced(raw[key], sources)

    window = raw.get("sliding_window")
    every = raw.get("global_layer_every")
    return CatalogModel(
        name=str(raw["name"]),
        family=str(raw["family"]),
        hf_id=str(raw["hf_id"]),
        params_total=num("params_total"),
        params_active=num("params_active"),
        context_trained=num("context_trained"),
        layers=num("layers"),
        kv_heads=num("kv_heads"),
        head_dim=num("head_dim"),
        sizes={q: _sourced(v, sources) for q, v in raw.get("sizes", {}).items()},
        benchmarks=tuple(_benchmark(b, sources) for b in raw.get("benchmarks", ())),
        sliding_window=_sourced(window, sources) if window else None,
        global_layer_every=_sourced(every, sources) if every else None,
        ollama_tags=dict(raw.get("ollama_tags", {})),
        notes=str(raw.get("notes", "")),
    )


@lru_cache(maxsize=1)
def catalog() -> tuple[CatalogModel, ...]:
    """The catalog from ``catalog.json`` next to this module, read once on first use."""
    text = resources.files("autotune.models").joinpath(_DATA).read_text(encoding="utf-8")
    doc = json.loads(text)
    sources = {str(k): str(v) for k, v in doc.get("sources", {}).items()}
    return tuple(_model(raw, sources) for raw in doc["models"])


# --------------------------------------------------------------------------- estimates


def catalog_meta(model: CatalogModel, quant: str) -> ModelMeta:
    """A :class:`ModelMeta` for a catalog entry, so the shared estimator can judge it.

    Gemma-3-style sliding windows become per-layer flags: every ``global_layer_every``-th
    layer is global, the others hold ``sliding_window`` cells.
    """
    layers = int(model.layers.value)
    swa_layers = None
    window = None
    if model.sliding_window is not None and model.global_layer_every:
        every = int(model.global_layer_every.value)
        swa_layers = [(i + 1) % every != 0 for i in range(layers)]
        window = int(model.sliding_window.value)
    head_dim = int(model.head_dim.value)
    # The catalog has no hidden size; a dense transformer has ≈ 12·layers·n_embd² parameters,
    # so n_embd ≈ √(active params / 12·layers). It only feeds the (small) compute-buffer term.
    n_embd = int(math.sqrt(model.params_active.value / (12 * layers)))
    return ModelMeta(
        name=model.name,
        parameter_count=int(model.params_total.value),
        block_count=layers,
        head_count_kv=int(model.kv_heads.value),
        key_length=head_dim,
        value_length=head_dim,
        embedding_length=n_embd,
        sliding_window=window,
        swa_layers=swa_layers,
        context_length=int(model.context_trained.value),
        quantization=quant,
        size_bytes=int(file_size(model, quant).value),
        family=model.family,
    )


def file_size(model: CatalogModel, quant: str) -> Sourced:
    """GGUF file bytes for a quantisation: the published figure, else params × bits ÷ 8."""
    if quant in model.sizes:
        return model.sizes[quant]
    if quant not in QUANT_BITS:
        raise ValueError(f"unknown quantisation {quant!r}; known: {', '.join(QUANT_BITS)}")
    bits = QUANT_BITS[quant]
    params = model.params_total.value
    return Sourced(
        params * bits / 8,
        f"estimate: {params / 1e9:.2f}B params × {bits:g} bits ({quant}) ÷ 8",
        verified=False,
    )


def fit_class(memory_bytes: int, budget_bytes: int) -> str:
    """The same verdict ``autotune ls`` gives (:func:`autotune.models.fit.verdict_for`)."""
    from autotune.models.fit import verdict_for

    return verdict_for(memory_bytes, budget_bytes).value


def speed_bound_tps(active_params: float, quant: str, bandwidth_gbs: float) -> float:
    """Upper bound on decoding tokens/s: bandwidth ÷ bytes read per token.

    Each generated token reads every active weight once, so
    tokens/s ≤ bandwidth_gbs × 10⁹ ÷ (active_params × bits_per_weight ÷ 8). Real speed is
    lower: the KV cache is read too, and compute or a partial GPU offload can be the limit.
    """
    if quant not in QUANT_BITS:
        raise ValueError(f"unknown quantisation {quant!r}; known: {', '.join(QUANT_BITS)}")
    bytes_per_token = active_params * QUANT_BITS[quant] / 8
    if bytes_per_token <= 0 or bandwidth_gbs <= 0:
        return 0.0
    return bandwidth_gbs * 1e9 / bytes_per_token


def quality_score(model: CatalogModel) -> tuple[float, Benchmark] | tuple[None, None]:
    """Chance-corrected MMLU, (score − 25) / 75 in 0–1, or ``(None, None)`` when not published."""
    for bench in model.benchmarks:
        if bench.name == QUALITY_BENCHMARK and bench.quality_eligible:
            return max(0.0, min(1.0, (bench.score - 25.0) / 75.0)), bench
    return None, None


# --------------------------------------------------------------------------- ranking

MemoryFor = Callable[[CatalogModel, str, int], int]


def recommend(
    budget_bytes: int,
    bandwidth_gbs: float,
    *,
    bandwidth_source: str,
    context_tokens: int = DEFAULT_CONTEXT,
    quants: Sequence[str] = ("Q4_K_M", "Q8_0"),
    memory_for: MemoryFor | None = None,
    models: Sequence[CatalogModel] | None = None,
) -> list[Recommendation]:
    """Rank every catalog model × quantisation for a memory budget and a memory bandwidth.

    Memory needed = the shared estimate (weights + f16 KV at ``min(context_tokens, trained
    context)`` + compute + overhead); ``memory_for(model, quant, ctx)`` may replace it.

    Order, documented and deterministic:

    1. Models that fit (comfortably or tight) with a known quality, by
       score = quality × √min(1, speed bound / 25 tok/s), where quality is chance-corrected
       MMLU (:func:`quality_score`) × a small quantisation factor.
    2. Models that fit but have no published MMLU, fastest first (no score is guessed).
    3. Models that do not fit: "swap risk" before "will not fit", smallest first.

    Labels: "best overall" (first), "fastest" (highest speed bound among those that fit —
    never a larger model when a smaller one decodes faster) and "best quality".
    """
    pool = list(models) if models is not None else list(catalog())
    machine = _Machine(budget_bytes, bandwidth_gbs, bandwidth_source)
    recs = [
        _recommendation(
            model, quant, int(min(context_tokens, model.context_trained.value)), machine, memory_for
        )
        for model in pool
        for quant in quants
    ]
    fitting = [r for r in recs if r.fits]
    scored = sorted(
        (r for r in fitting if r.score is not None),
        key=lambda r: (-(r.score or 0.0), -r.tokens_per_s_max, r.name, r.quant),
    )
    unscored = sorted(
        (r for r in fitting if r.score is None),
        key=lambda r: (-r.tokens_per_s_max, r.name, r.quant),
    )
    rest = sorted(
        (r for r in recs if not r.fits),
        key=lambda r: (_FIT_ORDER[r.fit], r.memory_bytes, r.name, r.quant),
    )
    ordered = scored + unscored + rest
    labels = _labels(ordered, fitting, scored)
    return [
        replace(rec, rank=position, labels=tuple(labels.get(id(rec), ())))
        for position, rec in enumerate(ordered, start=1)
    ]


@dataclass(frozen=True)
class _Machine:
    """What a recommendation is measured against."""

    budget_bytes: int
    bandwidth_gbs: float
    bandwidth_source: str


def _recommendation(
    model: CatalogModel, quant: str, ctx: int, machine: _Machine, memory_for: MemoryFor | None
) -> Recommendation:
    """One model × quantisation: its memory, fit, speed bound, quality and score (no rank)."""
    size = file_size(model, quant)
    estimate = estimate_memory(catalog_meta(model, quant), ctx)
    memory = int(memory_for(model, quant, ctx)) if memory_for else estimate.total
    tps = speed_bound_tps(model.params_active.value, quant, machine.bandwidth_gbs)
    base_quality, bench = quality_score(model)
    quality = None
    score = None
    if base_quality is not None:
        quality = base_quality * QUANT_QUALITY_FACTOR.get(quant, 1.0)
        score = quality * min(1.0, tps / SPEED_TARGET_TPS) ** SPEED_EXPONENT
    return Recommendation(
        name=model.name,
        tag=model.ollama_tags.get(quant),
        family=model.family,
        quant=quant,
        params_total=model.params_total.value,
        params_active=model.params_active.value,
        context_tokens=ctx,
        weights_bytes=estimate.weights,
        weights_source=size.source,
        kv_bytes=estimate.kv_cache,
        overhead_bytes=estimate.compute + estimate.overhead,
        memory_bytes=memory,
        budget_bytes=int(machine.budget_bytes),
        fit=fit_class(memory, machine.budget_bytes),
        quality=quality,
        quality_source=bench,
        tokens_per_s_max=tps,
        bandwidth_gbs=float(machine.bandwidth_gbs),
        bandwidth_source=machine.bandwidth_source,
        score=score,
        notes=_notes(model, quality),
    )


def _notes(model: CatalogModel, quality: float | None) -> tuple[str, ...]:
    notes = []
    if model.is_moe:
        notes.append(
            f"mixture of experts: {model.params_active.value / 1e9:.1f}B of "
            f"{model.params_total.value / 1e9:.1f}B parameters are read per token"
        )
    if quality is None:
        notes.append(f"no published {QUALITY_BENCHMARK} score: quality unknown")
    return tuple(notes)


def _labels(
    ordered: list[Recommendation], fitting: list[Recommendation], scored: list[Recommendation]
) -> dict[int, list[str]]:
    """Labels by ``id`` of the recommendation: "best overall", "fastest", "best quality"."""
    labels: dict[int, list[str]] = {}
    if ordered and ordered[0].fits:
        labels.setdefault(id(ordered[0]), []).append("best overall")
    if fitting:
        fastest = max(fitting, key=lambda r: (r.tokens_per_s_max, -r.memory_bytes))
        labels.setdefault(id(fastest), []).append("fastest")
    if scored:
        best_quality = max(scored, key=lambda r: (r.quality or 0.0, r.tokens_per_s_max))
        labels.setdefault(id(best_quality), []).append("best quality")
    return labels
