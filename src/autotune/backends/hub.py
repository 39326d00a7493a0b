"""Downloads GGUF models from the Hugging Face hub into its cache, for the embedded engine.

The effect behind ``autotune pull``, ``POST /api/pull`` and the chat's ``/pull`` when no
Ollama runs. Names and file choice are :mod:`autotune.models.pull`; this module talks to the
hub through ``huggingface_hub`` (its cache layout, ``HF_ENDPOINT``, ``HF_TOKEN``):

1. **plan**: ``GET /api/models/{repo}/revision/{rev}?blobs=true`` lists the repo's files with
   their LFS sha256 and sizes, pinned to one commit; the file(s) of the quantisation are chosen.
2. **download**: ``hf_hub_download`` for each file at that commit, into the cache that
   discovery reads (so the model is found by its name straight away). Over plain HTTP a
   dropped connection is resumed from the byte reached with a ``Range`` request
   (huggingface_hub retries up to five times); files the hub stores with Xet go through
   ``hf_xet``, which fetches and retries by chunk. Since huggingface_hub 1.0 a download
   stopped for good leaves no partial file for a later run to resume (each attempt writes a
   process-unique temporary file, removed on failure).
3. **verify**: the blob's sha256 is compared with the hub's LFS sha256; a mismatch deletes
   the file and fails the pull.

Progress comes as :class:`HubProgress` steps, shaped like Ollama's pull progress (``pulling
manifest``, ``pulling <digest>`` with ``completed``/``total``, ``verifying sha256 digest``,
``success``). Errors are :class:`~autotune.ground.errors.BackendError` with one sentence.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.ground.errors import (
    BackendError,
    EngineUnavailable,
    InvalidRequest,
    StorageError,
    UpstreamError,
)
from autotune.ground.types import PullProgress
from autotune.models.discovery import huggingface_hub_dir
from autotune.models.pull import (
    HubFileInfo,
    PullError,
    PullFit,
    PullTarget,
    choose_files,
    parse_pull_name,
    pull_fit,
)

if TYPE_CHECKING:
    from autotune.backends.registry import BackendSet

__all__ = [
    "DEFAULT_ENDPOINT",
    "Hub",
    "HubNotFound",
    "HubProgress",
    "PullPlan",
    "WontFit",
    "judge",
    "refresh_after_pull",
]

DEFAULT_ENDPOINT = "https://huggingface.co"
_HASH_BLOCK = 8 * 1024 * 1024
#: Seconds between two progress steps of one file (the last byte always reports).
_REPORT_EVERY = 0.1


class HubNotFound(BackendError):
    """The repository, revision or file is not on the hub (or is private without a token)."""

    status = 404
    code = "model_not_found"
    error_type = "invalid_request_error"


class WontFit(BackendError):
    """The download would not fit this machine's memory budget."""

    status = 400
    code = "insufficient_memory"
    error_type = "invalid_request_error"


@dataclass
class HubProgress(PullProgress):
    """A pull step; ``digest`` names the file being pulled, as Ollama's progress does."""

    digest: str | None = None


@dataclass(frozen=True)
class PullPlan:
    """What a pull will fetch: the files of one quantisation at one commit."""

    target: PullTarget
    revision: str
    files: tuple[HubFileInfo, ...]
    fit: PullFit | None = None

    @property
    def total_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)


class _Stop(Exception):
    """Raised inside the download thread when the caller went away."""


