"""Which engines are in use, and which one serves a given model.

The decisions (:func:`choose_engines`, :func:`route_model`) are pure functions of what was
probed, so they are unit-tested without an engine; :func:`open_backends` does the probing.
Auto-detection looks for Ollama on :11434, LM Studio on :1234 and llama-server on :8080;
the embedded engine is always there for GGUF files on disk (including Ollama's own blobs,
so a model pulled by Ollama runs by its Ollama name with Ollama stopped). On Apple Silicon
with mlx-lm, MLX comes first for the models it has on disk. A router config
(``AUTOTUNE_ROUTER_CONFIG``) replaces auto-detection with the engines it lists.
"""

from __future__ import annotations

import asyncio
import difflib
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

from autotune.backends.base import Backend
from autotune.backends.mlx_models import is_apple_silicon, mlx_first
from autotune.ground.config import Settings, get_settings
from autotune.ground.engines import (
    AUTO_DETECTED,
    AUTOTUNE_HEADER,
    BACKEND_NAMES,
    EngineSpec,
    engine,
)
from autotune.ground.errors import BackendError, ModelNotFound
from autotune.ground.types import ModelEntry

__all__ = [
    "BUILDERS",
    "ENGINE_ORDER",
    "BackendSet",
    "check_not_itself",
    "choose_engines",
    "open_backends",
    "points_at",
    "probe_engines",
    "route_model",
    "serving_addresses",
]

log = logging.getLogger("autotune.engines")

#: The engines autotune looks for, in order of preference when several run.
ENGINE_ORDER = AUTO_DETECTED
_INVENTORY_TTL = 10.0  # seconds a model list from a remote engine is trusted
#: Seconds an unknown name is answered from memory, and the least time between rescans.
_MISSING_TTL = 5.0
_RESCAN_INTERVAL = 5.0
#: Names remembered each way (found, not found); the least recently used go first.
_MAX_NAMES = 256


def _url(settings: Settings, name: str) -> str | None:
    setting = engine(name).url_setting
    return getattr(settings, setting, None) if setting else None


def choose_engines(requested: str, reachable: Mapping[str, bool]) -> list[str]:
    """The engines to use, first = primary. ``requested`` is ``auto`` or one engine name.

    An explicitly requested engine is used alone, reachable or not (its errors then say how
    to start it). ``auto`` uses every reachable engine in :data:`ENGINE_ORDER`, then the
    embedded one, which is always last so that engines the user started win for their models.
    """
    if requested != "auto":
        return [requested]
    return [e for e in ENGINE_ORDER if reachable.get(e)] + ["embedded"]


def route_model(model: str, inventory: Mapping[str, Iterable[str]], order: list[str]) -> str | None:
    """The first engine in ``order`` whose inventory holds ``model`` (exact, then case-insensitive).

    A bare name also matches its ``:latest`` tag, as Ollama does.
    """
    wanted = {model, model.lower(), f"{model}:latest", f"{model.lower()}:latest"}
    for name in order:
        names = {n.lower() for n in inventory.get(name, ())} | set(inventory.get(name, ()))
        if wanted & names:
            return name
    return None


async def probe_engines(
    settings: Settings, engines: Iterable[str] = ENGINE_ORDER
) -> dict[str, bool]:
    """Which engines answer on their URLs, probed concurrently with a short timeout. An
    autotune answering where an engine was looked for (its :data:`AUTOTUNE_HEADER`) is not
    that engine, unless its URL was given explicitly (chaining on purpose)."""

    async def one(client: httpx.AsyncClient, name: str) -> tuple[str, bool]:
        url = _url(settings, name)
        if not url:
            return name, False
        try:
            response = await client.get(url.rstrip("/") + (engine(name).probe_path or "/"))
        except httpx.HTTPError:
            return name, False
        if AUTOTUNE_HEADER.lower() in response.headers and not _url_given(settings, name):
            log.warning(
                "%s answers as autotune %s, not as %s: not used as an engine (set %s or "
                "AUTOTUNE_BACKEND=%s to put an autotune in front of it on purpose)",
                url,
                response.headers[AUTOTUNE_HEADER],
                engine(name).label,
                f"AUTOTUNE_{engine(name).url_setting or ''}".upper(),
                name,
            )
            return name, False
        return name, response.status_code < 500

    async with httpx.AsyncClient(timeout=settings.probe_timeout) as client:
        results = await asyncio.gather(*(one(client, e) for e in engines))
    return dict(results)


