"""The one table of engines autotune knows: names, labels, URLs, settings and how each is built.

Every place that lists engines reads this table: the settings (which ``--backend`` values
exist), the registry (what auto-detection probes, in which order, and which builder makes
each backend), the chat's ``/backends``, the OpenAI-compatible backend (the server kinds a
probe tells apart, with their labels and start hints) and the router (what an upstream may
be). Adding an engine is one row here and its builder in ``backends/registry.py``
(:data:`~autotune.backends.registry.BUILDERS`, where the import checks see it).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "AUTOTUNE_HEADER",
    "AUTO_DETECTED",
    "BACKEND_NAMES",
    "COMPAT_KINDS",
    "ENGINES",
    "UPSTREAM_KINDS",
    "EngineSpec",
    "engine",
]


@dataclass(frozen=True)
class EngineSpec:
    """One engine autotune can run requests on."""

    name: str
    #: A readable name for messages ("LM Studio").
    label: str
    #: One sentence on how to start it, for "engine unavailable" errors.
    start_hint: str
    #: The ``Settings`` field holding its base URL, if it has one, and that URL's default.
    url_setting: str | None = None
    default_url: str | None = None
    #: A GET path that answers when it runs; set for engines auto-detection looks for.
    probe_path: str | None = None
    #: Chosen with ``--backend NAME`` / ``AUTOTUNE_BACKEND`` (else only probed or routed to).
    choosable: bool = True
    #: Speaks OpenAI's API and is driven by the OpenAI-compatible backend as this kind.
    compat: bool = False
    #: Can be an upstream of the router.
    upstream: bool = False


ENGINES: tuple[EngineSpec, ...] = (
    EngineSpec(
        "ollama",
        "Ollama",
        "Start it with `ollama serve` (or open the Ollama app).",
        url_setting="ollama_url",
        default_url="http://127.0.0.1:11434",
        probe_path="/api/version",
        upstream=True,
    ),
    EngineSpec(
        "lmstudio",
        "LM Studio",
        "Start LM Studio and enable its local server (Developer tab), or run `lms server start`.",
        url_setting="lmstudio_url",
        default_url="http://127.0.0.1:1234",
        probe_path="/v1/models",
        compat=True,
        upstream=True,
    ),
    EngineSpec(
        "llamacpp",
        "llama.cpp",
        "Start it with `llama-server -m MODEL.gguf --port 8080`.",
        url_setting="llamacpp_url",
        default_url="http://127.0.0.1:8080",
        probe_path="/health",
        compat=True,
        upstream=True,
    ),
    EngineSpec(
        "openai",
        "OpenAI-compatible server",
        "Start the server, or check the URL and API key.",
        url_setting="openai_url",
        probe_path="/v1/models",
        compat=True,
        upstream=True,
    ),
    EngineSpec(
        "embedded",
        "embedded llama.cpp (autotune-managed worker)",
        "The embedded engine needs the xllamacpp package: run `make setup`.",
    ),
    EngineSpec(
        "vllm",
        "vLLM",
        "Start it with `vllm serve MODEL`.",
        choosable=False,
        compat=True,
        upstream=True,
    ),
    EngineSpec(
        "sglang",
        "SGLang",
        "Start it with `python -m sglang.launch_server --model-path MODEL`.",
        choosable=False,
        compat=True,
        upstream=True,
    ),
    EngineSpec(
        "mlx",
        "mlx_lm",
        "Start it with `mlx_lm.server --model MODEL`.",
        url_setting="mlx_url",
        compat=True,
        upstream=True,
    ),
    EngineSpec(
        "router",
        "router",
        "Start the engines listed in the router config, or fix their URLs.",
    ),
    EngineSpec(
        "hf",
        "Hugging Face Inference API",
        "Set HF_TOKEN to a Hugging Face token with Inference Providers access.",
        url_setting="hf_api_url",
        default_url="https://router.huggingface.co/v1",
    ),
)

_BY_NAME = {spec.name: spec for spec in ENGINES}

#: The response header every autotune server sends (its version): engine discovery knows an
#: autotune by it, and never takes one for the engine it probed for unless told to.
AUTOTUNE_HEADER = "X-Autotune-Version"

#: ``--backend`` values besides ``auto``.
BACKEND_NAMES: tuple[str, ...] = tuple(spec.name for spec in ENGINES if spec.choosable)
#: Engines auto-detection probes, in order of preference when several answer.
AUTO_DETECTED: tuple[str, ...] = tuple(spec.name for spec in ENGINES if spec.probe_path)
#: Server kinds the OpenAI-compatible backend knows (a probe tells all but ``mlx`` apart).
COMPAT_KINDS: tuple[str, ...] = tuple(spec.name for spec in ENGINES if spec.compat)
#: What a router upstream may be.
UPSTREAM_KINDS: tuple[str, ...] = tuple(spec.name for spec in ENGINES if spec.upstream)


def engine(name: str) -> EngineSpec:
    """The spec called ``name``; KeyError for names not in the table."""
    return _BY_NAME[name]
