"""Finds GGUF models on disk (bundled, Ollama, LM Studio, HF cache, models_dir) and names them.

Discovery is cheap: it stats each file and walks its GGUF header without decoding a value
(:func:`~autotune.models.gguf.check_gguf`, ~10 ms for a 49k-vocab model), so empty,
truncated and non-GGUF files are caught without the seconds a full metadata parse costs.
A broken store never raises; each file it cannot use becomes a :class:`Skipped` entry with
the reason. One file reached under several names (an Ollama tag and its digest twin, a
Hugging Face snapshot symlink…) is listed once, with the later names as aliases.

Names by source:

* bundled: ``smollm2:135m``.
* Ollama (``$OLLAMA_MODELS`` or ``~/.ollama/models``): manifest
  ``manifests/<registry>/<namespace>/<model>/<tag>`` → ``model:tag`` for
  ``registry.ollama.ai/library``, ``namespace/model:tag`` for other namespaces,
  ``registry/namespace/model:tag`` for other registries (``hf.co/org/repo:Q4_K_M``).
  Tag ``latest`` also answers to the bare name (``llama3``).
* LM Studio (``$LMSTUDIO_HOME/models``, ``~/.lmstudio/models``, ``~/.cache/lm-studio/models``):
  ``publisher/repo/file.gguf``, alias the file stem.
* Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
  ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``):
  ``models--org--repo/snapshots/<rev>/<file>.gguf`` → ``org/repo:<file stem>`` (the stem keeps
  sub-folders, ``org/repo:Q4_K_M/model-00001-of-00002``), alias the file stem, and ``org/repo``
  when the repository holds a single model. Of several snapshots, the one ``refs/main`` points
  at wins, else the newest. A file ``autotune pull`` can fetch also answers to the names it
  is pulled by (:func:`autotune.models.pull.pulled_names`: ``hf.co/org/repo:Q4_K_M``, and
  ``qwen3:8b`` for the repo and quantisation that name maps to).
* ``AUTOTUNE_MODELS_DIR``: every ``*.gguf`` below it, named by its stem (by its relative path
  without ``.gguf`` when two stems clash).

Vision projectors (``*mmproj*``) are skipped, and split models (``…-00001-of-00003.gguf``)
are listed once, by their first shard, with the size of all shards.
"""

from __future__ import annotations

import difflib
import json
import os
import stat as stat_module
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from autotune.ground.config import Settings, get_settings
from autotune.ground.errors import ModelNotFound
from autotune.models.bundled import (
    BUNDLED_NAME,
    SECOND_NAME,
    bundled_model_path,
    second_model_path,
)
from autotune.models.gguf import check_gguf, split_parts
from autotune.models.pull import pulled_names

__all__ = [
    "OLLAMA_MODEL_MEDIA_TYPE",
    "Discovery",
    "LocalModel",
    "Skipped",
    "discover",
    "huggingface_hub_dir",
    "lmstudio_model_dirs",
    "ollama_models_dir",
]

OLLAMA_MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
_OLLAMA_DEFAULT_REGISTRY = "registry.ollama.ai"
_OLLAMA_DEFAULT_NAMESPACE = "library"
#: How deep a walk goes below a store's root (LM Studio uses 2 levels, HF snapshots 1–3).
_MAX_DEPTH = 8


@dataclass
class LocalModel:
    """A GGUF file on disk and the names it answers to."""

    name: str
    path: Path
    source: str  # "bundled" | "ollama" | "lmstudio" | "huggingface" | "models_dir"
    size_bytes: int
    aliases: tuple[str, ...] = ()


@dataclass
class Skipped:
    """A file discovery found but cannot offer as a model, and why."""

    path: Path
    reason: str


