"""What ``autotune pull NAME`` downloads: names mapped to GGUF files on the Hugging Face hub.

Pure knowledge, no I/O (the download itself is :mod:`autotune.backends.hub`):

* **Names.** ``hf.co/ORG/REPO:QUANT`` (also ``huggingface.co/…`` or a bare ``ORG/REPO:QUANT``)
  names a hub repository and the quantisation to take from it; without ``:QUANT`` the repo's
  ``Q4_K_M`` is taken (as llama.cpp's ``-hf`` does), or its only GGUF file. Ollama-style
  names (``qwen3:8b``, ``llama3.2:3b``, ``gemma3:1b``, a bare ``qwen3`` for its ``:latest``
  size, or ``qwen3:8b-q8_0`` for another quantisation) map through one table,
  :data:`OLLAMA_TO_GGUF`, to well-known GGUF repositories — the same table style as the MLX
  mapping in ``backends/mlx_models.py``. Ollama's own library tags are ``Q4_K_M`` unless the
  tag says otherwise, so the table takes ``Q4_K_M`` too.
* **Files.** :func:`choose_files` picks the GGUF file(s) of a quantisation from a repo's
  listing (split models: every shard; vision projectors never).
* **Names after the pull.** :func:`pulled_names` gives the names a downloaded file answers
  to, so discovery finds it by the name the user pulled (``qwen3:8b``, ``hf.co/ORG/REPO:Q4_K_M``).
* **Fit.** :func:`pull_fit` is the verdict for this machine, shown before a download: the
  catalog's architecture numbers with the real file size when the model is in the catalog,
  else the file size alone (a lower bound: the context needs more).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from autotune.ground.units import format_bytes
from autotune.models.catalog import CatalogModel, catalog, catalog_meta
from autotune.models.estimate import OVERHEAD_BYTES
from autotune.models.fit import Verdict, assess_fit, verdict_for

__all__ = [
    "DEFAULT_QUANT",
    "OLLAMA_LATEST",
    "OLLAMA_TO_GGUF",
    "HubFileInfo",
    "PullError",
    "PullFit",
    "PullTarget",
    "choose_files",
    "parse_pull_name",
    "pull_fit",
    "pulled_names",
    "quant_of",
]

#: The quantisation taken when a name does not say (Ollama's library default).
DEFAULT_QUANT = "Q4_K_M"

#: Ollama library tag → (Hugging Face GGUF repo, quantisation). Repos are bartowski's
#: conversions, which publish every common quantisation under ``<Model>-<QUANT>.gguf``.
OLLAMA_TO_GGUF: dict[str, tuple[str, str]] = {
    "qwen3:0.6b": ("bartowski/Qwen_Qwen3-0.6B-GGUF", DEFAULT_QUANT),
    "qwen3:1.7b": ("bartowski/Qwen_Qwen3-1.7B-GGUF", DEFAULT_QUANT),
    "qwen3:4b": ("bartowski/Qwen_Qwen3-4B-GGUF", DEFAULT_QUANT),
    "qwen3:8b": ("bartowski/Qwen_Qwen3-8B-GGUF", DEFAULT_QUANT),
    "qwen3:14b": ("bartowski/Qwen_Qwen3-14B-GGUF", DEFAULT_QUANT),
    "qwen3:30b": ("bartowski/Qwen_Qwen3-30B-A3B-GGUF", DEFAULT_QUANT),
    "qwen3:30b-a3b": ("bartowski/Qwen_Qwen3-30B-A3B-GGUF", DEFAULT_QUANT),
    "qwen3:32b": ("bartowski/Qwen_Qwen3-32B-GGUF", DEFAULT_QUANT),
    "qwen2.5:0.5b": ("bartowski/Qwen2.5-0.5B-Instruct-GGUF", DEFAULT_QUANT),
    "qwen2.5:7b": ("bartowski/Qwen2.5-7B-Instruct-GGUF", DEFAULT_QUANT),
    "qwen2.5-coder:7b": ("bartowski/Qwen2.5-Coder-7B-Instruct-GGUF", DEFAULT_QUANT),
    "qwen2.5-coder:14b": ("bartowski/Qwen2.5-Coder-14B-Instruct-GGUF", DEFAULT_QUANT),
    "llama3.2:1b": ("bartowski/Llama-3.2-1B-Instruct-GGUF", DEFAULT_QUANT),
    "llama3.2:3b": ("bartowski/Llama-3.2-3B-Instruct-GGUF", DEFAULT_QUANT),
    "llama3.1:8b": ("bartowski/Meta-Llama-3.1-8B-Instruct-GGUF", DEFAULT_QUANT),
    "gemma3:1b": ("bartowski/google_gemma-3-1b-it-GGUF", DEFAULT_QUANT),
    "gemma3:4b": ("bartowski/google_gemma-3-4b-it-GGUF", DEFAULT_QUANT),
    "gemma3:12b": ("bartowski/google_gemma-3-12b-it-GGUF", DEFAULT_QUANT),
    "gemma3:27b": ("bartowski/google_gemma-3-27b-it-GGUF", DEFAULT_QUANT),
    "mistral:7b": ("bartowski/Mistral-7B-Instruct-v0.3-GGUF", DEFAULT_QUANT),
    "mistral-small:24b": ("bartowski/Mistral-Small-24B-Instruct-2501-GGUF", DEFAULT_QUANT),
    "mistral-small:24b-instruct-2501": (
        "bartowski/Mistral-Small-24B-Instruct-2501-GGUF",
        DEFAULT_QUANT,
    ),
    "phi4:14b": ("bartowski/phi-4-GGUF", DEFAULT_QUANT),
    "deepseek-r1:7b": ("bartowski/DeepSeek-R1-Distill-Qwen-7B-GGUF", DEFAULT_QUANT),
    "deepseek-r1:14b": ("bartowski/DeepSeek-R1-Distill-Qwen-14B-GGUF", DEFAULT_QUANT),
    "smollm2:135m": ("bartowski/SmolLM2-135M-Instruct-GGUF", DEFAULT_QUANT),
    "smollm2:360m": ("bartowski/SmolLM2-360M-Instruct-GGUF", DEFAULT_QUANT),
    "smollm2:1.7b": ("bartowski/SmolLM2-1.7B-Instruct-GGUF", DEFAULT_QUANT),
}

#: The size each library name's ``:latest`` tag points at (ollama.com/library).
OLLAMA_LATEST: dict[str, str] = {
    "qwen3": "8b",
    "qwen2.5": "7b",
    "qwen2.5-coder": "7b",
    "llama3.2": "3b",
    "llama3.1": "8b",
    "gemma3": "4b",
    "mistral": "7b",
    "mistral-small": "24b",
    "phi4": "14b",
    "smollm2": "1.7b",
}

#: A quantisation label as GGUF file names carry it (llama.cpp's ggml types and file types).
_QUANT = (
    r"(?:I?Q[1-8]_(?:K(?:_[SMLX]+)?|[0-9](?:_[0-9])?|[SMLX]+|NL|XXS|XS)"
    r"|TQ[12]_0|MXFP4|BF16|F16|F32)"
)
_QUANT_IN_NAME = re.compile(rf"(?<![A-Za-z0-9]){_QUANT}(?![A-Za-z0-9])", re.IGNORECASE)
_QUANT_ALONE = re.compile(rf"^{_QUANT}$", re.IGNORECASE)
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_TAG_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HUB_PREFIXES = ("https://", "http://")
_HUB_HOSTS = ("hf.co/", "huggingface.co/")
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


class PullError(ValueError):
    """A name or a repository listing that cannot be pulled; the message says why and what to do."""


@dataclass(frozen=True)
class PullTarget:
    """What a name asks for: a hub repository and a quantisation (None: the default)."""

    name: str
    repo: str
    quant: str | None = None
    revision: str = "main"
    #: The Ollama name the table mapped, when the name was one.
    ollama_name: str | None = None


@dataclass(frozen=True)
class HubFileInfo:
    """One file of a hub repository listing: its path, size and LFS sha256 (when known)."""

    path: str
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class PullFit:
    """The fit verdict shown before a download."""

    verdict: Verdict
    text: str

    @property
    def fits(self) -> bool:
        return self.verdict is not Verdict.WONT_FIT


def parse_pull_name(name: str) -> PullTarget:
    """The repository and quantisation ``name`` stands for; :class:`PullError` if none.

    >>> parse_pull_name("hf.co/bartowski/Qwen_Qwen3-8B-GGUF:Q8_0").quant
    'Q8_0'
    >>> parse_pull_name("qwen3").repo
    'bartowski/Qwen_Qwen3-8B-GGUF'
    """
    text = name.strip()
    lowered = text.lower()
    for prefix in _HUB_PREFIXES:
        if lowered.startswith(prefix):
            text, lowered = text[len(prefix) :], lowered[len(prefix) :]
    hub = next((h for h in _HUB_HOSTS if lowered.startswith(h)), None)
    if hub is not None:
        return _hub_target(name.strip(), text[len(hub) :])
    if "/" in text:
        return _hub_target(name.strip(), text)
    return _ollama_target(name.strip(), lowered)


def _hub_target(name: str, rest: str) -> PullTarget:
    repo, _, quant = rest.partition(":")
    repo = repo.strip("/")
    if not _REPO_ID.match(repo):
        raise PullError(
            f"{name!r} is not a Hugging Face repository name: use hf.co/ORG/REPO or "
            "hf.co/ORG/REPO:QUANT (for example hf.co/bartowski/Qwen_Qwen3-8B-GGUF:Q4_K_M)."
        )
    if quant and not _TAG_PART.match(quant):
        raise PullError(f"{quant!r} is not a quantisation name (for example Q4_K_M or Q8_0).")
    return PullTarget(name=name, repo=repo, quant=quant or None)


def _ollama_target(name: str, lowered: str) -> PullTarget:
    base, _, tag = lowered.partition(":")
    if not tag or tag == "latest":
        size = OLLAMA_LATEST.get(base)
        tag = size or "latest"
    key = f"{base}:{tag}"
    quant: str | None = None
    if key not in OLLAMA_TO_GGUF and "-" in tag:  # qwen3:8b-q8_0: a size and a quantisation
        size, _, maybe = tag.rpartition("-")
        if _QUANT_ALONE.match(maybe) and f"{base}:{size}" in OLLAMA_TO_GGUF:
            key, quant = f"{base}:{size}", maybe.upper()
    if key not in OLLAMA_TO_GGUF:
        close = difflib.get_close_matches(lowered, list(OLLAMA_TO_GGUF), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise PullError(
            f"autotune does not know which GGUF file {name!r} is.{hint} Name a Hugging Face "
            "repository instead: autotune pull hf.co/ORG/REPO:QUANT."
        )
    repo, default = OLLAMA_TO_GGUF[key]
    return PullTarget(name=name, repo=repo, quant=quant or default, ollama_name=key)


def quant_of(path: str) -> str | None:
    """The quantisation a GGUF file name (or its folder) carries, upper-case; None if none."""
    found = _QUANT_IN_NAME.findall(path)
    return found[-1].upper() if found else None


def _is_model_file(path: str) -> bool:
    lower = path.lower()
    return lower.endswith(".gguf") and "mmproj" not in lower.rsplit("/", 1)[-1]


def choose_files(target: PullTarget, files: Sequence[HubFileInfo]) -> list[HubFileInfo]:
    """The GGUF file(s) of ``target``'s quantisation in a repo listing (all shards of a split
    model); :class:`PullError` naming the quantisations there are when none matches."""
    ggufs = [f for f in files if _is_model_file(f.path)]
    if not ggufs:
        raise PullError(f"{target.repo} holds no GGUF model file; autotune pulls GGUF models.")
    quant = target.quant
    if quant is None:
        if len(_models(ggufs)) == 1:
            return _shards(ggufs[0], ggufs)
        quant = DEFAULT_QUANT
    matching = _of_quant(ggufs, quant)
    if not matching:
        raise _no_such_quant(target.repo, quant, ggufs)
    firsts = [f for f in matching if _first_shard(f.path)]
    # Of several files of one quantisation, the plainest name (model-Q4_K_M.gguf before
    # model-Q4_K_M-imat.gguf), so the choice never depends on listing order.
    chosen = min(firsts or matching, key=lambda f: (len(f.path), f.path))
    return _shards(chosen, ggufs)


def _of_quant(ggufs: Sequence[HubFileInfo], quant: str) -> list[HubFileInfo]:
    """The files whose name carries ``quant``; else those that merely contain it."""
    exact = [f for f in ggufs if (quant_of(f.path) or "").lower() == quant.lower()]
    return exact or [f for f in ggufs if quant.lower() in f.path.lower()]


def _no_such_quant(repo: str, quant: str, ggufs: Sequence[HubFileInfo]) -> PullError:
    there = sorted({q for q in (quant_of(f.path) for f in ggufs) if q})
    listed = ", ".join(there) if there else ", ".join(f.path for f in ggufs[:5])
    example = there[0] if there else "QUANT"
    return PullError(
        f"{repo} has no {quant} file; it has: {listed}. "
        f"Pull one of them: autotune pull hf.co/{repo}:{example}."
    )


def _models(files: Sequence[HubFileInfo]) -> list[HubFileInfo]:
    return [f for f in files if _first_shard(f.path)]


def _first_shard(path: str) -> bool:
    match = _SPLIT.search(path)
    return match is None or int(match.group(1)) == 1


def _shards(first: HubFileInfo, files: Sequence[HubFileInfo]) -> list[HubFileInfo]:
    match = _SPLIT.search(first.path)
    if match is None:
        return [first]
    prefix = first.path[: match.start()]
    count = int(match.group(2))
    wanted = {f"{prefix}-{i:05d}-of-{count:05d}.gguf".lower() for i in range(1, count + 1)}
    shards = sorted((f for f in files if f.path.lower() in wanted), key=lambda f: f.path)
    if len(shards) != count:
        raise PullError(
            f"{first.path} is split in {count} parts, but the repo lists {len(shards)}."
        )
    return shards


def pulled_names(repo: str, path: str) -> list[str]:
    """The names a GGUF file downloaded from ``repo`` answers to, besides discovery's own:
    ``hf.co/ORG/REPO:QUANT`` and every Ollama name of the table that maps to it."""
    quant = quant_of(path)
    if quant is None:
        return []
    names = [f"hf.co/{repo}:{quant}"]
    for tag, (mapped, mapped_quant) in OLLAMA_TO_GGUF.items():
        if mapped.lower() == repo.lower():
            if mapped_quant.lower() == quant.lower():
                names.append(tag)
            else:
                names.append(f"{tag}-{quant.lower()}")
    for base, size in OLLAMA_LATEST.items():
        if f"{base}:{size}" in names:
            names.append(base)
    return names


def _catalog_entry(target: PullTarget) -> CatalogModel | None:
    names = {target.ollama_name} if target.ollama_name else set()
    for model in catalog():
        if model.name in names or model.hf_id.lower() == target.repo.lower():
            return model
    return None


def pull_fit(target: PullTarget, files: Iterable[HubFileInfo], budget_bytes: int) -> PullFit:
    """Whether what ``target`` downloads fits this machine's memory budget, in a sentence."""
    size = sum(f.size or 0 for f in files)
    model = _catalog_entry(target)
    if model is not None and size:
        meta = dataclasses.replace(
            catalog_meta(model, DEFAULT_QUANT), size_bytes=size, quantization=target.quant
        )
        fit = assess_fit(meta, budget_bytes)
        return PullFit(fit.verdict, f"{fit.verdict.value}: {fit.reason}")
    need = size + OVERHEAD_BYTES
    verdict = verdict_for(need, budget_bytes)
    return PullFit(
        verdict,
        f"{verdict.value}: the file alone is {format_bytes(size)} of a "
        f"{format_bytes(budget_bytes)} budget (its context needs more on top).",
    )