def _url_given(settings: Settings, name: str) -> bool:
    setting = engine(name).url_setting
    return setting is not None and setting in settings.model_fields_set


_ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")


def serving_addresses(settings: Settings) -> list[tuple[str, int]]:
    """Where ``autotune serve`` listens with these settings: its host and port, and Ollama's
    port on 127.0.0.1 with ``--ollama``."""
    addresses = [(settings.host, settings.port)]
    if settings.serve_ollama:
        addresses.append(("127.0.0.1", settings.ollama_port))
    return addresses


def points_at(url: str, addresses: Iterable[tuple[str, int]]) -> bool:
    """``url`` reaches one of ``addresses`` (host, port): the same port on the same host, on
    a loopback name for a loopback listener, or on any name for one on every interface."""
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    host = (parts.hostname or "").lower()
    for own_host, own_port in addresses:
        own = own_host.strip("[]").lower()
        if port != own_port:
            continue
        if own in _ANY_ADDRESS or host == own or (_loopback(host) and _loopback(own)):
            return True
    return False


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_not_itself(
    settings: Settings, requested: str, addresses: Sequence[tuple[str, int]]
) -> list[str]:
    """The engines whose URL is this autotune's own address: left out of auto-detection
    (the list returned), refused when chosen explicitly (a BackendError saying which setting:
    every request would come back to this server)."""
    names = list(ENGINE_ORDER) if requested == "auto" else [requested]
    own = [n for n in names if (url := _url(settings, n)) and points_at(url, addresses)]
    if requested != "auto" and own:
        spec = engine(own[0])
        raise BackendError(
            f"AUTOTUNE_{(spec.url_setting or '').upper()} ({_url(settings, own[0])}) is this "
            "autotune's own address: every request would come back to it.",
            hint=f"Point it at {spec.label} itself, or let autotune listen elsewhere "
            "(AUTOTUNE_PORT).",
        )
    return own


def make_backend(name: str, settings: Settings) -> Backend:
    """A backend object for one engine name (no I/O), built as the engine table says."""
    try:
        spec = engine(name)
    except KeyError:
        raise BackendError(
            f"Unknown engine {name!r}.", hint=f"Choose one of {', '.join(BACKEND_NAMES)}."
        ) from None
    builder = BUILDERS.get(name)
    if builder is None:
        raise BackendError(
            f"{spec.label} is reached through another engine setting.",
            hint="Use --backend openai with AUTOTUNE_OPENAI_URL, or a router upstream.",
        )
    return builder(spec, settings)


# Each builder imports its engine's module when it is called: an engine not in use costs
# nothing at start-up, and the imports stay plain statements the import checks see.


def _ollama(spec: EngineSpec, settings: Settings) -> Backend:
    from autotune.backends.ollama import from_settings

    return from_settings(spec, settings)


def _compat(spec: EngineSpec, settings: Settings) -> Backend:
    from autotune.backends.openai_compat import from_settings

    return from_settings(spec, settings)


def _embedded(spec: EngineSpec, settings: Settings) -> Backend:
    from autotune.backends.embedded import from_settings

    return from_settings(spec, settings)


def _mlx(spec: EngineSpec, settings: Settings) -> Backend:
    from autotune.backends.mlx import from_settings

    return from_settings(spec, settings)


def _router(spec: EngineSpec, settings: Settings) -> Backend:
    from autotune.backends.router import from_settings

    return from_settings(spec, settings)


