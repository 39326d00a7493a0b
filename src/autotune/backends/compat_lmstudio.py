"""LM Studio's own REST API (``/api/v1`` since 0.4, ``/api/v0`` before): its loaded instances,
and loading and unloading a model with autotune's settings. Used by the OpenAI-compatible
backend when the server it talks to is LM Studio."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import httpx

from autotune.backends.compat_http import transport_detail
from autotune.backends.compat_wire import config_matches, lmstudio_load_body
from autotune.ground.errors import BackendError
from autotune.ground.types import LoadSettings, RunningModel

__all__ = ["LmStudio", "LmStudioClient"]

log = logging.getLogger(__name__)


class LmStudioClient(Protocol):
    """What :class:`LmStudio` needs of the backend it serves."""

    name: str
    _http: httpx.AsyncClient

    @property
    def engine(self) -> str: ...

    async def _url_for(self, model: str | None) -> str: ...

    async def _request(
        self, method: str, url: str, *, model: str | None = None, **kwargs: Any
    ) -> httpx.Response: ...

    async def _get_json(self, path: str, *, model: str | None = None) -> Any: ...

    def _error_for(self, response: httpx.Response, model: str | None) -> BackendError: ...

    def unavailable(self, detail: str) -> BackendError: ...


class LmStudio:
    """LM Studio's REST API, through the backend's HTTP client and errors."""

    def __init__(self, client: LmStudioClient) -> None:
        self.client = client

    async def models_v1(self) -> list[Mapping[str, Any]] | None:
        """LM Studio ≥ 0.4 ``GET /api/v1/models`` (with loaded instances), or None when older."""
        client = self.client
        root = await client._url_for(None)
        try:
            response = await client._http.get(root + "/api/v1/models")
        except httpx.TransportError as exc:
            raise client.unavailable(transport_detail(exc)) from None
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise client._error_for(response, None)
        return [m for m in response.json().get("models", []) if isinstance(m, Mapping)]

    async def running(self) -> list[RunningModel]:
        """The loaded instances (older LM Studio: which models are loaded, not how)."""
        models = await self.models_v1()
        if models is None:
            data = (await self.client._get_json("/api/v0/models")).get("data", [])
            return [
                RunningModel(
                    name=str(m.get("id", "")),
                    backend=self.client.name,
                    context_length=m.get("loaded_context_length"),
                    quantization=m.get("quantization"),
                )
                for m in data
                if isinstance(m, Mapping) and m.get("state") == "loaded"
            ]
        return [
            _instance(m, instance, self.client.name)
            for m in models
            for instance in m.get("loaded_instances") or []
        ]

    async def instances(self, model: str) -> list[Mapping[str, Any]] | None:
        """The loaded instances of ``model``; None when the server has no /api/v1 REST API."""
        models = await self.models_v1()
        if models is None:
            return None
        return [
            instance
            for m in models
            for instance in m.get("loaded_instances") or []
            if model in (m.get("key"), instance.get("id"))
        ]

    async def unload(self, instance_id: str) -> None:
        root = await self.client._url_for(None)
        await self.client._request(
            "POST", root + "/api/v1/models/unload", json={"instance_id": instance_id}
        )

    async def load(
        self, model: str, settings: LoadSettings | None, *, force: bool
    ) -> dict[str, Any] | bool | None:
        """Load ``model`` unless an instance already has ``settings``. The load reply when it
        loaded, False when it was already loaded so, None when the server has no load API."""
        instances = await self.instances(model)
        if instances is None:
            log.warning(
                "%s has no /api/v1 load API; %s keeps its own load settings",
                self.client.engine,
                model,
            )
            return None
        if (
            not force
            and settings is not None
            and any(config_matches(i.get("config") or {}, settings) for i in instances)
        ):
            return False
        # Each load call adds an instance ("model:2"…) rather than replacing one: unload first.
        for instance in instances:
            await self.unload(str(instance.get("id")))
        root = await self.client._url_for(model)
        body = lmstudio_load_body(model, settings)
        reply = await self.client._request(
            "POST", root + "/api/v1/models/load", model=model, json=body
        )
        try:
            loaded = reply.json()
        except ValueError:
            loaded = {}
        return dict(loaded) if isinstance(loaded, Mapping) else {}


def _instance(model: Mapping[str, Any], instance: Mapping[str, Any], backend: str) -> RunningModel:
    config = dict(instance.get("config") or {})
    quant = model.get("quantization")
    return RunningModel(
        name=str(model.get("key", instance.get("id", ""))),
        backend=backend,
        size_bytes=model.get("size_bytes"),
        context_length=config.get("context_length"),
        quantization=quant.get("name") if isinstance(quant, Mapping) else None,
        settings={"instance_id": instance.get("id"), **config},
    )