class Hub:
    """The Hugging Face hub as autotune pulls from it; every argument defaults to the
    environment at call time (``HF_ENDPOINT``, ``HF_TOKEN``, the hub cache discovery reads)."""

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        token: str | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        self.token = token or None
        self.cache_dir = cache_dir or huggingface_hub_dir()

    # ------------------------------------------------------------------ plan

    async def plan(self, name: str, *, budget_bytes: int | None = None) -> PullPlan:
        """Resolve ``name`` to files on the hub (and judge the fit when a budget is given)."""
        try:
            target = parse_pull_name(name)
        except PullError as exc:
            raise InvalidRequest(str(exc), param="model") from None
        revision, files = await asyncio.to_thread(self._listing, target)
        try:
            chosen = tuple(choose_files(target, files))
        except PullError as exc:
            raise HubNotFound(str(exc)) from None
        fit = pull_fit(target, chosen, budget_bytes) if budget_bytes is not None else None
        return PullPlan(target, revision, chosen, fit)

    def _listing(self, target: PullTarget) -> tuple[str, list[HubFileInfo]]:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=self.endpoint, token=self.token)
        with self._errors(target):
            info = api.model_info(target.repo, revision=target.revision, files_metadata=True)
        files = [
            HubFileInfo(
                path=s.rfilename,
                size=s.lfs.size if s.lfs else s.size,
                sha256=s.lfs.sha256 if s.lfs else None,
            )
            for s in info.siblings or []
        ]
        return info.sha or target.revision, files

    def local_paths(self, plan: PullPlan) -> list[Path]:
        """Where the files of ``plan`` are once pulled (the hub cache's snapshot links)."""
        folder = "models--" + plan.target.repo.replace("/", "--")
        snapshot = self.cache_dir / folder / "snapshots" / plan.revision
        return [snapshot / f.path for f in plan.files]

    # ------------------------------------------------------------------ download

    async def pull(self, plan: PullPlan) -> AsyncIterator[HubProgress]:
        """Download and verify every file of ``plan``, yielding progress; ends with ``success``
        (the listing before it is the caller's ``pulling manifest`` step)."""
        for file in plan.files:
            async for step in self._file(plan, file):
                yield step
        yield HubProgress("success")

    async def _file(self, plan: PullPlan, file: HubFileInfo) -> AsyncIterator[HubProgress]:
        digest = f"sha256:{file.sha256}" if file.sha256 else None
        label = f"pulling {(file.sha256 or file.path)[:12]}"
        queue: asyncio.Queue[HubProgress] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        stop = threading.Event()

        def report(done: int, total: int | None) -> None:
            step = HubProgress(label, done, total or file.size, digest)
            loop.call_soon_threadsafe(queue.put_nowait, step)

        task = asyncio.ensure_future(asyncio.to_thread(self._download, plan, file, report, stop))
        try:
            async for step in _drain(queue, task):
                yield step
            path = task.result()
            if file.sha256:
                yield HubProgress("verifying sha256 digest", digest=digest)
                await asyncio.to_thread(_verify, path, file)
        finally:
            if not task.done():
                stop.set()  # the next chunk stops the download; its temporary file is removed
                with contextlib.suppress(BaseException):
                    await task

    def _download(
        self,
        plan: PullPlan,
        file: HubFileInfo,
        report: Callable[[int, int | None], None],
        stop: threading.Event,
    ) -> Path:
        from huggingface_hub import hf_hub_download

        with self._errors(plan.target):
            path = hf_hub_download(
                plan.target.repo,
                file.path,
                revision=plan.revision,
                cache_dir=self.cache_dir,
                endpoint=self.endpoint,
                token=self.token,
                tqdm_class=_progress_class(report, stop),
            )
        return Path(path)

    def _unreachable(self, exc: BaseException) -> EngineUnavailable:
        return _unreachable_error(self.endpoint, exc)

    @contextlib.contextmanager
    def _errors(self, target: PullTarget) -> Iterator[None]:
        """huggingface_hub's exceptions as autotune's errors, in one sentence each."""
        from huggingface_hub import errors

        transport = _transport_errors()

        where = f"{self.endpoint}/{target.repo}"
        try:
            yield
        except errors.GatedRepoError:
            raise BackendError(
                f"{target.repo} is gated on the Hugging Face hub: accept its terms at {where} "
                "and set HF_TOKEN to a token of that account."
            ) from None
        except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError):
            raise HubNotFound(
                f"{target.repo} is not on the Hugging Face hub ({where}); check the name "
                "(a private repo needs HF_TOKEN)."
            ) from None
        except errors.RemoteEntryNotFoundError:
            raise HubNotFound(f"A file of {target.repo} is missing on the hub.") from None
        except errors.HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else 502
            raise UpstreamError(status, "the Hugging Face hub refused the request", "hub") from None
        except transport as exc:
            raise self._unreachable(exc) from None
        except (errors.LocalEntryNotFoundError, ConnectionError) as exc:
            raise self._unreachable(exc) from None
        except _Stop:
            raise
        except OSError as exc:
            full = getattr(exc, "errno", None) == 28
            raise StorageError(
                f"The download could not be written to {self.cache_dir} "
                f"({exc.strerror or type(exc).__name__}).",
                disk_full=full,
            ) from None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client errors huggingface_hub lets through (httpx2 since 1.x, else httpx)."""
    try:
        import httpx2
    except ImportError:  # pragma: no cover - older huggingface_hub
        import httpx as httpx2  # type: ignore[no-redef]
    return (httpx2.HTTPError,)


def _unreachable_error(endpoint: str, exc: BaseException) -> EngineUnavailable:
    return EngineUnavailable(
        f"The Hugging Face hub at {endpoint} cannot be reached ({type(exc).__name__}).",
        hint="Check the network, or set HF_ENDPOINT to a reachable mirror.",
    )


async def _drain(
    queue: asyncio.Queue[HubProgress], task: asyncio.Future[Path]
) -> AsyncIterator[HubProgress]:
    """The queued steps until ``task`` ends (and those it left behind)."""
    while not task.done():
        getter: asyncio.Future[Any] = asyncio.ensure_future(queue.get())
        waiting: set[asyncio.Future[Any]] = {getter, task}
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            yield getter.result()
        else:
            getter.cancel()
    while not queue.empty():
        yield queue.get_nowait()


def _progress_class(report: Callable[[int, int | None], None], stop: threading.Event) -> type:
    """A silent huggingface_hub progress bar that reports bytes (at most every 0.1 s, and the
    last one) and stops the download when ``stop`` is set — guaranteed on the plain HTTP path;
    a Xet transfer (hf_xet) calls the bar from its own threads and may finish regardless. A
    Xet download's second bar, for network bytes, is not reported: bytes written count."""
    import time

    from huggingface_hub.utils import tqdm as hub_tqdm

    class _Bar(hub_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self._counts = not str(kwargs.get("name") or "").endswith(".transfer")
            kwargs["disable"] = True  # never draw: the caller shows progress its own way
            super().__init__(*args, **kwargs)
            self._done, self._at = int(kwargs.get("initial") or 0), 0.0
            if self._counts:
                report(self._done, self.total)

        def update(self, n: float | None = 1) -> bool | None:
            if stop.is_set():
                raise _Stop()
            self._done += int(n or 0)
            now = time.monotonic()
            last = bool(self.total) and self._done >= self.total
            if self._counts and (now - self._at >= _REPORT_EVERY or last):
                self._at = now
                report(self._done, self.total)
            return None

    return _Bar


def _verify(path: Path, file: HubFileInfo) -> None:
    """The file's sha256 against the hub's; a mismatch removes the download and raises."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_HASH_BLOCK):
            digest.update(block)
    if digest.hexdigest() == file.sha256:
        return
    real = path.resolve()
    for stale in (path, real):
        with contextlib.suppress(OSError):
            stale.unlink()
    raise UpstreamError(
        502,
        f"{file.path} arrived damaged (its sha256 is not the hub's); it was removed: pull again",
        "hub",
    )


async def refresh_after_pull(backends: BackendSet, name: str) -> None:
    """Make a model just pulled resolvable by its name at once: forget what was resolved,
    re-list the engines and drop the disk scan the registry reuses for aliases."""
    await backends.refresh(name)


def judge(plan: PullPlan, *, force: bool = False) -> None:
    """Raise :class:`WontFit` when ``plan`` will not fit and the caller did not insist."""
    if plan.fit is not None and not plan.fit.fits and not force:
        raise WontFit(
            f"{plan.target.name} {plan.fit.text}",
            hint="Pick a smaller model or quantisation (autotune recommend), or pull it anyway "
            "with --force.",
        )