def _hf(spec: EngineSpec, settings: Settings) -> Backend:
    from autotune.backends.hf import from_settings

    return from_settings(spec, settings)


#: How each engine of the table (:data:`autotune.ground.engines.ENGINES`) is built; engines
#: reached only through another (vLLM, SGLang: an OpenAI-compatible URL) have none.
BUILDERS: dict[str, Callable[[EngineSpec, Settings], Backend]] = {
    "ollama": _ollama,
    "lmstudio": _compat,
    "llamacpp": _compat,
    "openai": _compat,
    "embedded": _embedded,
    "mlx": _mlx,
    "router": _router,
    "hf": _hf,
}


@dataclass
class BackendSet:
    """The engines in use; resolves a model name to the engine that serves it.

    Resolutions are cached both ways, each bounded: a name found stays mapped until
    :meth:`forget` (an engine said it does not have it); a name not found is answered from a
    short-lived negative cache, and the disk and the engines are rescanned for unknown names
    at most once per :data:`_RESCAN_INTERVAL` — a stream of misspelt names must not turn
    into a stream of disk scans that slows every other request.
    """

    backends: dict[str, Backend]
    order: list[str]
    _inventory: dict[str, tuple[float, list[ModelEntry]]] = field(default_factory=dict)
    #: The last listing error per engine (cleared when it answers again).
    errors: dict[str, BackendError] = field(default_factory=dict)
    #: Models already resolved → (engine, name): the hot path never re-lists models.
    _resolved: OrderedDict[str, tuple[str, str]] = field(default_factory=OrderedDict)
    #: Names not found → (when, the error raised).
    _missing: OrderedDict[str, tuple[float, BackendError]] = field(default_factory=OrderedDict)
    _rescanned_at: float = float("-inf")
    _discovery: tuple[float, Any] | None = None
    _rescan_lock: asyncio.Lock | None = None

    @property
    def primary(self) -> Backend:
        return self.backends[self.order[0]]

    def get(self, name: str) -> Backend | None:
        return self.backends.get(name)

    async def inventory(self, *, fresh: bool = False) -> dict[str, list[ModelEntry]]:
        """Every engine's model list; an unreachable engine contributes nothing."""

        async def one(name: str) -> tuple[str, list[ModelEntry]]:
            cached = self._inventory.get(name)
            if cached and not fresh and time.monotonic() - cached[0] < _INVENTORY_TTL:
                return name, cached[1]
            try:
                models = await self.backends[name].list_models()
                self.errors.pop(name, None)
            except BackendError as exc:
                models = []
                self.errors[name] = exc
            self._inventory[name] = (time.monotonic(), models)
            return name, models

        return dict(await asyncio.gather(*(one(n) for n in self.order)))

    async def resolve(self, model: str) -> tuple[Backend, str]:
        """The engine for ``model`` and the name that engine knows it by.

        Raises :class:`ModelNotFound` with the closest names when no engine has it.
        """
        if model in self._resolved:
            self._resolved.move_to_end(model)
            serving, name = self._resolved[model]
            return self.backends[serving], name
        missing = self._missing.get(model)
        if missing is not None and time.monotonic() - missing[0] < _MISSING_TTL:
            raise missing[1].with_traceback(None)
        try:
            found = await self._find(model, fresh=False) or await self._rescan(model)
        except BackendError as exc:
            _remember(self._missing, model, (time.monotonic(), exc))
            raise
        _remember(self._resolved, model, found)
        self._missing.pop(model, None)
        return self.backends[found[0]], found[1]

    async def _rescan(self, model: str) -> tuple[str, str]:
        """Look again with fresh model lists, at most once per interval for all names."""
        if self._rescan_lock is None:
            self._rescan_lock = asyncio.Lock()
        async with self._rescan_lock:
            fresh = time.monotonic() - self._rescanned_at >= _RESCAN_INTERVAL
            if fresh:
                self._rescanned_at = time.monotonic()
            found = await self._find(model, fresh=fresh)
        if found is not None:
            return found
        for name in self.order:  # it may be in an engine that did not answer: say that
            if name in self.errors:
                raise self.errors[name].with_traceback(None)
        inventory = await self.inventory()
        known = sorted({m.name for models in inventory.values() for m in models})
        raise ModelNotFound(model, difflib.get_close_matches(model, known, n=3, cutoff=0.4))

    async def _find(self, model: str, *, fresh: bool) -> tuple[str, str] | None:
        inventory = await self.inventory(fresh=fresh)
        names = {e: [m.name for m in models] for e, models in inventory.items()}
        serving = route_model(model, names, self.order)
        if serving is not None:
            return serving, _canonical(model, names.get(serving, []))
        if "embedded" in self.backends:
            primary = await self._embedded_alias(model, fresh=fresh)
            if primary is not None:  # known by an alias: use the model's own name
                return "embedded", primary
        return None

    async def refresh(self, model: str | None = None) -> None:
        """Something changed on disk (a model was pulled): forget ``model`` (or every name),
        and list the engines and the disk afresh now."""
        self.forget(model)
        self._discovery = None
        self._rescanned_at = float("-inf")
        await self.inventory(fresh=True)

    def forget(self, model: str | None = None) -> None:
        """Drop a cached resolution (all of them with no argument)."""
        if model is None:
            self._resolved.clear()
            self._missing.clear()
        else:
            self._resolved.pop(model, None)
            self._missing.pop(model, None)

    async def _embedded_alias(self, model: str, *, fresh: bool) -> str | None:
        """The primary name of a model discovery knows by an alias (``llama3`` for
        ``llama3:latest``, a file stem), or None. The disk scan is reused like a model list."""
        from autotune.models.discovery import discover

        if (
            fresh
            or self._discovery is None
            or time.monotonic() - self._discovery[0] >= (_INVENTORY_TTL)
        ):
            self._discovery = (time.monotonic(), await asyncio.to_thread(discover))
        try:
            return self._discovery[1].find(model).name
        except ModelNotFound:
            return None

    async def aclose(self) -> None:
        await asyncio.gather(*(b.aclose() for b in self.backends.values()))


