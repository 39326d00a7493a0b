"""Settings from the environment (``AUTOTUNE_*``) with every data path under one home directory."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import platformdirs
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from autotune.ground.engines import BACKEND_NAMES, engine
from autotune.ground.units import parse_duration, parse_size

__all__ = ["BACKEND_CHOICES", "PROFILE_CHOICES", "Settings", "get_settings"]

BACKEND_CHOICES = ("auto", *BACKEND_NAMES)
PROFILE_CHOICES = ("fast", "balanced", "quality")


def _default_home() -> Path:
    return Path(platformdirs.user_data_dir("autotune", appauthor=False))


class Settings(BaseSettings):
    """Every knob autotune reads, each overridable by ``AUTOTUNE_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="AUTOTUNE_", extra="ignore")

    home: Path = Field(default_factory=_default_home, description="Where all data lives.")
    backend: str = Field("auto", description=" | ".join(BACKEND_CHOICES))
    ollama_url: str = engine("ollama").default_url or ""
    lmstudio_url: str = engine("lmstudio").default_url or ""
    llamacpp_url: str = engine("llamacpp").default_url or ""
    openai_url: str | None = Field(
        None, description="Any other OpenAI-compatible server (vLLM, SGLang…)."
    )
    openai_api_key: str | None = None
    probe_timeout: float = Field(
        0.3, description="Seconds to wait for an engine when auto-detecting."
    )

    router_config: Path | None = Field(
        None, description="A TOML/YAML file of upstream engines to route across (see router)."
    )
    mlx_url: str | None = Field(None, description="An mlx_lm.server base URL (Apple Silicon).")
    hf_api_url: str = Field(
        engine("hf").default_url or "", description="Hugging Face Inference API base URL."
    )
    hf_token: str | None = Field(
        None,
        validation_alias=AliasChoices("AUTOTUNE_HF_TOKEN", "HF_TOKEN"),
        description="Token for the Hugging Face Inference API (HF_TOKEN works too).",
    )

    models_dir: Path | None = Field(None, description="An extra folder searched for GGUF files.")
    memory_budget: int | None = Field(
        None, description="Bytes autotune may plan to use for models (accepts 8GiB, 512MiB…)."
    )
    default_model: str = "smollm2:135m"
    profile: str = "balanced"
    keep_alive: float = Field(
        -1, description="Seconds an idle model stays loaded; negative = forever."
    )
    threads: int | None = Field(None, description="Engine threads; default = physical cores.")

    host: str = "127.0.0.1"
    port: int = 8765
    allowed_hosts: str | None = Field(
        None,
        description="Extra host names the server answers to, comma-separated (loopback names "
        "and the listening address always work; '*' allows any, '.example.com' a domain).",
    )
    api_key: str | None = None
    max_concurrent: int = 1
    max_queued: int = 8
    wait_timeout: float = 120.0
    max_request_seconds: float = Field(
        600.0,
        ge=0,
        description="Seconds one request may run, from its arrival (waiting, loading, prefill "
        "and reply): past it the request is stopped, its slot freed and the client told why "
        "(a 504, or an error event once streaming); 0 sets no limit.",
    )
    runaway_chars: int = Field(
        2048,
        ge=0,
        description="Characters of one text repeated back to back after which a reply to a "
        "request with no token limit is stopped as a runaway; 0 never stops one.",
    )
    max_reply_tokens: int = Field(
        0,
        ge=0,
        description="Most tokens a reply gets when its request sets no token limit, or only a "
        "ceiling (Anthropic's max_tokens, where agents send their own model's maximum, e.g. "
        "32,000); 0: no such cap (a ceiling is capped to what the context leaves beside the "
        "prompt, and a reply with no limit is watched for runaways).",
    )
    max_body_bytes: int = 8 * 1024 * 1024
    cors_origins: str | None = None
    kv_disk_budget: int | None = Field(
        None,
        description="Bytes of disk for saved conversation KV caches (accepts 20GiB…); 0 turns "
        "them off; unset: a tenth of the free disk, at most 64 GiB.",
    )
    prompt_cache_mib: int | None = Field(
        None,
        description="MiB of host RAM the embedded engine keeps for finished prompts' KV "
        "(llama.cpp --cache-ram); unset: a quarter of the memory budget's headroom.",
    )
    warm_start: bool = Field(
        True,
        description="`serve` loads again, in the background and within the memory budget, "
        "the models that were loaded when it last stopped (a request arriving meanwhile waits "
        "for that load instead of starting another).",
    )
    serve_ollama: bool = Field(
        False,
        description="`serve` also listens on Ollama's address, 127.0.0.1 at ollama_port, when "
        "it is free (apps set up for Ollama then work unchanged).",
    )
    ollama_port: int = Field(11434, description="The port `serve --ollama` also listens on.")
    recall: bool = Field(
        True,
        description="Embed stored turns with the offline MiniLM model for semantic search, and "
        "add relevant notes from earlier conversations at a chat's start; false keeps "
        "full-text search only (and never loads the model).",
    )
    pass_unknown_fields: bool = Field(
        False,
        description="Send request fields outside OpenAI's schema on to the engine instead of "
        "refusing them with a 400.",
    )

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in BACKEND_CHOICES:
            raise ValueError(
                f"unknown backend {value!r}; choose one of {', '.join(BACKEND_CHOICES)}"
            )
        return value

    @field_validator("profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        value = value.strip().lower()
        if value not in PROFILE_CHOICES:
            raise ValueError(
                f"unknown profile {value!r}; choose one of {', '.join(PROFILE_CHOICES)}"
            )
        return value

    @field_validator("kv_disk_budget", mode="before")
    @classmethod
    def _disk_size(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_size(value) if value.strip() else None
        return value

    @field_validator("memory_budget", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_size(value) if value.strip() else None
        return value

    @field_validator("memory_budget")
    @classmethod
    def _positive_budget(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError(f"{value} bytes leaves no room for any model; unset it or give a size")
        return value

    @field_validator("port")
    @classmethod
    def _port_range(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError(f"port {value} is outside 1-65535")
        return value

    @field_validator("keep_alive", "wait_timeout", "max_request_seconds", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        return parse_duration(value) if isinstance(value, str) else value

    @property
    def allowed_host_names(self) -> list[str]:
        """``allowed_hosts`` as a list of lower-case names."""
        return [h.strip().lower() for h in (self.allowed_hosts or "").split(",") if h.strip()]

    @property
    def kv_dir(self) -> Path:
        """Where saved conversation KV caches live."""
        return self.home / "kv"

    @property
    def db_path(self) -> Path:
        return self.home / "autotune.db"

    @property
    def exports_dir(self) -> Path:
        return self.home / "exports"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
