"""The router's config file (YAML or TOML): its schema, and one readable line per mistake in it.

YAML is read with PyYAML (a dependency of autotune, so it works on Python 3.10); TOML with
the standard ``tomllib`` on 3.11+, or the ``tomli`` package on 3.10. The file documented key
by key is ``examples/router.yaml``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from autotune.ground.engines import UPSTREAM_KINDS
from autotune.ground.errors import BackendError

__all__ = [
    "UPSTREAM_KINDS",
    "RouterConfig",
    "RouterConfigError",
    "UpstreamConfig",
    "format_errors",
    "load_router_config",
    "parse_router_config",
]

#: Engines an upstream can be; ``ollama`` speaks Ollama's native API, the rest OpenAI's.


class RouterConfigError(BackendError):
    """The router's config file is missing, unreadable or wrong; ``problems`` has one line each."""

    status = 500
    code = "router_config_invalid"

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        super().__init__(
            f"The router config {source} is not valid:\n{lines}",
            hint="Every key is explained in examples/router.yaml.",
        )


class UpstreamConfig(BaseModel):
    """One engine the router may send requests to."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str | None = Field(None, min_length=1)
    url: str
    kind: str
    models: list[str] | None = None
    weight: float = Field(1.0, gt=0)
    #: autotune's requests sent there at once; unset, it follows from what the engine is
    #: (see ``routing.upstream_limit``).
    max_concurrent: int | None = Field(None, ge=1)
    api_key: str | None = None
    api_key_env: str | None = Field(None, min_length=1)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in UPSTREAM_KINDS:
            *head, last = (repr(k) for k in UPSTREAM_KINDS)
            raise PydanticCustomError(
                "literal_error",
                "Input should be one of {expected}",
                {"expected": f"{', '.join(head)} or {last}"},
            )
        return value

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("an http:// or https:// URL with a host")
        return value.strip().rstrip("/")

    @property
    def display_name(self) -> str:
        """The name given, or ``host:port`` from the URL."""
        if self.name:
            return self.name
        parts = urlsplit(self.url)
        return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)

    def resolved_api_key(self) -> str | None:
        if self.api_key_env:
            return os.environ.get(self.api_key_env)
        return self.api_key


class RouterConfig(BaseModel):
    """Everything the router reads from its file."""

    model_config = ConfigDict(extra="forbid", strict=True)

    upstreams: list[UpstreamConfig] = Field(min_length=1)
    affinity: bool = True
    affinity_ttl: float = Field(3600.0, gt=0)
    affinity_max_imbalance: float = Field(4.0, ge=0)
    cooldown: float = Field(5.0, ge=0)
    probe_interval: float = Field(2.0, gt=0)
    metrics_interval: float = Field(2.0, gt=0)
    metrics_timeout: float = Field(2.0, gt=0)
    models_refresh: float = Field(60.0, gt=0)
    #: Seconds of recent readings that rates (prefix hits, tokens/s) are computed over.
    rate_window: float = Field(60.0, gt=0)
    connect_timeout: float = Field(5.0, gt=0)


# --------------------------------------------------------------------------- errors


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else str(value)


def _expected(error: Mapping[str, Any]) -> str:
    kind = str(error.get("type", ""))
    ctx = error.get("ctx") or {}
    if kind in ("float_type", "float_parsing", "finite_number"):
        return "a number"
    if kind.startswith("int_"):
        return "a whole number"
    if kind in ("string_type", "string_sub_type"):
        return "a string"
    if kind.startswith("bool"):
        return "true or false"
    if kind in ("list_type", "tuple_type"):
        return "a list"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "a table of keys"
    if kind == "literal_error":
        return f"one of {ctx.get('expected', '')}"
    if kind == "greater_than":
        return f"a number above {_number(ctx.get('gt'))}"
    if kind == "greater_than_equal":
        return f"a number of at least {_number(ctx.get('ge'))}"
    if kind == "too_short":
        return f"at least {ctx.get('min_length')} item(s)"
    if kind == "string_too_short":
        return "a non-empty string"
    if kind == "value_error":
        return str(ctx.get("error") or error.get("msg", "a valid value"))
    return str(error.get("msg", "a valid value")).lower()


def _allowed_keys(loc: Sequence[int | str]) -> list[str]:
    model: type[BaseModel] = RouterConfig
    if loc and loc[0] == "upstreams":
        model = UpstreamConfig
    return list(model.model_fields)


def format_errors(errors: Sequence[Mapping[str, Any]]) -> list[str]:
    """One line per pydantic error: ``upstreams[1].weight: expected a number, got "heavy"``."""
    lines = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        where = _path(loc)
        kind = error.get("type")
        if kind == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(loc[:-1]))
            lines.append(f"{where}: unknown key (expected one of: {allowed})")
        elif kind == "missing":
            lines.append(f"{where}: missing (this key is required)")
        else:
            lines.append(f"{where}: expected {_expected(error)}, got {_shown(error.get('input'))}")
    return lines


def _duplicates(config: RouterConfig) -> list[str]:
    problems = []
    names: dict[str, int] = {}
    urls: dict[str, int] = {}
    for i, upstream in enumerate(config.upstreams):
        url = upstream.url[: -len("/v1")] if upstream.url.endswith("/v1") else upstream.url
        if url in urls:
            problems.append(
                f"upstreams[{i}].url: duplicate upstream {_shown(upstream.url)} "
                f"(also upstreams[{urls[url]}])"
            )
        else:
            urls[url] = i
            name = upstream.display_name
            if name in names:
                problems.append(
                    f"upstreams[{i}].name: duplicate upstream name {_shown(name)} "
                    f"(also upstreams[{names[name]}])"
                )
            names[name] = i
        if upstream.api_key and upstream.api_key_env:
            problems.append(f"upstreams[{i}]: give api_key or api_key_env, not both")
        elif upstream.api_key_env and upstream.api_key_env not in os.environ:
            problems.append(
                f"upstreams[{i}].api_key_env: the environment variable "
                f"{upstream.api_key_env} is not set"
            )
    return problems


def parse_router_config(data: Any, source: str = "<config>") -> RouterConfig:
    """Validate already-parsed data; raises :class:`RouterConfigError` listing every problem."""
    if not isinstance(data, Mapping):
        raise RouterConfigError(
            source, [f"(top level): expected a table of keys, got {_shown(data)}"]
        )
    try:
        config = RouterConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise RouterConfigError(source, format_errors(exc.errors())) from None
    problems = _duplicates(config)
    if problems:
        raise RouterConfigError(source, problems)
    return config


def _load_toml(text: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover (3.10)
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ValueError(
                "reading TOML on Python 3.10 needs the tomli package; "
                "install it or write the file as YAML"
            ) from None
    return tomllib.loads(text)


def load_router_config(path: str | Path) -> RouterConfig:
    """Read and validate a router config file (``.toml``; anything else is read as YAML)."""
    file = Path(path).expanduser()
    source = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RouterConfigError(source, ["(file): not found"]) from None
    except OSError as exc:
        raise RouterConfigError(source, [f"(file): cannot be read: {exc.strerror}"]) from None
    try:
        if file.suffix.lower() == ".toml":
            data = _load_toml(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as exc:  # YAMLError / TOMLDecodeError / the tomli hint above
        detail = " ".join(str(exc).split())
        raise RouterConfigError(source, [f"(syntax): {detail}"]) from None
    return parse_router_config(data, source)