def _remember(cache: OrderedDict[str, Any], key: str, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _MAX_NAMES:
        cache.popitem(last=False)


def _canonical(model: str, names: list[str]) -> str:
    for name in names:
        if name == model:
            return name
    lowered = model.lower()
    for name in names:
        if name.lower() in (lowered, f"{lowered}:latest"):
            return name
    return model


async def open_backends(
    settings: Settings | None = None,
    requested: str | None = None,
    *,
    serving: Sequence[tuple[str, int]] = (),
) -> BackendSet:
    """Probe for running engines and build the backends to use (``--backend`` wins over auto).
    ``serving``: the addresses this process serves on, never taken for an engine."""
    settings = settings or get_settings()
    requested = (requested or settings.backend).lower()
    if requested in ("auto", "router") and settings.router_config is not None:
        # A router config names the engines to use: the router alone, no auto-detection.
        return BackendSet({"router": make_backend("router", settings)}, ["router"])
    itself = check_not_itself(settings, requested, serving)
    reachable: dict[str, bool] = {}
    if requested == "auto":
        candidates = [e for e in ENGINE_ORDER if _url(settings, e) and e not in itself]
        reachable = await probe_engines(settings, candidates)
    order = choose_engines(requested, reachable)
    if requested == "auto":
        order = mlx_first(order, apple_silicon=is_apple_silicon(), mlx_ready=_mlx_ready(settings))
    return BackendSet({e: make_backend(e, settings) for e in order}, order)


def _mlx_ready(settings: Settings) -> bool:
    """MLX can serve here: a running mlx_lm.server was named, or mlx-lm is installed."""
    if settings.mlx_url:
        return True
    from autotune.backends.mlx import mlx_lm_installed

    return mlx_lm_installed()