@dataclass
class Discovery:
    """The models found on disk, and the files that were passed over."""

    models: list[LocalModel]
    skipped: list[Skipped] = field(default_factory=list)

    def find(self, name: str) -> LocalModel:
        """The model called ``name`` (or with that alias), case-insensitive; else ModelNotFound."""
        wanted = name.strip().lower()
        for model in self.models:
            if model.name.lower() == wanted:
                return model
        for model in self.models:
            if any(alias.lower() == wanted for alias in model.aliases):
                return model
        raise ModelNotFound(name, self._suggest(wanted))

    def names(self) -> list[str]:
        """Every model's primary name, sorted."""
        return sorted(model.name for model in self.models)

    def _suggest(self, wanted: str) -> list[str]:
        by_label: dict[str, str] = {}
        for model in self.models:
            for label in (model.name, *model.aliases):
                by_label.setdefault(label.lower(), model.name)
        suggestions: list[str] = []
        for label in difflib.get_close_matches(wanted, list(by_label), n=10, cutoff=0.5):
            if by_label[label] not in suggestions:
                suggestions.append(by_label[label])
        return suggestions[:3]


# --------------------------------------------------------------------------- store locations


def ollama_models_dir() -> Path:
    """Ollama's model store: ``$OLLAMA_MODELS`` or ``~/.ollama/models``."""
    env = os.environ.get("OLLAMA_MODELS")
    return Path(env).expanduser() if env else Path.home() / ".ollama" / "models"


def lmstudio_model_dirs() -> list[Path]:
    """LM Studio's model folders, current layout first, then the pre-0.3 one."""
    dirs: list[Path] = []
    env = os.environ.get("LMSTUDIO_HOME")
    if env:
        dirs.append(Path(env).expanduser() / "models")
    # LM Studio records a moved home folder in this pointer file.
    pointer = Path.home() / ".lmstudio-home-pointer"
    try:
        moved = pointer.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        moved = ""
    if moved:
        dirs.append(Path(moved).expanduser() / "models")
    dirs += [Path.home() / ".lmstudio" / "models", Path.home() / ".cache" / "lm-studio" / "models"]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def huggingface_hub_dir() -> Path:
    """The Hugging Face hub cache, following ``huggingface_hub``'s own environment rules."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "huggingface" / "hub"
    return Path.home() / ".cache" / "huggingface" / "hub"


# --------------------------------------------------------------------------- collecting


class _Collector:
    """Accumulates models, de-duplicating by the file they resolve to."""

    def __init__(self) -> None:
        self.models: list[LocalModel] = []
        self.skipped: list[Skipped] = []
        self._by_file: dict[tuple[int, int], LocalModel] = {}

    def skip(self, path: Path, reason: str) -> None:
        self.skipped.append(Skipped(Path(path), reason))

    def add(
        self,
        name: str,
        path: Path,
        source: str,
        aliases: tuple[str, ...] = (),
        *,
        label: Path | None = None,
    ) -> None:
        """Offer ``path`` as ``name``; a file already listed gains the name as an alias."""
        label = label or path
        where = "" if label == path else f"{name}: "
        stat = self._regular_file(path, label, where)
        if stat is None:
            return
        key = (stat.st_dev, stat.st_ino)
        same = self._by_file.get(key)
        if same is not None:
            extra = tuple(a for a in (name, *aliases) if a != same.name and a not in same.aliases)
            same.aliases = same.aliases + extra
            return
        problem = check_gguf(path)
        if problem is not None:
            self.skip(label, f"{where}{problem}")
            return
        size = stat.st_size
        parts = split_parts(path)
        if parts and parts[1] > 1:
            extra_size = _other_shard_sizes(path, parts[1])
            if extra_size is None:
                self.skip(label, f"{where}split model with missing shards (expected {parts[1]})")
                return
            size += extra_size
        model = LocalModel(name=name, path=path, source=source, size_bytes=size, aliases=aliases)
        self._by_file[key] = model
        self.models.append(model)

    def _regular_file(self, path: Path, label: Path, where: str) -> os.stat_result | None:
        """The file's stat, or None (and why, skipped under ``label``) when it cannot be used."""
        try:
            stat = path.stat()
        except FileNotFoundError:
            self.skip(label, f"{where}file missing: {path}")
            return None
        except OSError as exc:
            self.skip(label, f"{where}cannot read {path}: {exc.strerror or exc}")
            return None
        if not stat_module.S_ISREG(stat.st_mode):
            self.skip(label, f"{where}not a regular file: {path}")
            return None
        return stat

    def finish(self) -> Discovery:
        """Drop aliases that equal another model's name or that two models share."""
        names = {m.name.lower() for m in self.models}
        owners: dict[str, set[int]] = {}
        for i, model in enumerate(self.models):
            for alias in model.aliases:
                owners.setdefault(alias.lower(), set()).add(i)
        for model in self.models:
            kept: list[str] = []
            for alias in model.aliases:
                low = alias.lower()
                if low == model.name.lower() or low in names or len(owners[low]) > 1:
                    continue
                if low not in (k.lower() for k in kept):
                    kept.append(alias)
            model.aliases = tuple(kept)
        return Discovery(models=self.models, skipped=self.skipped)


