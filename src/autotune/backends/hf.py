"""The Hugging Face Inference API as a backend: a remote, token-authenticated OpenAI-compatible
router (``https://router.huggingface.co/v1``) that autotune passes chats to unchanged.

The model runs on Hugging Face's inference providers, not on this machine, so its capabilities
say ``remote`` (no local memory planning) and nothing about load-time settings. The token
comes from ``AUTOTUNE_HF_TOKEN`` or ``HF_TOKEN``; without one every call fails with an error
that names ``HF_TOKEN``, and a 401/403 from Hugging Face becomes a readable error rather than
the provider's raw body (seen there: ``{"error": "Invalid credentials in Authorization header"}``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from autotune.backends.openai_compat import OpenAICompatBackend
from autotune.ground.config import Settings
from autotune.ground.engines import EngineSpec
from autotune.ground.errors import BackendError
from autotune.ground.types import Capabilities, ChatRequest, Chunk, ModelEntry

__all__ = ["DEFAULT_HF_URL", "HFAuthError", "HFBackend", "HFTokenMissing", "from_settings"]

DEFAULT_HF_URL = "https://router.huggingface.co/v1"
_TOKEN_HINT = (
    "Create a fine-grained token with permission to make calls to Inference Providers at "
    "huggingface.co/settings/tokens and export it as HF_TOKEN."
)


class HFTokenMissing(BackendError):
    """No Hugging Face token is configured."""

    status = 503
    code = "hf_token_missing"

    def __init__(self) -> None:
        super().__init__(
            "The Hugging Face Inference API needs a token: set HF_TOKEN (or AUTOTUNE_HF_TOKEN).",
            hint=_TOKEN_HINT,
        )


class HFAuthError(BackendError):
    """Hugging Face refused the token (401/403) or the account cannot pay for the call (402)."""

    status = 502
    code = "upstream_auth_failed"

    def __init__(self, status: int, detail: str) -> None:
        what = {
            401: "rejected the token in HF_TOKEN",
            402: "refused the call: the account has no inference credits left",
            403: "refused the token in HF_TOKEN for this model or provider",
        }.get(status, f"refused the call (HTTP {status})")
        super().__init__(
            f"Hugging Face {what} ({status}: {detail}).",
            hint=None if status == 402 else _TOKEN_HINT,
        )
        self.upstream_status = status


class HFBackend(OpenAICompatBackend):
    """Chats on Hugging Face's inference providers through their OpenAI-compatible router."""

    start_hint = _TOKEN_HINT

    def __init__(
        self,
        base_url: str = DEFAULT_HF_URL,
        *,
        token: str | None = None,
        timeout: float | httpx.Timeout | None = None,
    ) -> None:
        kwargs: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        super().__init__(base_url, name="hf", api_key=token or None, kind="openai", **kwargs)
        self.token_set = bool(token)

    def _set_kind(self, kind: str) -> None:
        super()._set_kind(kind)
        # Remote whatever the URL says (a local test double included): no local memory plan,
        # no load-time settings, no prefix-cache promises about someone else's servers.
        self.capabilities = Capabilities(
            prefix_cache=False, running_models=False, embeddings=False, remote=True
        )
        self.start_hint = _TOKEN_HINT

    @property
    def engine(self) -> str:
        return "Hugging Face"

    def describe(self) -> dict[str, Any]:
        """What ``/backends`` shows for the Hugging Face Inference API."""
        return {
            "name": self.name,
            "engine": "Hugging Face Inference API",
            "url": self.base_url + "/v1",
            "remote": True,
            "token": "set" if self.token_set else "missing: set HF_TOKEN",
        }

    def _need_token(self) -> None:
        if not self.token_set:
            raise HFTokenMissing()

    def _error_from(self, status: int, text: str, model: str | None) -> BackendError:
        if status in (401, 402, 403):
            return HFAuthError(status, _detail(status, text))
        return super()._error_from(status, text, model)

    async def health(self) -> bool:
        if not self.token_set:
            return False
        try:
            response = await self._http.get(self.base_url + "/v1/models", timeout=5.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def list_models(self) -> list[ModelEntry]:
        self._need_token()
        return await super().list_models()

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[Chunk]:
        self._need_token()
        async for chunk in super().stream_chat(request):
            yield chunk


def _detail(status: int, text: str) -> str:
    """Hugging Face's own words: ``{"error": "..."}`` or ``{"error": {"message": "..."}}``."""
    try:
        payload = json.loads(text)
    except ValueError:
        return text.strip()[:200] or f"HTTP {status}"
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error or text.strip()[:200] or f"HTTP {status}")


def from_settings(spec: EngineSpec, settings: Settings) -> HFBackend:
    """The Hugging Face Inference API with the configured token (the engine table's builder)."""
    return HFBackend(settings.hf_api_url, token=settings.hf_token)