def _other_shard_sizes(first: Path, count: int) -> int | None:
    """Total size of shards 2..count next to ``first``, or None if any is missing."""
    prefix = first.name[: -len("-00001-of-00000.gguf")]
    total = 0
    for index in range(2, count + 1):
        try:
            total += (first.parent / f"{prefix}-{index:05d}-of-{count:05d}.gguf").stat().st_size
        except OSError:
            return None
    return total


def _walk_gguf(root: Path, skipper: _Collector) -> Iterator[Path]:
    """Every ``*.gguf`` below ``root`` (following directory symlinks once), sorted per folder."""
    seen: set[str] = set()

    def on_error(exc: OSError) -> None:
        skipper.skip(Path(exc.filename or root), f"cannot list folder: {exc.strerror or exc}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error, followlinks=True):
        real = os.path.realpath(dirpath)
        depth = len(Path(dirpath).relative_to(root).parts)
        if real in seen or depth >= _MAX_DEPTH:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if filename.lower().endswith(".gguf") and not filename.startswith("."):
                yield Path(dirpath) / filename


def _model_file_filter(path: Path, collector: _Collector, label: str) -> bool:
    """False (and a Skipped entry) for projectors and split shards after the first."""
    lower = path.name.lower()
    if "mmproj" in lower:
        collector.skip(path, "vision projector (mmproj), not a model")
        return False
    parts = split_parts(path)
    if parts and parts[0] != 1:
        collector.skip(path, f"shard {parts[0]} of {parts[1]} of a split model; {label}")
        return False
    return True


# --------------------------------------------------------------------------- sources


def _bundled(collector: _Collector) -> None:
    for name, path in ((BUNDLED_NAME, bundled_model_path()), (SECOND_NAME, second_model_path())):
        if path is not None:
            collector.add(name, path, "bundled")


def _ollama_name(parts: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
    """Manifest path parts (registry, namespace, model, tag) → name and aliases."""
    *repo, tag = parts
    if len(repo) == 3 and repo[0] == _OLLAMA_DEFAULT_REGISTRY:
        repo = repo[2:] if repo[1] == _OLLAMA_DEFAULT_NAMESPACE else repo[1:]
    base = "/".join(repo)
    name = f"{base}:{tag}"
    return name, ((base,) if tag == "latest" else ())


def _ollama(collector: _Collector, root: Path) -> None:
    manifests = root / "manifests"
    if not manifests.is_dir():
        return
    for manifest in _ollama_manifests(manifests):
        parts = manifest.relative_to(manifests).parts
        if len(parts) < 2:
            collector.skip(manifest, "manifest outside registry/namespace/model/tag layout")
            continue
        name, aliases = _ollama_name(parts)
        try:
            blob = _ollama_blob(root, manifest, name)
        except _Unusable as exc:
            collector.skip(manifest, str(exc))
            continue
        collector.add(name, blob, "ollama", aliases, label=manifest)


def _ollama_manifests(manifests: Path) -> Iterator[Path]:
    """Every manifest file (not hidden ones), folder by folder in name order."""
    for dirpath, dirnames, filenames in os.walk(manifests, onerror=lambda _e: None):
        dirnames.sort()
        for filename in sorted(filenames):
            if not filename.startswith("."):
                yield Path(dirpath) / filename


class _Unusable(Exception):
    """Why a manifest names no model file that can be listed."""


def _ollama_blob(root: Path, manifest: Path, name: str) -> Path:
    """The model blob a manifest points to; raises :class:`_Unusable` saying why not."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise _Unusable(f"cannot read manifest: {exc}") from None
    except json.JSONDecodeError as exc:
        raise _Unusable(f"manifest is not valid JSON ({exc.msg})") from None
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        raise _Unusable("manifest has no layers list")
    digest = next(
        (
            layer.get("digest")
            for layer in layers
            if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL_MEDIA_TYPE
        ),
        None,
    )
    if not isinstance(digest, str) or ":" not in digest:
        raise _Unusable(f"{name}: manifest has no model layer with a digest")
    blob = root / "blobs" / digest.replace(":", "-", 1)
    if not blob.exists():
        raise _Unusable(f"{name}: model blob {blob.name} is missing")
    return blob


def _lmstudio(collector: _Collector, roots: list[Path]) -> None:
    for root in roots:
        if not root.is_dir():
            continue
        for path in _walk_gguf(root, collector):
            rel = path.relative_to(root).as_posix()
            if not _model_file_filter(path, collector, "listed by its first shard"):
                continue
            collector.add(rel, path, "lmstudio", (path.stem,))


def _hf_repo_name(folder: str) -> str | None:
    if not folder.startswith("models--"):
        return None
    return "/".join(folder[len("models--") :].split("--"))


def _huggingface(collector: _Collector, root: Path) -> None:
    if not root.is_dir():
        return
    try:
        repos = sorted(p for p in root.iterdir() if p.name.startswith("models--"))
    except OSError as exc:
        collector.skip(root, f"cannot list folder: {exc.strerror or exc}")
        return
    for repo_dir in repos:
        repo = _hf_repo_name(repo_dir.name)
        if repo is None or not (repo_dir / "snapshots").is_dir():
            continue
        chosen = _hf_files(collector, repo, _hf_revisions(repo_dir))
        single = len(chosen) == 1
        for rel, path in chosen.items():
            stem = rel[: -len(".gguf")]
            aliases: tuple[str, ...] = (path.stem, repo) if single else (path.stem,)
            aliases += tuple(pulled_names(repo, rel))
            collector.add(f"{repo}:{stem}", path, "huggingface", aliases)


def _hf_revisions(repo_dir: Path) -> list[Path]:
    """A cached repo's snapshot folders: refs/main first, then newest first."""
    try:
        main_rev = (repo_dir / "refs" / "main").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        main_rev = ""
    revs = [p for p in (repo_dir / "snapshots").iterdir() if p.is_dir()]
    revs.sort(key=lambda p: (p.name != main_rev, -_mtime(p)))
    return revs


def _hf_files(collector: _Collector, repo: str, revs: list[Path]) -> dict[str, Path]:
    """Each GGUF path within the repo, from the first revision (in ``revs`` order) holding it."""
    chosen: dict[str, Path] = {}
    for rev in revs:
        for path in _walk_gguf(rev, collector):
            rel = path.relative_to(rev).as_posix()
            if rel in chosen:
                collector.skip(path, f"older snapshot of {repo}/{rel}")
                continue
            if not _model_file_filter(path, collector, f"{repo} lists it by its first shard"):
                continue
            chosen[rel] = path
    return chosen


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _models_dir(collector: _Collector, root: Path) -> None:
    if not root.is_dir():
        return
    files = [
        p
        for p in _walk_gguf(root, collector)
        if _model_file_filter(p, collector, "listed by its first shard")
    ]
    stems: dict[str, int] = {}
    for path in files:
        stems[path.stem.lower()] = stems.get(path.stem.lower(), 0) + 1
    for path in files:
        if stems[path.stem.lower()] == 1:
            collector.add(path.stem, path, "models_dir")
        else:
            collector.add(path.relative_to(root).as_posix()[: -len(".gguf")], path, "models_dir")


def discover(settings: Settings | None = None) -> Discovery:
    """Every GGUF model on this machine that autotune can run, cheaply (no metadata parse)."""
    settings = settings or get_settings()
    collector = _Collector()
    _bundled(collector)
    _ollama(collector, ollama_models_dir())
    _lmstudio(collector, lmstudio_model_dirs())
    _huggingface(collector, huggingface_hub_dir())
    if settings.models_dir is not None:
        _models_dir(collector, Path(settings.models_dir).expanduser())
    return collector.finish()
